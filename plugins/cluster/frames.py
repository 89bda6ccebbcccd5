"""Frames: what nodes send to each other's inbox channel, one Redis PUBLISH each.

A message frame carries many forwarded messages: the sending node, its incarnation (one
per run of the node), a sequence number (one counter per sending node and receiving
node, so a gap shows a lost frame and a frame sent again is known), and the messages with
the client id of each one's publisher (for no-local on the receiving node). Batching is
the design: one Redis command per frame instead of one per message.

A message frame also says the sequence of the oldest frame its sender still keeps for
the receiving node (``base``: not acknowledged yet): a node that has no earlier frame of
that sender's incarnation (it started again) knows from where it must have them all,
and one that waits for frames the sender gave up (dropped, counted there) goes on.

A message frame is MessagePack: an array ``[node, incarnation, sequence, base, fields]`` where
``fields`` is one flat array of FIELDS values per message: topic, payload (binary), QoS,
retain, created_at, the publisher's client id (or nil), the shared groups the receiving
node serves (nil, or an array of [group, filter] pairs), and the MQTT 5 properties (nil,
or ``properties_to_json``'s form of them). Binary and flat: a message costs a few hundred
nanoseconds to encode and about a microsecond to decode and check, a third of JSON with
base64 payloads.

A control frame (``kind``) is a JSON object; it asks or answers, under a request ``id``:
``takeover`` asks the node holding a client id to hand its session over, ``sessions`` for
its sessions, ``disconnect`` to disconnect a client; ``answer`` carries the reply. ``ack``
(no request id), from a node that received frames, acknowledges those of the incarnation
``inc`` of the node it goes to up to ``seq``; with ``resend`` it asks for every later
one again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import attrs
import msgpack  # type: ignore[import-untyped]  # (no stubs, no py.typed)

from ternmq.kernel import Message, properties_from_json, properties_to_json, sendable, validate_topic_name


def inbox_channel(prefix: str, node: str) -> str:
    return f"{prefix}:inbox:{node}"


#: A shared subscription group: (group name, filter as routed).
Group = tuple[str, str]
#: One forwarded message: the message, its publisher's client id, and the shared groups
#: the receiving node serves for it (the publisher's node chose one node per group).
Forwarded = tuple[Message, str | None, frozenset[Group]]
NO_GROUPS: frozenset[Group] = frozenset()
#: Values per message in a message frame's flat array (module docstring).
FIELDS = 8


@attrs.frozen
class Frame:
    node: str
    incarnation: str
    sequence: int
    base: int  # the oldest frame the sender keeps for this node (module docstring)
    messages: tuple[Forwarded, ...]


def encode_frame(
    node: str, incarnation: str, sequence: int, messages: Sequence[Forwarded], *, base: int | None = None
) -> bytes:
    return frame_bytes(node, incarnation, sequence, sequence if base is None else base, encode_messages(messages))


def encode_messages(messages: Sequence[Forwarded]) -> bytes:
    """The messages of a frame, packed: kept by the sender as they are, and put in a new
    frame header (``frame_bytes``) each time the frame is sent."""
    fields: list[Any] = []
    add = fields.extend
    for message, origin, groups in messages:
        if groups or message.properties:
            add(_rich_fields(message, origin, groups))
        else:  # most messages: no group to serve, no properties
            add((message.topic, message.payload, message.qos, message.retain, message.created_at, origin, None, None))
    return pack_frame(fields)


def frame_bytes(node: str, incarnation: str, sequence: int, base: int, messages: bytes) -> bytes:
    """A message frame of ``encode_messages``' bytes (MessagePack: an array's items follow
    its header one after another, so the packed messages go in as they are)."""
    return b"\x95" + pack_frame(node) + pack_frame(incarnation) + pack_frame(sequence) + pack_frame(base) + messages


def pack_frame(body: Any) -> bytes:
    """``body`` as a message frame's bytes (MessagePack); frames made by hand in tests
    use it too."""
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _rich_fields(message: Message, origin: str | None, groups: frozenset[Group]) -> tuple[Any, ...]:
    properties = properties_to_json(message.properties) if message.properties else None
    served = sorted(groups) if groups else None
    return (message.topic, message.payload, message.qos, message.retain, message.created_at, origin, served, properties)


def _messages(fields: Any) -> tuple[Forwarded, ...]:
    """The messages of a frame's flat array, every value checked: ValueError (or
    TypeError) when one is not what a node sends."""
    if fields.__class__ is not list or len(fields) % FIELDS:
        raise ValueError("not a list of messages")
    messages: list[Forwarded] = []
    keep = messages.append
    valid: set[str] = set()  # topics checked already (a frame often has few)
    values = iter(fields)
    for topic, payload, qos, retain, created_at, origin, groups, properties in zip(*(values,) * FIELDS, strict=True):
        if (
            topic.__class__ is not str
            or payload.__class__ is not bytes
            or qos.__class__ is not int
            or not 0 <= qos <= 2
            or retain.__class__ is not bool
            or created_at.__class__ is not float
            or (origin is not None and origin.__class__ is not str)
        ):
            raise ValueError("not a forwarded message")
        if topic not in valid:
            validate_topic_name(topic)  # a TopicError is a ValueError
            valid.add(topic)
        if groups is None and properties is None:
            keep((Message(topic, payload, qos, retain, None, created_at), origin, NO_GROUPS))
            continue
        if properties is None:
            message = Message(topic, payload, qos, retain, None, created_at)
        else:  # checked as a store's message is (properties that could not be sent fail)
            if not math.isfinite(created_at):
                raise ValueError("not a forwarded message: created_at")
            restored = properties_from_json(properties)
            message = sendable(Message(topic, payload, qos, retain, restored, created_at))
        keep((message, origin, _groups(groups)))
    return tuple(messages)


def _groups(groups: Any) -> frozenset[Group]:
    if groups is None:
        return NO_GROUPS
    if groups.__class__ is not list:
        raise ValueError("groups: not a list")
    served = set()
    for pair in groups:
        if pair.__class__ is not list or len(pair) != 2 or any(part.__class__ is not str for part in pair):
            raise ValueError("groups: not (group, filter) pairs")
        served.add((pair[0], pair[1]))
    return frozenset(served)


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
        if data[:1] == b"{":  # a control frame
            body: Any = json.loads(data)
            return Control(str(body["kind"]), str(body["node"]), body)
        frame = msgpack.unpackb(data)
        if frame.__class__ is not list or len(frame) != 5:
            raise ValueError("not a message frame")
        node, incarnation, sequence, base, fields = frame
        if node.__class__ is not str or incarnation.__class__ is not str or sequence.__class__ is not int:
            raise ValueError("not a message frame: node, incarnation, sequence")
        if base.__class__ is not int or not 0 < base <= sequence:
            raise ValueError("not a message frame: base")
        return Frame(node, incarnation, sequence, base, _messages(fields))
    except (KeyError, TypeError, AttributeError, RecursionError, OverflowError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a frame: {exc!r}") from None  # (a ValueError passes as it is)
