"""Incremental framing of an MQTT byte stream into (fixed header byte, body) pairs."""

from __future__ import annotations

from collections.abc import Iterator

from .errors import MalformedPacket, PacketTooLarge

__all__ = ["Framer", "DEFAULT_MAX_PACKET_SIZE"]

DEFAULT_MAX_PACKET_SIZE = 268_435_455

# compact the buffer once this many consumed bytes sit in front of the read offset
_COMPACT_AT = 64 * 1024
# bodies below this size are copied via a bytearray slice (cheaper than a memoryview for small ones)
_SMALL_BODY = 2048


class Framer:
    """Splits a byte stream into packets.

    ``feed()`` appends received bytes; ``next_frame()`` returns ``(fixed_header_byte, body)``
    for the next complete packet (``body`` is ``bytes``, the remaining-length prefix removed)
    or ``None`` when more bytes are needed. A packet whose announced total size (fixed header
    + length varint + remaining length) exceeds ``max_packet_size`` raises PacketTooLarge as
    soon as its length is known, before its body is buffered. ``max_packet_size`` is writable.
    """

    __slots__ = ("_buf", "_pos", "max_packet_size")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_packet_size = max_packet_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def feed_frame(self, data: bytes | bytearray) -> tuple[int, bytes] | None:
        """``feed(data)``, then ``next_frame()``.

        When nothing is buffered and ``data`` starts with a whole packet whose remaining
        length fits in one byte (a CONNECT or DISCONNECT that came in one read, most
        packets of a client that waits for each answer), the body is sliced out of
        ``data`` and only what follows it is buffered: one copy instead of two.
        """
        n = len(data)
        if not self._buf and n >= 2 and data[1] < 0x80:
            total = 2 + data[1]
            if total <= n and total <= self.max_packet_size:
                if total < n:
                    with memoryview(data) as view:
                        self._buf += view[total:]
                return data[0], bytes(data[2:total])  # bytes() copies only a bytearray
        self._buf += data
        return self.next_frame()

    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def next_frame(self) -> tuple[int, bytes] | None:
        buf = self._buf
        pos = self._pos
        n = len(buf)
        if n - pos < 2:
            return None
        b = buf[pos + 1]
        if b < 0x80:
            remaining = b
            header = 2
        else:
            remaining = b & 0x7F
            i = pos + 2
            shift = 7
            while True:
                if i >= n:
                    return None
                b = buf[i]
                i += 1
                remaining |= (b & 0x7F) << shift
                if b < 0x80:
                    break
                if shift == 21:
                    raise MalformedPacket("remaining length longer than 4 bytes")
                shift += 7
            if b == 0:
                raise MalformedPacket("remaining length not minimally encoded")
            header = i - pos
        total = header + remaining
        if total > self.max_packet_size:
            raise PacketTooLarge(f"packet of {total} bytes exceeds maximum packet size {self.max_packet_size}")
        end = pos + total
        if end > n:
            return None
        first = buf[pos]
        if remaining < _SMALL_BODY:
            body = bytes(buf[pos + header : end])
        else:  # one copy instead of two; the view is released before the buffer can change
            with memoryview(buf) as view:
                body = view[pos + header : end].tobytes()
        if end == n:
            buf.clear()
            self._pos = 0
        elif end >= _COMPACT_AT:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return first, body

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """Yield every complete frame currently buffered."""
        while (frame := self.next_frame()) is not None:
            yield frame
