"""The kernel's own counters (the metrics plugin exports them; ``node status`` shows them)."""

from __future__ import annotations

import attrs


@attrs.define
class Counters:
    """Counts since the broker started; every layer adds to them, none reads them back."""

    connections_accepted: int = 0
    connect_refused: int = 0
    publish_received: int = 0
    publish_denied: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    wills_published: int = 0
    sessions_expired: int = 0


class PacketCounts:
    """MQTT control packets and their bytes, received and sent, by packet type: index
    ``n`` counts type ``n`` (the high nibble of a packet's first byte: 1 CONNECT ... 15
    AUTH)."""

    __slots__ = ("received", "sent", "received_bytes", "sent_bytes")

    def __init__(self) -> None:
        self.received = [0] * 16
        self.sent = [0] * 16
        self.received_bytes = [0] * 16
        self.sent_bytes = [0] * 16

    def count_received(self, first_byte: int, body_length: int) -> None:
        """A received packet of ``body_length`` bytes after its fixed header."""
        kind = first_byte >> 4
        self.received[kind] += 1
        self.received_bytes[kind] += body_length + fixed_header_length(body_length)


def fixed_header_length(body_length: int) -> int:
    """Bytes of a fixed header: the first byte and the remaining length (1 to 4 bytes)."""
    return 2 if body_length < 128 else 3 if body_length < 16_384 else 4 if body_length < 2_097_152 else 5
