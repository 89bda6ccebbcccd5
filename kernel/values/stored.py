"""Messages as bytes a store keeps: one JSON form for every store and plugin record.

A message's MQTT 5 properties hold bytes (``correlation_data``) and pairs
(``user_property``), which JSON has not: bytes go as ``{"base64": ...}`` and pairs as
two-item lists, turned back on reading. JSON, not pickle: a store file read back must
never run code.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

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
    return Message(
        topic=str(data["topic"]),
        payload=base64.b64decode(data["payload"], validate=True),
        qos=qos,
        retain=bool(data["retain"]),
        properties={name: _restored(name, value) for name, value in properties.items()},
        created_at=float(data["created_at"]),
    )


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
    except (KeyError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not a stored message: {exc!r}") from None
