"""Messages as bytes a store keeps: one JSON form for every store and plugin record.

A message's MQTT 5 properties hold bytes (``correlation_data``) and pairs
(``user_property``), which JSON has not: bytes go as ``{"base64": ...}`` and pairs as
two-item lists, turned back on reading. JSON, not pickle: a store file read back must
never run code.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import attrs

from ..codec import Publish, encode_publish_parts
from .types import Message, SessionSnapshot, StoredMessage, TopicSubscription

__all__ = [
    "StoreError",
    "message_to_json",
    "message_from_json",
    "message_to_bytes",
    "message_from_bytes",
    "entry_to_json",
    "entry_from_json",
    "session_to_json",
    "session_from_json",
]


class StoreError(Exception):
    """A store failed to read or write (``Service.load_records``), or cannot use its
    file; the message says which."""


def _plain(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _restored(name: str, value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["base64"], validate=True)
    if name == "user_property":
        return [(str(key), str(text)) for key, text in value]
    return value


#: What a stored value that is not what ternmq wrote raises while a store reads it back
#: (``entry_from_json``, ``session_from_json``, JSON that does not parse).
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, RecursionError)


def properties_to_json(properties: Mapping[str, Any]) -> dict[str, Any]:
    """A message's MQTT 5 properties as JSON-ready values (bytes as base64)."""
    return {name: _plain(value) for name, value in properties.items()}


def properties_from_json(properties: Any) -> dict[str, Any]:
    """Properties back from :func:`properties_to_json`'s values; ValueError (or
    KeyError, TypeError) when they are not such values."""
    if not isinstance(properties, dict):
        raise ValueError("properties must be an object")
    return {name: _restored(name, value) for name, value in properties.items()}


def message_to_json(message: Message) -> dict[str, Any]:
    """``message`` as JSON-ready values (every field, ``created_at`` included)."""
    return {
        "topic": message.topic,
        "payload": base64.b64encode(message.payload).decode("ascii"),
        "qos": message.qos,
        "retain": message.retain,
        "properties": properties_to_json(message.properties),
        "created_at": message.created_at,
    }


def message_from_json(data: Mapping[str, Any]) -> Message:
    """A message from :func:`message_to_json`'s values; ValueError (or KeyError,
    TypeError) when they are not such values."""
    if not isinstance(data, Mapping):
        raise ValueError("a stored message is a JSON object")
    properties = properties_from_json(data.get("properties") or {})
    qos = data["qos"]
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        raise ValueError(f"bad qos {qos!r}")
    try:
        created_at = float(data["created_at"])
    except OverflowError:
        created_at = math.inf
    if not math.isfinite(created_at):
        raise ValueError(f"bad created_at {str(data['created_at'])[:40]!r}")
    message = Message(
        topic=str(data["topic"]),
        payload=base64.b64decode(data["payload"], validate=True),
        qos=qos,
        retain=bool(data["retain"]),
        properties=properties,
        created_at=created_at,
    )
    return sendable(message)


def sendable(message: Message) -> Message:
    """``message`` when its properties can be sent; ValueError when not. A property of
    the wrong type or unknown name would fail later, when the message is delivered (or
    expiry is computed): it is refused where a store, or another node, hands it over."""
    qos = message.qos
    try:
        message.remaining_expiry()
        sent = {name: value for name, value in message.properties.items() if name != "will_delay_interval"}
        encode_publish_parts(Publish(message.topic, message.payload, qos, False, False, 1, sent), 5)
        if not isinstance(message.properties.get("will_delay_interval", 0), int):
            raise TypeError("will_delay_interval is not a whole number")
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, struct.error) as exc:
        raise ValueError(f"properties that cannot be sent: {exc!r}") from None
    return message


def message_to_bytes(message: Message) -> bytes:
    """``message`` as compact JSON bytes (a record's value)."""
    return json.dumps(message_to_json(message), separators=(",", ":")).encode()


def message_from_bytes(data: bytes) -> Message:
    """The message of :func:`message_to_bytes`; ValueError when ``data`` is not one."""
    try:
        decoded = json.loads(data)
        if not isinstance(decoded, dict):
            raise ValueError("not a JSON object")
        return message_from_json(decoded)
    except (KeyError, TypeError, UnicodeDecodeError, RecursionError, OverflowError) as exc:
        raise ValueError(f"not a stored message: {exc!r}") from None


def entry_to_json(entry: StoredMessage) -> dict[str, Any]:
    """A stored message (without its entry id, a store's key) as JSON-ready values."""
    return {
        "state": entry.state,
        "qos": entry.qos,
        "retain": entry.retain,
        "sub_ids": list(entry.sub_ids),
        "packet_id": entry.packet_id,
        "message": message_to_json(entry.message) if entry.message is not None else None,
    }


def entry_from_json(entry_id: int, data: Any) -> StoredMessage:
    """A stored message back; ValueError (or KeyError, TypeError, AttributeError)."""
    if not isinstance(data, Mapping):
        raise ValueError("a stored message is a JSON object")
    message = data["message"]
    return StoredMessage(
        entry_id=entry_id,
        state=str(data["state"]),
        message=message_from_json(message) if message is not None else None,
        qos=int(data["qos"]),
        retain=bool(data["retain"]),
        sub_ids=tuple(int(sid) for sid in data["sub_ids"]),
        packet_id=data["packet_id"],
    )


def session_to_json(session: SessionSnapshot, *, with_messages: bool = False) -> dict[str, Any]:
    """A session as JSON-ready values: everything but the client id (a store's key),
    and its messages (``queued`` and ``messages``) only ``with_messages``: a store keeps
    those in rows of their own."""
    data: dict[str, Any] = {
        "username": session.username,
        "protocol_level": session.protocol_level,
        "expiry_interval": session.expiry_interval,
        "subscriptions": [attrs.asdict(subscription) for subscription in session.subscriptions],
        "disconnected_at": session.disconnected_at,
        "mountpoint": session.mountpoint,
        "created_at": session.created_at,
        "will": message_to_json(session.will) if session.will is not None else None,
    }
    if with_messages:
        data["queued"] = [message_to_json(message) for message in session.queued]
        data["messages"] = [[entry.entry_id, entry_to_json(entry)] for entry in session.messages]
    return data


def session_from_json(client_id: str, data: Any, messages: tuple[StoredMessage, ...] | None = None) -> SessionSnapshot:
    """A session back (with ``messages`` when its store keeps them apart); ValueError
    (or KeyError, TypeError, AttributeError) when ``data`` is not one."""
    if not isinstance(data, Mapping):
        raise ValueError("a stored session is a JSON object")
    will = data.get("will")
    if messages is None:
        messages = tuple(entry_from_json(int(entry_id), entry) for entry_id, entry in data.get("messages", ()))
    return SessionSnapshot(
        client_id=client_id,
        username=data["username"],
        protocol_level=int(data["protocol_level"]),
        expiry_interval=data["expiry_interval"],
        subscriptions=tuple(TopicSubscription(**subscription) for subscription in data["subscriptions"]),
        queued=tuple(message_from_json(message) for message in data.get("queued", ())),
        disconnected_at=float(data["disconnected_at"]),
        mountpoint=str(data["mountpoint"]),
        created_at=float(data["created_at"]),
        messages=messages,
        will=message_from_json(will) if will is not None else None,
    )
