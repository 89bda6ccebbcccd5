"""Frames: many forwarded messages in one Redis PUBLISH to a node's inbox channel.

A frame is JSON: the sending node, a sequence number (one counter per sending node and
receiving node, so a gap shows a lost frame), and the messages with the client id of
each one's publisher (for no-local on the receiving node). Batching is the design: one
Redis command per frame instead of one per message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from ternmq.kernel import Message, message_from_json, message_to_json


def inbox_channel(prefix: str, node: str) -> str:
    return f"{prefix}:inbox:{node}"


@attrs.frozen
class Frame:
    node: str
    sequence: int
    messages: tuple[tuple[Message, str | None], ...]


def encode_frame(node: str, sequence: int, messages: Sequence[tuple[Message, str | None]]) -> bytes:
    body = {
        "node": node,
        "seq": sequence,
        "messages": [[message_to_json(message), origin] for message, origin in messages],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_frame(data: bytes) -> Frame:
    """A frame back; ValueError when ``data`` is not one (a message that does not read
    fails the frame: frames are written by ternmq nodes only)."""
    try:
        body: Any = json.loads(data)
        messages = tuple(
            (message_from_json(message), None if origin is None else str(origin))
            for message, origin in body["messages"]
        )
        return Frame(str(body["node"]), int(body["seq"]), messages)
    except (KeyError, TypeError, RecursionError) as exc:
        raise ValueError(f"not a frame: {exc!r}") from None
