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

from ..codec import Publish, encode_publish_parts
from .types import Message

__all__ = ["StoreError", "message_to_json", "message_from_json", "message_to_bytes", "message_from_bytes"]


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


def message_to_json(message: Message) -> dict[str, Any]:
    """``message`` as JSON-ready values (every field, ``created_at`` included)."""
    return {
        "topic": message.topic,
        "payload": base64.b64encode(message.payload).decode("ascii"),
        "qos": message.qos,
        "retain": message.retain,
        "properties": {name: _plain(value) for name, value in message.properties.items()},
        "created_at": message.created_at,
    }


def message_from_json(data: Mapping[str, Any]) -> Message:
    """A message from :func:`message_to_json`'s values; ValueError (or KeyError,
    TypeError) when they are not such values."""
    if not isinstance(data, Mapping):
        raise ValueError("a stored message is a JSON object")
    properties = data.get("properties") or {}
    if not isinstance(properties, dict):
        raise ValueError("properties must be an object")
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
        properties={name: _restored(name, value) for name, value in properties.items()},
        created_at=created_at,
    )
    # A property of the wrong type or unknown name would fail later, when the message is
    # delivered (or expiry is computed): it is refused here, where a store reads it.
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
