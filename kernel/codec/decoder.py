"""Decoding one MQTT packet whose fixed header and remaining length were already split off."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import CONNACK_V3_TO_V5, REASON_CODES, MalformedPacket, MQTTError, ProtocolError, ReasonCode
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    PacketType,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
)
from .properties import WILL_PROPERTIES, decode_properties
from .wire import read_bin, read_str

_Ack = TypeVar("_Ack", Puback, Pubrec, Pubrel, Pubcomp)
_Empty = TypeVar("_Empty", Pingreq, Pingresp)
_ReasonProps = TypeVar("_ReasonProps", Disconnect, Auth)

__all__ = ["decode_packet", "ALLOWED_REASON_CODES", "legal_reason_code"]

_T = PacketType
_rc = REASON_CODES.get

_ERRORS = frozenset(range(0x80, 0xA3))
#: reason codes each v5 packet may carry (MQTT 5.0 section 2.4 and the packet sections)
ALLOWED_REASON_CODES: dict[int, frozenset[int]] = {
    _T.CONNACK: frozenset(
        {
            0x00,
            0x80,
            0x81,
            0x82,
            0x83,
            0x84,
            0x85,
            0x86,
            0x87,
            0x88,
            0x89,
            0x8A,
            0x8C,
            0x90,
            0x95,
            0x97,
            0x99,
            0x9A,
            0x9B,
            0x9C,
            0x9D,
            0x9F,
        }
    ),
    _T.PUBACK: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    _T.PUBREC: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    _T.PUBREL: frozenset({0x00, 0x92}),
    _T.PUBCOMP: frozenset({0x00, 0x92}),
    _T.SUBACK: frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2}),
    _T.UNSUBACK: frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}),
    _T.DISCONNECT: frozenset({0x00, 0x04}) | (_ERRORS - {0x84, 0x85, 0x86, 0x88, 0x8A, 0x8C, 0x91, 0x92}),
    _T.AUTH: frozenset({0x00, 0x18, 0x19}),
}
_V3_SUBACK_CODES = frozenset({0x00, 0x01, 0x02, 0x80})


def legal_reason_code(packet_type: int, reason_code: int) -> int:
    """``reason_code`` if a v5 packet of this type may carry it, else the nearest legal
    failure code (0x87 for authentication-like refusals, else 0x80 unspecified error).

    Plugins may answer with any code; this keeps what goes on the wire valid.
    """
    allowed = ALLOWED_REASON_CODES[packet_type]
    if reason_code in allowed:
        return reason_code
    if reason_code in (0x86, 0x8A, 0x8C) and 0x87 in allowed:
        return 0x87
    return 0x80


# required fixed-header flags per packet type (PUBLISH carries its own flags)
_FLAGS = (None, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)

_VALID_PROTOCOLS = frozenset({("MQIsdp", 3), ("MQTT", 4), ("MQTT", 5)})
# The same as the first bytes of a CONNECT (name as an MQTT string, then the level).
_PROTOCOL_HEADERS = {bytes((0, len(name))) + name.encode() + bytes((level,)): name for name, level in _VALID_PROTOCOLS}


def _violation(level: int, message: str) -> MQTTError:
    """ProtocolError for v5, MalformedPacket for 3.1/3.1.1 (which only know "close the connection")."""
    return ProtocolError(message) if level >= 5 else MalformedPacket(message)


def _packet_id(body: bytes, pos: int, level: int) -> int:
    if pos + 2 > len(body):
        raise MalformedPacket("truncated packet identifier")
    pid = (body[pos] << 8) | body[pos + 1]
    if not pid:
        raise _violation(level, "packet identifier 0")
    return pid


def _reason(body: bytes, pos: int, ptype: int) -> int:
    code = body[pos]
    if code not in ALLOWED_REASON_CODES[ptype]:
        raise ProtocolError(f"reason code 0x{code:02X} not allowed in {PacketType(ptype).name}")
    return _rc(code, code)


def _end(body: bytes, pos: int) -> None:
    if pos != len(body):
        raise MalformedPacket("unexpected bytes at the end of the packet")


def _decode_publish(flags: int, body: bytes, level: int) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = flags & 8
    if dup and not qos:
        raise MalformedPacket("PUBLISH with DUP set at QoS 0")
    n = len(body)
    if n < 2:
        raise MalformedPacket("truncated topic name")
    pos = 2 + ((body[0] << 8) | body[1])
    if pos > n:
        raise MalformedPacket("truncated topic name")
    raw = body[2:pos]
    if 0 in raw:
        raise MalformedPacket("topic name contains U+0000")
    try:
        topic = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("topic name is not well-formed UTF-8") from None
    if qos:
        if pos + 2 > n:
            raise MalformedPacket("truncated packet identifier")
        pid = (body[pos] << 8) | body[pos + 1]
        if not pid:
            raise _violation(level, "packet identifier 0")
        pos += 2
    else:
        pid = None
    if level >= 5:
        if pos < n and body[pos] == 0:
            props: dict[str, Any] = {}
            pos += 1
        else:
            props, pos = decode_properties(body, pos, _T.PUBLISH)
    else:
        props = {}
    return Publish(topic, body[pos:], qos, flags & 1 == 1, dup != 0, pid, props)


def _decode_connect(body: bytes, _level: int) -> Connect:
    # A known protocol name and level are looked up as they come, in one go.
    name = _PROTOCOL_HEADERS.get(body[:7]) or _PROTOCOL_HEADERS.get(body[:9])
    if name is not None:
        pos = len(name) + 2
        level = body[pos]
    else:
        name, pos = read_str(body, 0)
        if pos >= len(body):
            raise MalformedPacket("truncated CONNECT")
        level = body[pos]
        if (name, level) not in _VALID_PROTOCOLS:
            raise MQTTError(ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, f"unsupported protocol {name!r} level {level}")
    if pos + 4 > len(body):
        raise MalformedPacket("truncated CONNECT")
    flags = body[pos + 1]
    keep_alive = (body[pos + 2] << 8) | body[pos + 3]
    pos += 4
    # No flag but clean start (most clients): nothing to check, no will, user name or
    # password to read.
    plain = not flags & 0xFD
    if not plain:
        if flags & 0x01:
            raise MalformedPacket("CONNECT reserved flag set")
        will_flag = flags & 0x04
        will_qos = (flags >> 3) & 3
        will_retain = bool(flags & 0x20)
        if not will_flag and (will_qos or will_retain):
            raise MalformedPacket("will QoS/retain set without will flag")
        if will_qos == 3:
            raise MalformedPacket("will QoS 3")
        has_password = flags & 0x40
        has_username = flags & 0x80
        if has_password and not has_username and level < 5:
            raise MalformedPacket("password flag without user name flag")
    props: dict[str, Any] = {}
    if level >= 5:
        props, pos = decode_properties(body, pos, _T.CONNECT)
        if "authentication_data" in props and "authentication_method" not in props:
            raise ProtocolError("authentication data without authentication method")
    client_id, pos = read_str(body, pos)
    will = username = password = None
    if not plain:
        if will_flag:
            will_props: dict[str, Any] = {}
            if level >= 5:
                will_props, pos = decode_properties(body, pos, WILL_PROPERTIES)
            will_topic, pos = read_str(body, pos)
            will_payload, pos = read_bin(body, pos)
            will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
        if has_username:
            username, pos = read_str(body, pos)
        if has_password:
            password, pos = read_bin(body, pos)
    _end(body, pos)
    return Connect(client_id, level, bool(flags & 0x02), keep_alive, username, password, will, props, name)


def _decode_connack(body: bytes, level: int) -> Connack:
    if len(body) < 2:
        raise MalformedPacket("truncated CONNACK")
    ack_flags = body[0]
    if level < 5:
        _end(body, 2)
        if level == 3:
            ack_flags = 0  # 3.1: a reserved, unused byte
        v5_code = CONNACK_V3_TO_V5.get(body[1])
        if v5_code is None:
            raise MalformedPacket(f"reserved CONNACK return code {body[1]}")
        code = int(v5_code)
        props: dict[str, Any] = {}
    else:
        code = _reason(body, 1, _T.CONNACK)
        props, pos = decode_properties(body, 2, _T.CONNACK)
        _end(body, pos)
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK reserved acknowledge flags set")
    return Connack(bool(ack_flags), code, props)


def _ack_decoder(cls: type[_Ack], ptype: int) -> Callable[[bytes, int], _Ack]:
    def decode(body: bytes, level: int) -> _Ack:
        pid = _packet_id(body, 0, level)
        n = len(body)
        if n == 2:
            return cls(pid)
        if level < 5:
            raise MalformedPacket(f"{cls.__name__} remaining length must be 2")
        code = _reason(body, 2, ptype)
        if n == 3:
            return cls(pid, code)
        props, pos = decode_properties(body, 3, ptype)
        _end(body, pos)
        return cls(pid, code, props)

    return decode


def _id_and_properties(body: bytes, level: int, ptype: int) -> tuple[int, dict[str, Any], int]:
    """The packet identifier, then (MQTT 5) the properties: (id, properties, next position).

    Identifier 0 is a malformed packet here at every level (0x81), as strict peers
    expect of SUBSCRIBE and UNSUBSCRIBE.
    """
    pid = _packet_id(body, 0, 4)
    if level < 5:
        return pid, {}, 2
    props, pos = decode_properties(body, 2, ptype)
    return pid, props, pos


def _decode_subscribe(body: bytes, level: int) -> Subscribe:
    pid, props, pos = _id_and_properties(body, level, _T.SUBSCRIBE)
    reserved = 0xC0 if level >= 5 else 0xFC
    n = len(body)
    subs = []
    while pos < n:
        topic_filter, pos = read_str(body, pos)
        if pos >= n:
            raise MalformedPacket("missing subscription options")
        opts = body[pos]
        pos += 1
        if opts & reserved:
            raise MalformedPacket("reserved subscription option bits set")
        qos = opts & 3
        retain_handling = (opts >> 4) & 3
        if qos == 3:
            raise MalformedPacket("subscription QoS 3")
        if retain_handling == 3:
            raise MalformedPacket("retain handling 3")
        subs.append(SubscriptionRequest(topic_filter, qos, bool(opts & 4), bool(opts & 8), retain_handling))
    if not subs:
        raise _violation(level, "SUBSCRIBE without topic filters")
    return Subscribe(pid, subs, props)


def _decode_suback(body: bytes, level: int) -> Suback:
    pid, props, pos = _id_and_properties(body, level, _T.SUBACK)
    allowed = ALLOWED_REASON_CODES[_T.SUBACK] if level >= 5 else _V3_SUBACK_CODES
    codes = body[pos:]
    if not codes:
        raise _violation(level, "SUBACK without reason codes")
    for code in codes:
        if code not in allowed:
            raise _violation(level, f"reason code 0x{code:02X} not allowed in SUBACK")
    return Suback(pid, [_rc(c, c) for c in codes], props)


def _decode_unsubscribe(body: bytes, level: int) -> Unsubscribe:
    pid, props, pos = _id_and_properties(body, level, _T.UNSUBSCRIBE)
    n = len(body)
    filters = []
    while pos < n:
        topic_filter, pos = read_str(body, pos)
        filters.append(topic_filter)
    if not filters:
        raise _violation(level, "UNSUBSCRIBE without topic filters")
    return Unsubscribe(pid, filters, props)


def _decode_unsuback(body: bytes, level: int) -> Unsuback:
    pid = _packet_id(body, 0, level)
    if level < 5:
        _end(body, 2)
        return Unsuback(pid)
    props, pos = decode_properties(body, 2, _T.UNSUBACK)
    codes = body[pos:]
    if not codes:
        raise ProtocolError("UNSUBACK without reason codes")
    allowed = ALLOWED_REASON_CODES[_T.UNSUBACK]
    for code in codes:
        if code not in allowed:
            raise ProtocolError(f"reason code 0x{code:02X} not allowed in UNSUBACK")
    return Unsuback(pid, [_rc(c, c) for c in codes], props)


def _empty_decoder(cls: type[_Empty]) -> Callable[[bytes, int], _Empty]:
    def decode(body: bytes, _level: int) -> _Empty:
        if body:
            raise MalformedPacket(f"{cls.__name__} must have remaining length 0")
        return cls()

    return decode


def _reason_props_decoder(cls: type[_ReasonProps], ptype: int) -> Callable[[bytes, int], _ReasonProps]:
    """DISCONNECT and AUTH: v5 remaining length 0 means reason 0, 1 means no properties."""

    def decode(body: bytes, level: int) -> _ReasonProps:
        if level < 5:
            if ptype == _T.AUTH:
                raise MalformedPacket("AUTH before MQTT 5")
            _end(body, 0)
            return cls()
        if not body:
            return cls()
        code = _reason(body, 0, ptype)
        if len(body) == 1:
            return cls(code)
        props, pos = decode_properties(body, 1, ptype)
        _end(body, pos)
        return cls(code, props)

    return decode


_DECODERS = (
    None,
    _decode_connect,
    _decode_connack,
    None,  # PUBLISH is dispatched first, below
    _ack_decoder(Puback, _T.PUBACK),
    _ack_decoder(Pubrec, _T.PUBREC),
    _ack_decoder(Pubrel, _T.PUBREL),
    _ack_decoder(Pubcomp, _T.PUBCOMP),
    _decode_subscribe,
    _decode_suback,
    _decode_unsubscribe,
    _decode_unsuback,
    _empty_decoder(Pingreq),
    _empty_decoder(Pingresp),
    _reason_props_decoder(Disconnect, _T.DISCONNECT),
    _reason_props_decoder(Auth, _T.AUTH),
)


def decode_packet(fixed_header_byte: int, body: bytes | bytearray | memoryview, protocol_level: int) -> Any:
    """Decode one packet from its fixed header byte and body (remaining length already stripped).

    ``protocol_level`` (3, 4 or 5) is the connection's; CONNECT ignores it and reports its own.
    Raises only :class:`MQTTError` subclasses (and MQTTError(0x84) for an unsupported CONNECT).
    """
    if type(body) is not bytes:
        body = bytes(body)
    ptype = fixed_header_byte >> 4
    flags = fixed_header_byte & 0x0F
    try:
        if ptype == 3:
            return _decode_publish(flags, body, protocol_level)
        decoder = _DECODERS[ptype]
        if decoder is None:
            raise MalformedPacket("reserved packet type 0")
        expected = _FLAGS[ptype]
        # MQTT 3.1 sets DUP on retransmitted PUBREL/SUBSCRIBE/UNSUBSCRIBE
        if flags != expected and not (expected == 2 and protocol_level == 3 and flags == 0b1010):
            raise MalformedPacket(f"invalid fixed header flags 0x{flags:X} for {PacketType(ptype).name}")
        return decoder(body, protocol_level)
    except (IndexError, struct.error, ValueError) as exc:  # safety net; the decoders check bounds
        raise MalformedPacket(f"cannot decode packet: {exc}") from None
