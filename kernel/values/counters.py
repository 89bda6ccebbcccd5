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
    """MQTT control packets received and sent, by packet type: index ``n`` counts type
    ``n`` (the high nibble of a packet's first byte: 1 CONNECT ... 15 AUTH)."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = [0] * 16
        self.sent = [0] * 16
