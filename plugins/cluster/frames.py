"""Frames: what nodes send to each other's inbox channel, JSON in one Redis PUBLISH.

A message frame carries many forwarded messages: the sending node, its incarnation (one
per run of the node), a sequence number (one counter per sending node and receiving
node, so a gap shows a lost frame and a frame sent again is known), and the messages with
the client id of each one's publisher (for no-local on the receiving node). Batching is
the design: one Redis command per frame instead of one per message.

A control frame (``kind``) asks or answers, under a request ``id``: ``takeover`` asks the
node holding a client id to hand its session over, ``sessions`` for its sessions,
``disconnect`` to disconnect a client; ``answer`` carries the reply. ``ack`` (no
request id), from a node that received frames, acknowledges those of the incarnation
``inc`` of the node it goes to up to ``seq``; with ``resend`` it asks for every later
one again.
"""

from __future__ import annotations

import json
from base64 import b64decode, b64encode
from collections.abc import Sequence
from typing import Any

import attrs

from ternmq.kernel import Message, message_from_json, message_to_json, validate_topic_name


def inbox_channel(prefix: str, node: str) -> str:
    return f"{prefix}:inbox:{node}"


#: A shared subscription group: (group name, filter as routed).
Group = tuple[str, str]
#: One forwarded message: the message, its publisher's client id, and the shared groups
#: the receiving node serves for it (the publisher's node chose one node per group).
Forwarded = tuple[Message, str | None, frozenset[Group]]


@attrs.frozen
class Frame:
    node: str
    incarnation: str
    sequence: int
    messages: tuple[Forwarded, ...]


def encode_frame(node: str, incarnation: str, sequence: int, messages: Sequence[Forwarded]) -> bytes:
    body = {
        "node": node,
        "inc": incarnation,
        "seq": sequence,
        "messages": [_entry(*forwarded) for forwarded in messages],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _entry(message: Message, origin: str | None, groups: frozenset[Group]) -> list[Any]:
    # Most messages carry no properties: those go as a flat list (topic, payload, QoS,
    # retain, created_at), a quarter of the encoding and decoding work of the stores'
    # JSON form, which the others use.
    if message.properties:
        return [message_to_json(message), origin, sorted(groups)]
    payload = b64encode(message.payload).decode("ascii")
    return [message.topic, payload, message.qos, message.retain, message.created_at, origin, sorted(groups)]


def _forwarded(entry: list[Any]) -> Forwarded:
    if isinstance(entry[0], dict):
        data, origin, groups = entry
        message = message_from_json(data)
    else:
        topic, payload, qos, retain, created_at, origin, groups = entry
        if not isinstance(topic, str) or qos not in (0, 1, 2) or isinstance(qos, bool):
            raise ValueError("not a forwarded message")
        message = Message(topic, b64decode(payload, validate=True), qos, bool(retain), None, float(created_at))
    validate_topic_name(message.topic)  # a TopicError is a ValueError
    served = frozenset((str(group), str(topic_filter)) for group, topic_filter in groups)
    return message, None if origin is None else str(origin), served


@attrs.frozen
class Control:
    """A control frame: its kind, the node it is from, and the rest of its body."""

    kind: str
    node: str
    body: dict[str, Any]


def encode_control(kind: str, node: str, **body: Any) -> bytes:
    return json.dumps({"kind": kind, "node": node, **body}, separators=(",", ":")).encode()


def decode_frame(data: bytes) -> Frame | Control:
    """A frame back; ValueError when ``data`` is not one (a message that does not read
    fails the frame: frames are written by ternmq nodes only)."""
    try:
        body: Any = json.loads(data)
        if "kind" in body:
            return Control(str(body["kind"]), str(body["node"]), body)
        messages = tuple(_forwarded(entry) for entry in body["messages"])
        return Frame(str(body["node"]), str(body["inc"]), int(body["seq"]), messages)
    except (KeyError, TypeError, AttributeError, RecursionError, OverflowError) as exc:  # ValueError passes
        raise ValueError(f"not a frame: {exc!r}") from None
