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
    publish_throttled: int = 0  # PUBLISH packets read later for max_message_rate
    publish_not_stored: int = 0  # QoS 1/2 PUBLISH not acknowledged: the store failed to write it
    bytes_sent: int = 0
    bytes_received: int = 0
    wills_published: int = 0
    sessions_expired: int = 0


class PacketCounts:
    """MQTT control packets and their bytes (fixed header included), received and sent,
    by packet type: index ``n`` counts type ``n`` (the high nibble of a packet's first
    byte: 1 CONNECT ... 15 AUTH). Plain lists, added to inline where packets are read and
    written: a method call per packet costs more than the counting itself."""

    __slots__ = ("received", "received_bytes", "sent", "sent_bytes")

    def __init__(self) -> None:
        self.received = [0] * 16
        self.received_bytes = [0] * 16
        self.sent = [0] * 16
        self.sent_bytes = [0] * 16

    def count_received(self, first_byte: int, body_length: int) -> None:
        """One packet received (where packets are few: CONNECT, AUTH)."""
        kind = first_byte >> 4
        self.received[kind] += 1
        self.received_bytes[kind] += packet_size(body_length)


def packet_size(body_length: int) -> int:
    """The size of a packet whose body has ``body_length`` bytes: the body, its first
    byte and its Remaining Length (1 to 4 bytes)."""
    if body_length < 128:
        return body_length + 2
    return body_length + (3 if body_length < 16384 else 4 if body_length < 2097152 else 5)
