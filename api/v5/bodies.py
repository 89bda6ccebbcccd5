"""What /api/v5's clients, subscriptions, retained messages and publish read and
write: the query of GET /clients, EMQX's bodies of a client, a subscription and a
retained message, a page, and the subscription and message a request body asks for."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ternmq.kernel import Message, SessionInfo, TopicError, TopicSubscription, validate_topic_name

from .. import model
from ..model import Page, rfc3339
from . import Call
from . import schemas as s

CLIENT_QUERY: dict[str, Any] = {
    **s.PAGING,
    "node": s.STRING,
    "clientid": s.array(s.STRING),
    "username": s.array(s.STRING),
    "ip_address": s.STRING,
    "conn_state": {"type": "string", "enum": ["connected", "idle", "disconnected"]},
    "clean_start": s.BOOLEAN,
    "proto_ver": {"type": "integer", "enum": [3, 4, 5]},
    "like_clientid": s.STRING,
    "like_username": s.STRING,
    "gte_created_at": s.NUMBER,
    "lte_created_at": s.NUMBER,
    "gte_connected_at": s.NUMBER,
    "lte_connected_at": s.NUMBER,
    "fields": s.STRING,
}


def page_body(page: Page, item: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"page": page.page, "limit": page.limit, "hasnext": page.hasnext}
    if page.count is not None:
        meta["count"] = page.count
    return {"data": [item(entry) for entry in page.items], "meta": meta}


def paging(call: Call) -> tuple[int, int]:
    return call.query.get("page", 1), call.query.get("limit", model.DEFAULT_LIMIT)


def client_body(info: SessionInfo) -> dict[str, Any]:
    return {
        "clientid": info.client_id,
        "username": info.user,
        "node": info.node,
        "ip_address": info.peer_host,
        "port": info.peer_port,
        "proto_name": model.PROTOCOL_NAMES.get(info.protocol, "MQTT"),
        "proto_ver": info.protocol,
        "keepalive": info.keep_alive,
        "clean_start": info.clean_session,
        # EMQX's expiry_interval: seconds; "never" is the largest MQTT 5 value.
        "expiry_interval": 0xFFFFFFFF if info.expiry_interval is None else info.expiry_interval,
        "connected": info.is_online,
        "connected_at": rfc3339(info.connected_at),
        "created_at": rfc3339(info.created_at),
        "disconnected_at": None if info.is_online else rfc3339(info.disconnected_at),
        "is_bridge": False,
        "is_expired": False,
        "mountpoint": info.mountpoint or None,
        "durable": False,
        "listener": info.listener,
        "subscriptions_cnt": info.subscriptions,
        "subscriptions_max": "infinity",
        "inflight_cnt": info.inflight,
        "inflight_max": info.max_inflight,
        "mqueue_len": info.queued,
        "mqueue_max": info.max_queued,
        "mqueue_dropped": 0,
    }


def subscription_body(client_id: str, node: str, sub: TopicSubscription) -> dict[str, Any]:
    return {
        "topic": sub.topic_filter,
        "qos": sub.qos,
        "nl": int(sub.no_local),
        "rap": int(sub.retain_as_published),
        "rh": sub.retain_handling,
        "clientid": client_id,
        "node": node,
    }


def retained_body(message: Message, *, payload: bool = False) -> dict[str, Any]:
    body = {
        "msgid": model.message_id(message),
        "topic": message.topic,
        "qos": message.qos,
        "publish_at": rfc3339(message.created_at),
        "from_clientid": None,
        "from_username": None,
    }
    if payload:
        body["payload"] = base64.b64encode(message.payload).decode()
    return body


def subscription_of(item: dict[str, Any]) -> TopicSubscription:
    return TopicSubscription(
        item["topic"],
        item.get("qos", 0),
        no_local=bool(item.get("nl", 0)),
        retain_as_published=bool(item.get("rap", 0)),
        retain_handling=item.get("rh", 0),
    )


def message_of(item: dict[str, Any]) -> Message | str:
    """The message of a publish request, or what is wrong with it."""
    payload: bytes
    if item.get("payload_encoding", "plain") == "base64":
        try:
            payload = base64.b64decode(item["payload"], validate=True)
        except (binascii.Error, ValueError):  # ValueError: not ASCII
            return "payload is not base64"
    else:
        payload = item["payload"].encode()
    properties: dict[str, Any] = {}
    given = item.get("properties", {})
    texts = [v for k, v in given.items() if isinstance(v, str)]
    texts += [text for pair in given.get("user_properties", {}).items() for text in pair]
    for text in texts:  # what an MQTT 5 property can carry: 65535 bytes, no U+0000
        if len(text.encode()) > 65535 or "\x00" in text:
            return f"a property {text[:20]!r}... is longer than 65535 bytes or holds U+0000"
    if "response_topic" in given:
        try:
            validate_topic_name(given["response_topic"])
        except TopicError as exc:
            return f"response_topic: {exc}"
    for name, value in given.items():
        if name == "user_properties":
            properties["user_property"] = list(value.items())
        elif name == "correlation_data":
            properties[name] = value.encode()
        else:
            properties[name] = value
    return Message(item["topic"], payload, item.get("qos", 0), item.get("retain", False), properties)
