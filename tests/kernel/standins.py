"""A connection stand-in for unit tests of the routing and protocol layers: what it is
given to write is kept in ``written`` and decoded by ``packets()``; no socket.

It has the members of the routing layer's ``AttachedConnection``
(kernel/routing/session.py); test_protocol_unit.py extends it to a ``ClientConnection``.
"""

from __future__ import annotations

from typing import Any

import trio

from ternmq.kernel.codec import Framer, Publish, decode_packet, encode_publish_parts
from ternmq.kernel.routing.session import Session
from ternmq.kernel.values.config import ListenerConfig
from ternmq.kernel.values.types import ClientInfo, Message


class WrittenConnection:
    """A connection whose ``write`` appends to ``written``; ``kick`` is recorded."""

    def __init__(
        self,
        client_info: ClientInfo,
        protocol_level: int = 5,
        *,
        listener: ListenerConfig | None = None,
        receive_maximum: int = 65535,
        maximum_packet_size: int = 268_435_460,
        alias_maximum: int = 0,
        outbound_limit: int = 16 * 1_048_576,
    ) -> None:
        self.protocol_level = protocol_level
        self.client_info = client_info
        self.outbound_bytes = 0
        self.outbound_limit = outbound_limit
        self.client_receive_maximum = receive_maximum
        self.client_maximum_packet_size = maximum_packet_size
        self.outbound_alias_maximum = alias_maximum
        self.session: Session | None = None
        self.will: Message | None = None
        self.disconnect_reason = ""
        self.peer_host = "127.0.0.1"
        self.peer_port = 50000
        self.written: list[bytes] = []
        self.kicked: list[tuple[int, str]] = []
        self._listener = listener if listener is not None else ListenerConfig("unit")
        self._closed = trio.Event()
        self._aliases: dict[str, int] = {}

    @property
    def listener(self) -> ListenerConfig:
        return self._listener

    @property
    def closed(self) -> trio.Event:
        return self._closed

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.outbound_bytes += len(data)

    def encode_with_alias(self, message: Message, qos: int, retain: bool, props: dict[str, Any]) -> tuple[bytes, bytes]:
        # What transport/outbound.py does: a new alias per topic while there is room.
        topic = message.topic
        alias = self._aliases.get(topic)
        if alias is not None:
            props["topic_alias"] = alias
            topic = ""
        elif len(self._aliases) < self.outbound_alias_maximum:
            alias = self._aliases[topic] = len(self._aliases) + 1
            props["topic_alias"] = alias
        return encode_publish_parts(Publish(topic, message.payload, qos, retain, False, None, props), 5)

    def kick(self, reason_code: int, reason: str) -> None:
        self.kicked.append((reason_code, reason))
        self.disconnect_reason = reason
        self._closed.set()

    def packets(self) -> list[Any]:
        """Everything written so far, decoded at the connection's protocol level (each
        write must hold whole packets)."""
        framer = Framer()
        framer.feed(b"".join(self.written))
        decoded = [decode_packet(first, body, self.protocol_level) for first, body in framer.frames()]
        assert framer.buffered() == 0, "a partial packet was written"
        return decoded
