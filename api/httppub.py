"""HTTP publish, as VerneMQ's ``vmq_http_pub``: ``POST`` (or ``PUT``)
``/restmqtt/api/v1/publish`` in one of three styles:

1. a JSON body ``{"topic", "user", "password", "client_id", "qos", "retain", "payload",
   "user_properties": [{"k": "v"}]}``, ``?encoding=base64`` when the payload is base64;
2. the same fields as headers (``user_properties`` as a JSON list), the raw body the
   payload;
3. the same fields (no user properties) in the query string, the raw body the payload.

The credentials go through ``auth_on_register`` and the message through
``auth_on_publish`` as an MQTT client's would (``Service.publish_for``); with
``httppub_auth = "predefined"`` the plugin's configured user, password and client id are
used instead of the request's. Answers are ``text/plain`` with VerneMQ's texts.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from quart import Response, request

from ternmq.kernel import ClientInfo, Message, Outcome, Service, TopicError

if TYPE_CHECKING:
    from . import Plugin

PUBLISHED = "Published"
INVALID_TOPIC = "Invalid topic"
INVALID_QOS = "Invalid QoS value. Must be in range 0..2"
INVALID_RETAIN = "Invalid retain flag. Must be in true or false"
INVALID_USER_PROPERTIES = "User properties need to be a key/value list (json encoded)"
BOTH_STYLES = "Parameters found in header as well as url-encoded"
NOT_JSON = "Content is not a valid json"
URL_PARAMETERS = "Only encoding plain or base64 allows. No more URL parameters supported."
UNKNOWN_ENCODING = "Unknown payload encoding"
AUTHENTICATION = "Authentication failure."
AUTHORIZATION = "Authorization failure."
TOO_LARGE = "Payload too large."

_FIELDS = ("topic", "user", "password", "client_id", "qos", "retain")


class Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _text(status: int, text: str) -> Response:
    return Response(text, status=status, content_type="text/plain")


async def publish(plugin: Plugin, service: Service) -> Response:
    try:
        data = await request.get_data(cache=False, as_text=False)
        body = data if isinstance(data, bytes) else data.encode()
        if len(body) > service.settings.limits.max_packet_size:
            raise Refused(413, TOO_LARGE)  # checked before any base64 decoding, as VerneMQ
        fields, payload, user_properties = _read(body)
        message = _message(fields, payload, user_properties)
    except Refused as refused:
        plugin.httppub_counts["api_error" if refused.status == 400 else "too_large"] += 1
        return _text(refused.status, refused.text)
    config = plugin.config
    if config.httppub_auth == "predefined":
        user, password, client_id = config.httppub_user, config.httppub_password, config.httppub_client_id
    else:
        user, password, client_id = fields.get("user"), fields.get("password"), fields.get("client_id")
    client = ClientInfo(
        client_id or f"http-{service.node_name}",
        user,
        request.remote_addr or "",
        0,
        4,
        "http",
        config.httppub_mountpoint,
        service.node_name,
    )
    try:
        outcome = await service.publish_for(client, None if password is None else password.encode(), message)
    except TopicError:
        plugin.httppub_counts["api_error"] += 1
        return _text(400, INVALID_TOPIC)
    if outcome is Outcome.NOT_AUTHENTICATED:
        plugin.httppub_counts["auth_error"] += 1
        return _text(401, AUTHENTICATION)
    if outcome is Outcome.NOT_AUTHORIZED:
        plugin.httppub_counts["auth_error"] += 1
        return _text(403, AUTHORIZATION)
    plugin.httppub_counts["published"] += 1
    return _text(200, PUBLISHED)


def _read(body: bytes) -> tuple[dict[str, Any], bytes, Any]:
    """The fields, the payload and the user properties, in whichever style was used."""
    in_headers = "topic" in request.headers
    in_query = "topic" in request.args
    if in_headers and in_query:
        raise Refused(400, BOTH_STYLES)
    if in_headers:
        fields: dict[str, Any] = {name: request.headers[name] for name in _FIELDS if name in request.headers}
        raw_properties = request.headers.get("user_properties")
        try:
            user_properties = None if raw_properties is None else json.loads(raw_properties)
        except ValueError:
            raise Refused(400, INVALID_USER_PROPERTIES) from None
        return fields, body, user_properties
    if in_query:
        return {name: request.args[name] for name in _FIELDS if name in request.args}, body, None
    if set(request.args) - {"encoding"}:
        raise Refused(400, URL_PARAMETERS)
    encoding = request.args.get("encoding", "plain")
    if encoding not in ("plain", "base64"):
        raise Refused(400, UNKNOWN_ENCODING)
    try:
        document = json.loads(body)
    except ValueError:
        raise Refused(400, NOT_JSON) from None
    if not isinstance(document, dict) or not isinstance(document.get("payload"), str):
        raise Refused(400, NOT_JSON)
    text = document["payload"]
    try:
        payload = base64.b64decode(text, validate=True) if encoding == "base64" else text.encode()
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        raise Refused(400, UNKNOWN_ENCODING) from None
    fields = {name: document[name] for name in _FIELDS if name in document}
    return fields, payload, document.get("user_properties")


def _message(fields: dict[str, Any], payload: bytes, user_properties: Any) -> Message:
    topic = fields.get("topic")
    if not isinstance(topic, str) or not topic or topic.startswith("$"):
        raise Refused(400, INVALID_TOPIC)
    qos = fields.get("qos", 0)
    if isinstance(qos, str) and qos.isdigit():
        qos = int(qos)
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise Refused(400, INVALID_QOS)
    retain = fields.get("retain", False)
    if isinstance(retain, str):
        retain = {"true": True, "false": False}.get(retain, retain)
    if not isinstance(retain, bool):
        raise Refused(400, INVALID_RETAIN)
    for name in ("user", "password", "client_id"):
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise Refused(400, NOT_JSON)
    properties: dict[str, Any] = {}
    if user_properties is not None:
        if not isinstance(user_properties, list) or not all(
            isinstance(pair, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in pair.items())
            for pair in user_properties
        ):
            raise Refused(400, INVALID_USER_PROPERTIES)
        properties["user_property"] = [(k, v) for pair in user_properties for k, v in pair.items()]
    return Message(topic, payload, qos, retain, properties)
