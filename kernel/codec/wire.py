"""Wire primitives: variable byte integers, two-byte-length strings and binary data.

Readers take ``(buf, pos)`` with ``buf`` a ``bytes`` object and return ``(value, new_pos)``;
every bounds or encoding problem raises :class:`MalformedPacket` (never IndexError).
"""

from __future__ import annotations

import struct

from .errors import MalformedPacket

__all__ = [
    "MAX_VARINT",
    "U16",
    "U32",
    "encode_varint",
    "read_varint",
    "read_str",
    "read_bin",
    "enc_str",
    "enc_bin",
]

MAX_VARINT = 268_435_455

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
_pack_u16 = U16.pack

_SMALL_VARINTS = tuple(bytes((i,)) for i in range(128))


def encode_varint(value: int) -> bytes:
    """Encode a Variable Byte Integer (0 .. 268435455) in the minimum number of bytes."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"variable byte integer out of range: {value}")
        return _SMALL_VARINTS[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    if value > MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {value}")
    return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, ((value >> 14) & 0x7F) | 0x80, value >> 21))


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a Variable Byte Integer at ``pos``: at most 4 bytes, minimally encoded."""
    n = len(buf)
    value = 0
    shift = 0
    for i in range(4):
        if pos >= n:
            raise MalformedPacket("truncated variable byte integer")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and i:
                raise MalformedPacket("variable byte integer not minimally encoded")
            return value, pos
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def read_str(buf: bytes, pos: int) -> tuple[str, int]:
    """Decode an MQTT UTF-8 string: well-formed UTF-8 without U+0000."""
    start = pos + 2
    if start > len(buf):
        raise MalformedPacket("truncated string length")
    stop = start + ((buf[pos] << 8) | buf[pos + 1])
    if stop > len(buf):
        raise MalformedPacket("truncated string")
    raw = buf[start:stop]
    if 0 in raw:
        raise MalformedPacket("string contains U+0000")
    try:
        return raw.decode("utf-8"), stop
    except UnicodeDecodeError:
        raise MalformedPacket("string is not well-formed UTF-8") from None


def read_bin(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Decode Binary Data (two-byte length + bytes)."""
    start = pos + 2
    if start > len(buf):
        raise MalformedPacket("truncated binary data length")
    stop = start + ((buf[pos] << 8) | buf[pos + 1])
    if stop > len(buf):
        raise MalformedPacket("truncated binary data")
    return buf[start:stop], stop


def enc_str(value: str) -> bytes:
    """Encode an MQTT UTF-8 string (length prefix + UTF-8)."""
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return _pack_u16(len(raw)) + raw


def enc_bin(value: bytes) -> bytes:
    """Encode Binary Data (length prefix + bytes)."""
    if len(value) > 0xFFFF:
        raise ValueError("binary data longer than 65535 bytes")
    return _pack_u16(len(value)) + bytes(value)
