"""MQTT 5 properties: a plain ``dict[str, object]`` keyed by snake_case names.

``user_property`` is always a ``list[tuple[str, str]]`` (order kept) and
``subscription_identifier`` always a ``list[int]``; every other property is a scalar.
"""

from __future__ import annotations

from typing import Any

from .errors import MalformedPacket, ProtocolError
from .packets import PacketType
from .wire import U16, U32, enc_bin, enc_str, encode_varint, read_bin, read_str, read_varint

__all__ = [
    "PROPERTY_NAMES",
    "PROPERTY_IDS",
    "WILL_PROPERTIES",
    "decode_properties",
    "encode_properties",
]

#: pseudo packet type used as the decoding context of CONNECT's Will Properties
WILL_PROPERTIES = 0

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)

_T = PacketType
_PUB_WILL = frozenset({_T.PUBLISH, WILL_PROPERTIES})
_ALL = frozenset(_T) | {WILL_PROPERTIES}
_REASON_STRING = frozenset(
    {
        _T.CONNACK,
        _T.PUBACK,
        _T.PUBREC,
        _T.PUBREL,
        _T.PUBCOMP,
        _T.SUBACK,
        _T.UNSUBACK,
        _T.DISCONNECT,
        _T.AUTH,
    }
)

# id: (name, kind, packet types allowed in) -- MQTT 5.0 section 2.2.2.2, table 2-4
_TABLE: dict[int, tuple[str, int, frozenset[int]]] = {
    0x01: ("payload_format_indicator", _BYTE, _PUB_WILL),
    0x02: ("message_expiry_interval", _U32, _PUB_WILL),
    0x03: ("content_type", _STR, _PUB_WILL),
    0x08: ("response_topic", _STR, _PUB_WILL),
    0x09: ("correlation_data", _BIN, _PUB_WILL),
    0x0B: ("subscription_identifier", _VARINT, frozenset({_T.PUBLISH, _T.SUBSCRIBE})),
    0x11: ("session_expiry_interval", _U32, frozenset({_T.CONNECT, _T.CONNACK, _T.DISCONNECT})),
    0x12: ("assigned_client_identifier", _STR, frozenset({_T.CONNACK})),
    0x13: ("server_keep_alive", _U16, frozenset({_T.CONNACK})),
    0x15: ("authentication_method", _STR, frozenset({_T.CONNECT, _T.CONNACK, _T.AUTH})),
    0x16: ("authentication_data", _BIN, frozenset({_T.CONNECT, _T.CONNACK, _T.AUTH})),
    0x17: ("request_problem_information", _BYTE, frozenset({_T.CONNECT})),
    0x18: ("will_delay_interval", _U32, frozenset({WILL_PROPERTIES})),
    0x19: ("request_response_information", _BYTE, frozenset({_T.CONNECT})),
    0x1A: ("response_information", _STR, frozenset({_T.CONNACK})),
    0x1C: ("server_reference", _STR, frozenset({_T.CONNACK, _T.DISCONNECT})),
    0x1F: ("reason_string", _STR, _REASON_STRING),
    0x21: ("receive_maximum", _U16, frozenset({_T.CONNECT, _T.CONNACK})),
    0x22: ("topic_alias_maximum", _U16, frozenset({_T.CONNECT, _T.CONNACK})),
    0x23: ("topic_alias", _U16, frozenset({_T.PUBLISH})),
    0x24: ("maximum_qos", _BYTE, frozenset({_T.CONNACK})),
    0x25: ("retain_available", _BYTE, frozenset({_T.CONNACK})),
    0x26: ("user_property", _PAIR, _ALL - {_T.PINGREQ, _T.PINGRESP}),
    0x27: ("maximum_packet_size", _U32, frozenset({_T.CONNECT, _T.CONNACK})),
    0x28: ("wildcard_subscription_available", _BYTE, frozenset({_T.CONNACK})),
    0x29: ("subscription_identifier_available", _BYTE, frozenset({_T.CONNACK})),
    0x2A: ("shared_subscription_available", _BYTE, frozenset({_T.CONNACK})),
}

#: property identifier -> property name
PROPERTY_NAMES: dict[int, str] = {pid: spec[0] for pid, spec in _TABLE.items()}
#: property name -> property identifier
PROPERTY_IDS: dict[str, int] = {name: pid for pid, name in PROPERTY_NAMES.items()}

_SPECS: list[tuple[str, int, frozenset[int]] | None] = [_TABLE.get(i) for i in range(256)]
_ENC: dict[str, tuple[bytes, int]] = {spec[0]: (bytes((pid,)), spec[1]) for pid, spec in _TABLE.items()}

# byte properties whose only legal values are 0 and 1 (it is a Protocol Error otherwise)
_BOOLEAN_BYTES = frozenset(
    {
        "request_problem_information",
        "request_response_information",
        "maximum_qos",
        "retain_available",
        "wildcard_subscription_available",
        "subscription_identifier_available",
        "shared_subscription_available",
    }
)
# properties for which the value 0 is a Protocol Error
_NON_ZERO = frozenset({"receive_maximum", "maximum_packet_size", "subscription_identifier"})

_u16 = U16.unpack_from
_u32 = U32.unpack_from


def decode_properties(buf: bytes, pos: int, context: int) -> tuple[dict[str, Any], int]:
    """Decode a property block (length varint + properties) at ``pos`` for packet type ``context``."""
    if pos < len(buf) and buf[pos] == 0:  # fast path: no properties
        return {}, pos + 1
    length, pos = read_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise MalformedPacket("property length exceeds packet")
    props: dict[str, Any] = {}
    value: Any  # str, int or bytes, by the property's kind
    while pos < end:
        pid = buf[pos]
        pos += 1
        spec = _SPECS[pid]
        if spec is None:
            raise MalformedPacket(f"unknown property identifier 0x{pid:02X}")
        name, kind, allowed = spec
        if context not in allowed:
            raise ProtocolError(f"property {name} not allowed in this packet")
        if kind == _STR:
            value, pos = read_str(buf, pos)
        elif kind == _BYTE:
            if pos >= end:
                raise MalformedPacket(f"truncated property {name}")
            value = buf[pos]
            pos += 1
            if value > 1 and name in _BOOLEAN_BYTES:
                raise ProtocolError(f"property {name} must be 0 or 1")
        elif kind == _U16:
            if pos + 2 > end:
                raise MalformedPacket(f"truncated property {name}")
            (value,) = _u16(buf, pos)
            pos += 2
        elif kind == _U32:
            if pos + 4 > end:
                raise MalformedPacket(f"truncated property {name}")
            (value,) = _u32(buf, pos)
            pos += 4
        elif kind == _PAIR:
            key, pos = read_str(buf, pos)
            val, pos = read_str(buf, pos)
            if pos > end:
                raise MalformedPacket("property overruns property length")
            pairs = props.get(name)
            if pairs is None:
                props[name] = [(key, val)]
            else:
                pairs.append((key, val))
            continue
        elif kind == _VARINT:
            value, pos = read_varint(buf, pos)
            if pos > end:
                raise MalformedPacket("property overruns property length")
            if value == 0:
                raise ProtocolError("subscription_identifier must not be 0")
            ids = props.get(name)
            if ids is None:
                props[name] = [value]
            elif context == PacketType.PUBLISH:
                ids.append(value)
            else:
                raise ProtocolError(f"property {name} given more than once")
            continue
        else:  # _BIN
            value, pos = read_bin(buf, pos)
        if pos > end:
            raise MalformedPacket("property overruns property length")
        if name in props:
            raise ProtocolError(f"property {name} given more than once")
        if value == 0 and name in _NON_ZERO:
            raise ProtocolError(f"property {name} must not be 0")
        props[name] = value
    return props, pos


def encode_properties(props: dict[str, Any]) -> bytes:
    """Encode a property block including its length prefix (``b"\\x00"`` when empty).

    ``None`` values are skipped; ``subscription_identifier`` may be an int or a list of ints.
    Unknown names raise ValueError.
    """
    if not props:
        return b"\x00"
    parts: list[bytes] = []
    append = parts.append
    for name, value in props.items():
        if value is None:
            continue
        try:
            pid, kind = _ENC[name]
        except KeyError:
            raise ValueError(f"unknown MQTT property {name!r}") from None
        if kind == _STR:
            append(pid + enc_str(value))
        elif kind == _BYTE:
            append(pid + bytes((int(value),)))
        elif kind == _U16:
            append(pid + U16.pack(value))
        elif kind == _U32:
            append(pid + U32.pack(value))
        elif kind == _BIN:
            append(pid + enc_bin(value))
        elif kind == _PAIR:
            for key, val in value:
                append(pid + enc_str(key) + enc_str(val))
        else:  # _VARINT
            for sid in [value] if isinstance(value, int) else value:
                append(pid + encode_varint(sid))
    body = b"".join(parts)
    return encode_varint(len(body)) + body
