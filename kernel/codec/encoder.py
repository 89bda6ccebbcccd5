"""Encoding packets to wire bytes (fixed header + remaining length + body)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .errors import PacketTooLarge, connack_v3_code
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from .properties import encode_properties
from .wire import MAX_VARINT, U16, enc_bin, enc_str, encode_varint

__all__ = ["encode", "encode_publish_parts"]

_pack_u16 = U16.pack
_BYTES = tuple(bytes((i,)) for i in range(256))
# first byte, one- or two-byte remaining length, topic length
_HEAD_1 = struct.Struct(">BBH").pack
_HEAD_2 = struct.Struct(">BBBH").pack


def _frame(first_byte: int, body: bytes) -> bytes:
    n = len(body)
    if n > MAX_VARINT:
        raise PacketTooLarge(f"remaining length {n} exceeds {MAX_VARINT}")
    return _BYTES[first_byte] + encode_varint(n) + body


def _publish_pieces(p: Publish, level: int) -> tuple[bytes, bytes, bytes]:
    """(fixed header + length + topic length, topic, property block); payload follows."""
    topic = p.topic.encode("utf-8")
    tlen = len(topic)
    if tlen > 0xFFFF:
        raise ValueError("topic longer than 65535 bytes")
    qos = p.qos
    if not 0 <= qos <= 2:
        raise ValueError(f"invalid QoS {qos!r}")
    if level >= 5:
        props = encode_properties(p.properties) if p.properties else b"\x00"
    else:
        props = b""
    remaining = 2 + tlen + len(props) + len(p.payload) + (2 if qos else 0)
    first = 0x30 | (qos << 1) | (8 if p.dup else 0) | (1 if p.retain else 0)
    if remaining < 0x80:
        return _HEAD_1(first, remaining, tlen), topic, props
    if remaining < 0x4000:
        return _HEAD_2(first, (remaining & 0x7F) | 0x80, remaining >> 7, tlen), topic, props
    if remaining > MAX_VARINT:
        raise PacketTooLarge(f"remaining length {remaining} exceeds {MAX_VARINT}")
    return _BYTES[first] + encode_varint(remaining) + _pack_u16(tlen), topic, props


def encode_publish_parts(packet: Publish, protocol_level: int) -> tuple[bytes, bytes]:
    """Split a PUBLISH around its packet identifier: the wire form is ``head + pid + tail``
    for QoS > 0 (``head`` already counts the two id bytes) and ``head + tail`` for QoS 0.
    ``packet.packet_id`` is ignored."""
    prefix, topic, props = _publish_pieces(packet, protocol_level)
    return prefix + topic, props + packet.payload


def _encode_publish(p: Publish, level: int) -> bytes:
    prefix, topic, props = _publish_pieces(p, level)
    if p.qos:
        pid = p.packet_id
        if pid is None or not 0 < pid <= 0xFFFF:
            raise ValueError(f"PUBLISH at QoS {p.qos} needs a packet identifier 1..65535, got {pid!r}")
        return b"".join((prefix, topic, _pack_u16(pid), props, p.payload))
    return b"".join((prefix, topic, props, p.payload))


def _encode_connect(p: Connect, _level: int) -> bytes:
    level = p.protocol_level
    will = p.will
    flags = 0x02 if p.clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        flags |= 0x40
    parts = [enc_str(p.protocol_name), bytes((level, flags)), _pack_u16(p.keep_alive)]
    if level >= 5:
        parts.append(encode_properties(p.properties))
    parts.append(enc_str(p.client_id))
    if will is not None:
        if level >= 5:
            parts.append(encode_properties(will.properties))
        parts.append(enc_str(will.topic))
        parts.append(enc_bin(will.payload))
    if p.username is not None:
        parts.append(enc_str(p.username))
    if p.password is not None:
        parts.append(enc_bin(p.password))
    return _frame(0x10, b"".join(parts))


def _encode_connack(p: Connack, level: int) -> bytes:
    if level < 5:
        flags = 1 if (p.session_present and level == 4) else 0
        return bytes((0x20, 2, flags, connack_v3_code(p.reason_code)))
    body = bytes((1 if p.session_present else 0, p.reason_code)) + encode_properties(p.properties)
    return _frame(0x20, body)


def _ack_encoder(first_byte: int) -> Callable[[Any, int], bytes]:
    def encode(p: Puback | Pubrec | Pubrel | Pubcomp, level: int) -> bytes:
        pid = _pack_u16(p.packet_id)
        if level < 5 or (not p.reason_code and not p.properties):
            return bytes((first_byte, 2)) + pid
        if not p.properties:
            return bytes((first_byte, 3)) + pid + _BYTES[p.reason_code]
        return _frame(first_byte, pid + _BYTES[p.reason_code] + encode_properties(p.properties))

    return encode


def _encode_subscribe(p: Subscribe, level: int) -> bytes:
    parts = [_pack_u16(p.packet_id)]
    if level >= 5:
        parts.append(encode_properties(p.properties))
    for sub in p.subscriptions:
        opts = sub.qos
        if level >= 5:
            opts |= (4 if sub.no_local else 0) | (8 if sub.retain_as_published else 0) | (sub.retain_handling << 4)
        parts.append(enc_str(sub.topic_filter))
        parts.append(_BYTES[opts])
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: Suback, level: int) -> bytes:
    if level >= 5:
        body = _pack_u16(p.packet_id) + encode_properties(p.properties) + bytes(p.reason_codes)
    else:  # 3.1.1 knows a single failure code, 0x80
        body = _pack_u16(p.packet_id) + bytes(c if c < 0x80 else 0x80 for c in p.reason_codes)
    return _frame(0x90, body)


def _encode_unsubscribe(p: Unsubscribe, level: int) -> bytes:
    parts = [_pack_u16(p.packet_id)]
    if level >= 5:
        parts.append(encode_properties(p.properties))
    parts.extend(enc_str(f) for f in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: Unsuback, level: int) -> bytes:
    if level < 5:
        return b"\xb0\x02" + _pack_u16(p.packet_id)
    return _frame(0xB0, _pack_u16(p.packet_id) + encode_properties(p.properties) + bytes(p.reason_codes))


def _encode_disconnect(p: Disconnect, level: int) -> bytes:
    if level < 5 or (not p.reason_code and not p.properties):
        return b"\xe0\x00"
    if not p.properties:
        return b"\xe0\x01" + _BYTES[p.reason_code]
    return _frame(0xE0, _BYTES[p.reason_code] + encode_properties(p.properties))


def _encode_auth(p: Auth, level: int) -> bytes:
    if level < 5:
        raise ValueError("AUTH exists only in MQTT 5")
    if not p.reason_code and not p.properties:
        return b"\xf0\x00"
    return _frame(0xF0, _BYTES[p.reason_code] + encode_properties(p.properties))


_ENCODERS: dict[type, Callable[[Any, int], bytes]] = {
    Connect: _encode_connect,
    Connack: _encode_connack,
    Publish: _encode_publish,
    Puback: _ack_encoder(0x40),
    Pubrec: _ack_encoder(0x50),
    Pubrel: _ack_encoder(0x62),
    Pubcomp: _ack_encoder(0x70),
    Subscribe: _encode_subscribe,
    Suback: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    Unsuback: _encode_unsuback,
    Pingreq: lambda p, level: b"\xc0\x00",
    Pingresp: lambda p, level: b"\xd0\x00",
    Disconnect: _encode_disconnect,
    Auth: _encode_auth,
}


def encode(packet: Any, protocol_level: int) -> bytes:
    """The full wire bytes of ``packet`` for a connection at ``protocol_level`` (3, 4 or 5).

    CONNECT is encoded at its own ``protocol_level``. Properties are dropped below level 5.
    Invalid field values raise ValueError; a body over 268435455 bytes raises PacketTooLarge.
    """
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise TypeError(f"not an MQTT packet: {packet!r}") from None
    return encoder(packet, protocol_level)
