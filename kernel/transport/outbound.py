"""What goes to a client: the reply queue, the reader's flush, the writer task, control
packets (a mixin of :class:`~ternmq.kernel.transport.connection.Connection`, kept apart because it
is one concern).

The reader flushes its own replies after each read. A writer task is started only when
another task writes to this client (a message routed to it) while the reader waits for
input: a client that only connects, or only publishes, never needs one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from ..codec import Disconnect, Packet, PacketType, Publish, encode, encode_publish_parts, legal_reason_code
from ..values.types import ClientInfo, Message
from .rawstream import RawSocketStream

if TYPE_CHECKING:
    from ..protocol.ports import BrokerCore

log = logging.getLogger("ternmq.connection")

FLUSH_GRACE = 2.0
# What a server may leave out of a packet that would exceed the client's maximum size.
_OPTIONAL_PROPERTIES = frozenset({"reason_string", "user_property"})


class Outbound:
    """The sending side of a Connection (which holds the state, in its slots)."""

    # Set by Connection.__init__.
    __slots__ = (
        "_closing",
        "_out",
        "_out_aliases",
        "_wakeup",
        "_writer_done",
        "_writer_running",
        "client_maximum_packet_size",
        "client_receive_maximum",
        "outbound_alias_maximum",
        "outbound_bytes",
        "outbound_limit",
        "sent_bytes",
        "sent_counts",
    )
    _closing: bool
    _out: list[bytes]
    _out_aliases: dict[str, int] | None
    _wakeup: trio.Event | None
    _writer_done: trio.Event | None
    _writer_running: bool
    client_maximum_packet_size: int
    client_receive_maximum: int
    outbound_alias_maximum: int
    outbound_bytes: int
    outbound_limit: int
    sent_counts: list[int]  # the broker's PacketCounts.sent
    sent_bytes: list[int]  # and .sent_bytes

    # Connection's
    broker: BrokerCore
    stream: trio.abc.Stream
    nursery: trio.Nursery
    client_info: ClientInfo
    protocol_level: int
    connected: bool
    request_problem_information: bool
    _reading: bool

    if TYPE_CHECKING:

        def _cancel_reader(self) -> None: ...

    async def flush(self) -> None:
        """Send what is queued now, from the reader, before it waits for input."""
        if self._out and not self._writer_running:
            await self._flush()

    async def _flush(self) -> None:
        stream = self.stream
        while self._out:
            out = self._out
            data = out[0] if len(out) == 1 else b"".join(out)
            self._out = []
            self.outbound_bytes = 0
            await stream.send_all(data)
            self.broker.metrics.bytes_sent += len(data)

    async def _write_loop(self) -> None:
        try:
            while True:
                while not self._out:
                    if self._closing:
                        return
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    self._wakeup = None
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._cancel_reader()
        except Exception:  # e.g. a WebSocket library error: close this client only
            log.exception("writer of %s failed", self.client_info.client_id)
            self._cancel_reader()
        finally:
            self._writer_running = False
            assert self._writer_done is not None  # set before the writer starts
            self._writer_done.set()

    async def _finish_writes(self) -> None:
        """Let what is queued (a CONNACK refusal, a DISCONNECT) reach the client."""
        self._closing = True
        if self._writer_running:
            self._wake_writer()
            assert self._writer_done is not None
            with trio.move_on_after(FLUSH_GRACE):
                await self._writer_done.wait()
        elif self._out:
            with trio.move_on_after(FLUSH_GRACE):
                await self._flush()

    def _wake_writer(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def write(self, data: bytes) -> None:
        """Queue one packet's bytes for the client; never blocks (the caller checks
        outbound_bytes)."""
        kind = data[0] >> 4
        size = len(data)
        self.sent_counts[kind] += 1
        self.sent_bytes[kind] += size
        self._out.append(data)
        self.outbound_bytes += size
        if self._wakeup is not None:
            self._wakeup.set()  # a writer is running and waiting: it sends this
        elif self._reading:
            return  # the reader (or a busy writer) flushes before waiting again
        elif not self._writer_running and not self._closing:
            self._writer_running = True
            self._writer_done = trio.Event()
            self.nursery.start_soon(self._write_loop)

    def send(self, packet: Packet) -> bool:
        """Queue a control packet (not a routed PUBLISH: sessions encode those).

        A packet over the client's Maximum Packet Size loses its reason string and user
        properties, which the client may not be sent then [MQTT-3.1.2-25]; if it is still
        too large it is not sent at all (False).
        """
        data = encode(packet, self.protocol_level)
        if len(data) > self.client_maximum_packet_size:
            properties = getattr(packet, "properties", None)
            if not properties or not _OPTIONAL_PROPERTIES.intersection(properties):
                return False
            packet.properties = {k: v for k, v in properties.items() if k not in _OPTIONAL_PROPERTIES}
            data = encode(packet, self.protocol_level)
            if len(data) > self.client_maximum_packet_size:
                return False
        self.write(data)
        return True

    def problem_information(self, reason_string: str | None) -> dict[str, Any]:
        """Properties carrying ``reason_string`` on a packet other than CONNACK and
        DISCONNECT: none unless the MQTT 5 client asked for problem information."""
        if reason_string and self.protocol_level == 5 and self.request_problem_information:
            return {"reason_string": reason_string}
        return {}

    def send_disconnect(self, reason_code: int, reason_string: str | None = None) -> None:
        """MQTT 5 clients get a DISCONNECT with the reason; v3 ones just see the close.

        The reason string goes out even to a client that set Request Problem Information
        to 0: the spec allows it on DISCONNECT, and it tells the user why.
        """
        if self.protocol_level == 5 and self.connected:
            props = {"reason_string": reason_string} if reason_string else {}
            self.send(Disconnect(legal_reason_code(PacketType.DISCONNECT, reason_code), props))

    def _send_now(self) -> bool:
        """_flush without waiting: False when the socket did not take it all (the rest
        stays queued)."""
        stream = self.stream
        assert type(stream) is RawSocketStream  # no cancel scope: plain TCP
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        sent = stream.send_nowait(data)
        self.broker.metrics.bytes_sent += sent
        if sent == len(data):
            self._out = []
            self.outbound_bytes = 0
            return True
        self._out = [data[sent:]]
        self.outbound_bytes = len(data) - sent
        return False

    def encode_with_alias(self, message: Message, qos: int, retain: bool, props: dict[str, Any]) -> tuple[bytes, bytes]:
        """Encode a PUBLISH using an outbound topic alias (MQTT 5 clients that allow them)."""
        topic = message.topic
        aliases = self._out_aliases
        if aliases is None:
            aliases = self._out_aliases = {}
        alias = aliases.get(topic)
        if alias is not None:
            props["topic_alias"] = alias
            topic = ""
        elif len(aliases) < self.outbound_alias_maximum:
            alias = len(aliases) + 1
            aliases[topic] = alias
            props["topic_alias"] = alias
        return encode_publish_parts(Publish(topic, message.payload, qos, retain, False, None, props), 5)
