"""VerneMQ's webhook wire format: the JSON bodies ternmq sends and the replies it reads.

Bodies are VerneMQ's (its ``vmq_webhooks`` plugin) field for field, so receivers written
for VerneMQ work unchanged: MQTT 5 clients are announced under the ``_m5`` hook names,
payloads are base64 unless an endpoint turns that off, user properties are base64 in
both directions, ``null`` stands for a missing username or password. Replies become
the kernel's answers (``allow`` with modifiers, ``deny``, ``None`` for ``next``); a reply
that cannot be used raises :class:`BadReply`, which the endpoint's failure policy
handles.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ternmq.kernel import (
    Allow,
    AuthContinue,
    ClientInfo,
    Deny,
    Message,
    TopicSubscription,
    allow,
    auth_continue,
    check_mountpoint,
    deny,
)

log = logging.getLogger("ternmq.plugins.webhooks")

#: Hooks whose endpoints are asked and awaited (the answer decides); the three auth
#: hooks of each protocol may be cached.
CACHED_HOOKS = frozenset(
    {
        "auth_on_register",
        "auth_on_register_m5",
        "auth_on_publish",
        "auth_on_publish_m5",
        "auth_on_subscribe",
        "auth_on_subscribe_m5",
    }
)
DECISION_HOOKS = CACHED_HOOKS | {"on_unsubscribe", "on_unsubscribe_m5", "on_auth_m5"}
#: Hooks whose endpoints are told, through the queue; their replies are not read.
NOTIFICATION_HOOKS = frozenset(
    {
        "on_register",
        "on_register_m5",
        "on_publish",
        "on_publish_m5",
        "on_subscribe",
        "on_subscribe_m5",
        "on_deliver",
        "on_deliver_m5",
        "on_offline_message",
        "on_client_wakeup",
        "on_client_offline",
        "on_client_gone",
        "on_session_expired",
    }
)
WEBHOOK_NAMES = DECISION_HOOKS | NOTIFICATION_HOOKS

BAD_USERNAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
UNSPECIFIED_ERROR = 0x80
CONTINUE_AUTHENTICATION = 0x18

# ternmq's property names and VerneMQ's p_* names.
_PROPERTY_NAMES = {
    "payload_format_indicator": "p_payload_format_indicator",
    "message_expiry_interval": "p_message_expiry_interval",
    "content_type": "p_content_type",
    "response_topic": "p_response_topic",
    "correlation_data": "p_correlation_data",
    "subscription_identifier": "p_subscription_id",
    "session_expiry_interval": "p_session_expiry_interval",
    "assigned_client_identifier": "p_assigned_client_id",
    "server_keep_alive": "p_server_keep_alive",
    "authentication_method": "p_authentication_method",
    "authentication_data": "p_authentication_data",
    "request_problem_information": "p_request_problem_info",
    "will_delay_interval": "p_will_delay_interval",
    "request_response_information": "p_request_response_info",
    "response_information": "p_response_info",
    "server_reference": "p_server_ref",
    "reason_string": "p_reason_string",
    "receive_maximum": "p_receive_max",
    "topic_alias_maximum": "p_topic_alias_max",
    "topic_alias": "p_topic_alias",
    "maximum_qos": "p_max_qos",
    "retain_available": "p_retain_available",
    "user_property": "p_user_property",
    "maximum_packet_size": "p_max_packet_size",
    "wildcard_subscription_available": "p_wildcard_subs_available",
    "subscription_identifier_available": "p_sub_ids_available",
    "shared_subscription_available": "p_shared_subs_available",
}
_KERNEL_NAMES = {vmq: name for name, vmq in _PROPERTY_NAMES.items()}
# One-byte properties VerneMQ shows as booleans.
_FLAGS = frozenset(
    {
        "request_problem_information",
        "request_response_information",
        "retain_available",
        "wildcard_subscription_available",
        "subscription_identifier_available",
        "shared_subscription_available",
    }
)
_RETAIN_HANDLING = ("send_retain", "send_if_new_sub", "dont_send")
# Reason code names VerneMQ plugins may give in an error (vernemq_dev); a webhook's
# ``{"result": {"error": "<name>"}}`` with one of them refuses with that code.
_REASON_CODES = {
    "unspecified_error": 0x80,
    "malformed_packet": 0x81,
    "protocol_error": 0x82,
    "impl_specific_error": 0x83,
    "unsupported_protocol_version": 0x84,
    "client_identifier_not_valid": 0x85,
    "bad_username_or_password": 0x86,
    "invalid_credentials": 0x86,
    "not_authorized": 0x87,
    "server_unavailable": 0x88,
    "server_busy": 0x89,
    "banned": 0x8A,
    "bad_authentication_method": 0x8C,
    "topic_filter_invalid": 0x8F,
    "topic_name_invalid": 0x90,
    "packet_too_large": 0x95,
    "quota_exceeded": 0x97,
    "payload_format_invalid": 0x99,
    "retain_not_supported": 0x9A,
    "qos_not_supported": 0x9B,
    "use_another_server": 0x9C,
    "server_moved": 0x9D,
    "connection_rate_exceeded": 0x9F,
}
# Modifiers of VerneMQ's auth_on_register that have no meaning in ternmq (cluster
# netsplit switches, queue tuning, rate limits): accepted and left alone, so that
# receivers written for VerneMQ keep working. docs/webhooks.md lists them.
IGNORED_REGISTER_MODIFIERS = frozenset(
    {
        "allow_register",
        "allow_publish",
        "allow_subscribe",
        "allow_unsubscribe",
        "max_message_rate",
        "shared_subscription_policy",
        "retry_interval",
        "upgrade_qos",
        "max_online_messages",
        "queue_type",
        "max_drain_time",
        "max_msgs_per_drain_step",
        "max_connection_lifetime",
        "reg_view",
    }
)


_U32 = 0xFFFFFFFF
# Session limits of auth_on_register and the largest value each can have.
_REGISTER_LIMITS = {
    "max_message_size": 268_435_455,
    "max_packet_size": 268_435_455,
    "max_inflight_messages": 65535,
    "max_offline_messages": _U32,
}
# The properties a reply may set, per hook (VerneMQ's lists).
_PUBLISH_PROPERTIES = frozenset(
    {
        "payload_format_indicator",
        "message_expiry_interval",
        "content_type",
        "response_topic",
        "correlation_data",
        "user_property",
    }
)
_REGISTER_PROPERTIES = frozenset({"session_expiry_interval", "user_property"})
_AUTH_PROPERTIES = frozenset({"authentication_method", "authentication_data"})


class BadReply(ValueError):
    """A reply ternmq cannot use: not 200, not JSON, no usable ``result``, a bad modifier."""


@attrs.frozen
class PayloadOptions:
    """How one endpoint wants payloads: base64 (VerneMQ's default) or as text."""

    base64payload: bool = True
    no_payload: bool = False


def webhook_name(base: str, client: ClientInfo) -> str:
    """The VerneMQ hook name for a client: ``auth_on_publish_m5`` for MQTT 5 clients."""
    return f"{base}_m5" if client.protocol_level == 5 else base


# -- requests --------------------------------------------------------------------------


def _text(data: bytes) -> str:
    # JSON carries text: bytes that are not UTF-8 become U+FFFD (docs/webhooks.md).
    return data.decode("utf-8", "replace")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_payload(payload: bytes, options: PayloadOptions) -> str:
    return _b64(payload) if options.base64payload else _text(payload)


def encode_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """ternmq's MQTT 5 properties as VerneMQ writes them in a webhook body."""
    encoded: dict[str, Any] = {}
    for name, value in properties.items():
        vmq = _PROPERTY_NAMES.get(name)
        if vmq is None:
            continue
        if name == "payload_format_indicator":
            value = "utf8" if value else "unspecified"
        elif name == "user_property":
            value = [{"key": _b64(key.encode()), "val": _b64(val.encode())} for key, val in value]
        elif name == "authentication_data":
            value = _b64(value)
        elif name == "correlation_data":
            value = _text(value)
        elif name in _FLAGS:
            value = bool(value)
        encoded[vmq] = value
    return encoded


def _who(client: ClientInfo) -> dict[str, Any]:
    return {"username": client.username, "mountpoint": client.mountpoint, "client_id": client.client_id}


def _peer(client: ClientInfo) -> dict[str, Any]:
    return {
        "peer_addr": client.peer_host,
        "peer_port": client.peer_port,
        "mountpoint": client.mountpoint,
        "client_id": client.client_id,
        "username": client.username,
    }


def register_body(
    client: ClientInfo, password: bytes | None, clean_start: bool, properties: Mapping[str, Any]
) -> dict[str, Any]:
    """``auth_on_register(_m5)``. A password that is not UTF-8 raises UnicodeDecodeError:
    JSON cannot carry it unchanged, and a changed password must not be checked."""
    body = _peer(client)
    body["password"] = None if password is None else password.decode("utf-8")
    if client.protocol_level == 5:
        body["clean_start"] = clean_start
        body["properties"] = encode_properties(properties)
    else:
        body["clean_session"] = clean_start
    return body


def registered_body(client: ClientInfo, properties: Mapping[str, Any]) -> dict[str, Any]:
    """``on_register(_m5)``."""
    body = _peer(client)
    if client.protocol_level == 5:
        body["properties"] = encode_properties(properties)
    return body


def publish_body(
    client: ClientInfo, message: Message, options: PayloadOptions, *, with_properties: bool = False
) -> dict[str, Any]:
    """``auth_on_publish(_m5)``, ``on_publish(_m5)``, ``on_deliver(_m5)``; ``properties``
    for MQTT 5 clients, and for all with ``with_properties`` (VerneMQ's on_deliver)."""
    body = _who(client)
    body["qos"] = message.qos
    body["topic"] = message.topic
    if not options.no_payload:
        body["payload"] = encode_payload(message.payload, options)
    body["retain"] = message.retain
    if with_properties or client.protocol_level == 5:
        body["properties"] = encode_properties(message.properties)
    return body


def subscribe_body(
    client: ClientInfo, subscriptions: Sequence[TopicSubscription], properties: Mapping[str, Any]
) -> dict[str, Any]:
    """``auth_on_subscribe(_m5)``, ``on_subscribe(_m5)`` (a refused filter has its code as qos)."""
    body = _who(client)
    v5 = client.protocol_level == 5
    body["topics"] = [_topic_entry(sub, v5) for sub in subscriptions]
    if v5:
        body["properties"] = encode_properties(properties)
    return body


def _topic_entry(sub: TopicSubscription, v5: bool) -> dict[str, Any]:
    if sub.qos >= 0x80:  # refused (on_subscribe): VerneMQ shows 128 to MQTT 3, the code to MQTT 5
        return {"topic": sub.topic_filter, "qos": sub.qos if v5 else 0x80}
    if not v5:
        return {"topic": sub.topic_filter, "qos": sub.qos}
    return {
        "topic": sub.topic_filter,
        "qos": sub.qos,
        "no_local": sub.no_local,
        "rap": sub.retain_as_published,
        "retain_handling": _RETAIN_HANDLING[sub.retain_handling],
    }


def unsubscribe_body(client: ClientInfo, topic_filters: Sequence[str], properties: Mapping[str, Any]) -> dict[str, Any]:
    """``on_unsubscribe(_m5)``."""
    body = _who(client)
    body["topics"] = list(topic_filters)
    if client.protocol_level == 5:
        body["properties"] = encode_properties(properties)
    return body


def auth_body(client: ClientInfo, method: str, data: bytes | None) -> dict[str, Any]:
    """``on_auth_m5``."""
    body = _who(client)
    properties: dict[str, Any] = {"p_authentication_method": method}
    if data is not None:
        properties["p_authentication_data"] = _b64(data)
    body["properties"] = properties
    return body


def offline_message_body(client_id: str, mountpoint: str, message: Message, options: PayloadOptions) -> dict[str, Any]:
    """``on_offline_message``."""
    body: dict[str, Any] = {
        "mountpoint": mountpoint,
        "client_id": client_id,
        "qos": message.qos,
        "topic": message.topic,
    }
    if not options.no_payload:
        body["payload"] = encode_payload(message.payload, options)
    body["retain"] = message.retain
    return body


def client_body(client_id: str, mountpoint: str = "") -> dict[str, Any]:
    """``on_client_wakeup``, ``on_client_offline``, ``on_client_gone``, ``on_session_expired``."""
    return {"mountpoint": mountpoint, "client_id": client_id}


# -- replies ---------------------------------------------------------------------------


def cache_max_age(cache_control: str | None) -> int | None:
    """Seconds a reply may be cached for, from its ``cache-control`` header; None: not at
    all. ``no-store``, ``no-cache`` and ``max-age=0`` forbid caching (VerneMQ stores
    those replies all the same; RFC 9111 says not to)."""
    if not cache_control:
        return None
    max_age: int | None = None
    for directive in cache_control.lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in ("no-store", "no-cache"):
            return None
        if name == "max-age" and max_age is None:
            value = value.strip().strip('"')
            if not value.isdigit():
                return None
            max_age = int(value)
    return max_age or None


def parse_json(status: int, content: bytes) -> Mapping[str, Any]:
    """The JSON object of a reply; BadReply for anything but 200 with a JSON object."""
    if status != 200:
        raise BadReply(f"status {status}, not 200")
    try:
        decoded = json.loads(content)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        raise BadReply("the reply is not JSON") from None
    if not isinstance(decoded, dict):
        raise BadReply(f"the reply is JSON but not an object: {content[:80]!r}")
    return decoded


def answer_of(
    hook: str, reply: Mapping[str, Any], options: PayloadOptions, asked: Any = None
) -> Allow | Deny | AuthContinue | None:
    """The kernel's answer for a decision hook's reply (None: ``next``).

    ``asked`` is what was asked where the answer needs it: the subscriptions of a
    SUBSCRIBE (their options and identifier carry over to rewritten filters), the
    method of an enhanced authentication, the publisher's mountpoint.
    """
    result = reply.get("result")
    if result == "next":
        return None
    if isinstance(result, dict):
        return _refusal(hook, result.get("error"))
    if result != "ok":
        raise BadReply(f"no usable result: {result!r} (ok, next or {{'error': ...}})")
    base = hook.removesuffix("_m5")
    v5 = hook.endswith("_m5")
    modifiers = reply.get("modifiers", {})
    if not isinstance(modifiers, dict):
        raise BadReply(f"modifiers must be an object, not {modifiers!r}")
    if base == "auth_on_register":
        return allow(**_register_modifiers(modifiers))
    if base == "auth_on_publish":
        return allow(**_publish_modifiers(modifiers, options, asked or ""))
    if base == "auth_on_subscribe":
        topics = modifiers.get("topics") if v5 else reply.get("topics")
        if topics is None:
            return allow()
        return allow(topics=_subscribe_topics(topics, asked or ()))
    if base == "on_unsubscribe":
        topics = modifiers.get("topics") if v5 else reply.get("topics")
        if topics is None:
            return allow()
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise BadReply(f"topics must be a list of topic filters, not {topics!r}")
        return allow(topics=topics)
    if base == "on_auth":
        return _auth_answer(modifiers, asked)
    raise BadReply(f"{hook} is not a decision hook")


def _refusal(hook: str, error: Any) -> Deny:
    text = str(error) if error is not None else "not_allowed"
    code = _REASON_CODES.get(text, NOT_AUTHORIZED)
    return deny(code, text)


def _register_modifiers(modifiers: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in modifiers.items():
        if key in IGNORED_REGISTER_MODIFIERS:
            log.debug("auth_on_register modifier %s has no meaning in ternmq; left alone", key)
        elif key == "mountpoint":
            if not isinstance(value, str):
                raise BadReply(f"mountpoint must be a string, not {value!r}")
            try:
                check_mountpoint(value)
            except ValueError as exc:
                raise BadReply(f"mountpoint {value!r}: {exc}") from None
            out["mountpoint"] = value
        elif key in ("client_id", "username"):
            if not isinstance(value, str) or (key == "client_id" and not value):
                raise BadReply(f"{key} must be a non-empty string, not {value!r}")
            out[key] = value
        elif key in ("clean_session", "clean_start"):
            out["clean_start"] = _boolean(key, value)
        elif key in _REGISTER_LIMITS:
            # VerneMQ's 0 (and -1 for queues) means "no limit of the session's own": the
            # broker's limit stays.
            limit = _whole(key, value, _REGISTER_LIMITS[key], unlimited=key == "max_offline_messages")
            if limit:
                out["max_queued_messages" if key == "max_offline_messages" else key] = limit
        elif key == "session_expiry_interval":
            out[key] = _whole(key, value, _U32)
        elif key == "properties":
            properties = decode_properties(value, _REGISTER_PROPERTIES)
            if "session_expiry_interval" in properties:
                out["session_expiry_interval"] = properties["session_expiry_interval"]
        else:
            raise BadReply(f"unknown auth_on_register modifier {key!r}")
    return out


def _publish_modifiers(modifiers: Mapping[str, Any], options: PayloadOptions, mountpoint: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in modifiers.items():
        if key == "topic":
            if not isinstance(value, str) or not value:
                raise BadReply(f"topic must be a non-empty string, not {value!r}")
            out["topic"] = value
        elif key == "payload":
            out["payload"] = decode_payload(value, options)
        elif key == "qos":
            if value not in (0, 1, 2) or isinstance(value, bool):
                raise BadReply(f"qos must be 0, 1 or 2, not {value!r}")
            out["qos"] = value
        elif key == "retain":
            out["retain"] = _boolean(key, value)
        elif key == "properties":
            out["properties"] = decode_properties(value, _PUBLISH_PROPERTIES)
        elif key == "mountpoint":
            if value != mountpoint:
                raise BadReply(f"mountpoint {value!r}: publishing into another mountpoint is not supported")
        elif key == "throttle":
            _whole(key, value, _U32)  # VerneMQ pauses the publisher; ternmq does not (docs/webhooks.md)
        else:
            raise BadReply(f"unknown auth_on_publish modifier {key!r}")
    return out


def _subscribe_topics(topics: Any, asked: Sequence[TopicSubscription]) -> list[TopicSubscription | tuple[str, int]]:
    if not isinstance(topics, list):
        raise BadReply(f"topics must be a list, not {topics!r}")
    if len(topics) != len(asked):
        raise BadReply(f"{len(topics)} topics answered for {len(asked)} asked")
    out: list[TopicSubscription | tuple[str, int]] = []
    for entry, original in zip(topics, asked, strict=True):
        if not isinstance(entry, dict) or not isinstance(entry.get("topic"), str):
            raise BadReply(f"a topics entry must be {{'topic': ..., 'qos': ...}}, not {entry!r}")
        qos = entry.get("qos")
        if not isinstance(qos, int) or isinstance(qos, bool) or not (0 <= qos <= 2 or 0x80 <= qos <= 0xFF):
            raise BadReply(f"qos must be 0, 1, 2 or a reason code >= 128, not {qos!r}")
        topic_filter = entry["topic"]
        if qos >= 0x80:
            out.append((topic_filter, qos))
            continue
        handling = entry.get("retain_handling", _RETAIN_HANDLING[original.retain_handling])
        if handling not in _RETAIN_HANDLING:
            raise BadReply(f"retain_handling must be one of {', '.join(_RETAIN_HANDLING)}, not {handling!r}")
        out.append(
            TopicSubscription(
                topic_filter,
                qos,
                _boolean("no_local", entry.get("no_local", original.no_local)),
                _boolean("rap", entry.get("rap", original.retain_as_published)),
                _RETAIN_HANDLING.index(handling),
                original.subscription_identifier,
            )
        )
    return out


def _auth_answer(modifiers: Mapping[str, Any], method: Any) -> Allow | AuthContinue:
    code = modifiers.get("reason_code", 0)
    properties = decode_properties(modifiers.get("properties", {}), _AUTH_PROPERTIES)
    if properties.get("authentication_method", method) != method:
        raise BadReply(f"p_authentication_method must stay {method!r}")
    data = properties.get("authentication_data")
    if code == CONTINUE_AUTHENTICATION:
        return auth_continue(data or b"")
    if code != 0:
        raise BadReply(f"reason_code must be 0 (success) or 24 (continue), not {code!r}")
    return allow(authentication_data=data) if data else allow()


def decode_payload(value: Any, options: PayloadOptions) -> bytes:
    if not isinstance(value, str):
        raise BadReply(f"payload must be a string, not {value!r}")
    if not options.base64payload:
        return value.encode()
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise BadReply("payload is not base64") from None


def decode_properties(value: Any, allowed: frozenset[str]) -> dict[str, Any]:
    """VerneMQ's p_* properties of a reply as ternmq's; only the ``allowed`` ones, each
    checked for its MQTT type (a message carrying a bad one would fail every subscriber)."""
    if not isinstance(value, dict):
        raise BadReply(f"properties must be an object, not {value!r}")
    out: dict[str, Any] = {}
    for vmq, item in value.items():
        name = _KERNEL_NAMES.get(vmq)
        if name is None:
            raise BadReply(f"unknown property {vmq!r}")
        if name not in allowed:
            raise BadReply(f"this hook cannot set the property {vmq}")
        try:
            out[name] = _decode_property(name, item)
        except (ValueError, TypeError, KeyError, binascii.Error) as exc:
            raise BadReply(f"property {vmq}: {exc or type(exc).__name__}") from None
    return out


def _decode_property(name: str, value: Any) -> Any:
    if name == "payload_format_indicator":
        return {"utf8": 1, "unspecified": 0}[value]
    if name == "user_property":
        if not isinstance(value, list):
            raise ValueError("must be a list of {key, val}")
        return [(_b64_text(pair["key"]), _b64_text(pair["val"])) for pair in value]
    if name == "authentication_data":
        return base64.b64decode(_string(value), validate=True)
    if name == "correlation_data":
        return _string(value).encode()
    if name in ("message_expiry_interval", "session_expiry_interval"):
        return _whole(name, value, _U32)
    if name == "response_topic":
        topic = _string(value)
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"not a topic name: {topic!r}")
        return topic
    return _string(value)  # content_type, authentication_method


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    if len(value.encode()) > 65535:
        raise ValueError("longer than an MQTT string can be")
    return value


def _b64_text(value: Any) -> str:
    return base64.b64decode(_string(value), validate=True).decode()


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise BadReply(f"{key} must be true or false, not {value!r}")
    return value


def _whole(key: str, value: Any, maximum: int, *, unlimited: bool = False) -> int:
    """A whole number from 0 to ``maximum``; with ``unlimited`` also -1, read as 0."""
    if unlimited and value == -1 and not isinstance(value, bool):
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise BadReply(f"{key} must be a whole number from 0 to {maximum}, not {value!r}")
    return value
