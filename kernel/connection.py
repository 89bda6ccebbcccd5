"""One client connection: its lifetime, reading, writing and timeouts.

The reader task performs the CONNECT handshake, then reads packets and hands each to
its handler in ``inbound.py`` (to the end, before the next is read), and flushes its
own replies in one write per read. Messages other clients route here while the reader
waits are sent by a writer task that is started on first need in the listener's
nursery. Connect timeout and keep-alive are deadlines checked by the broker's
watchdog, not one cancel scope per client. The reader's cancel scope is the
connection's off switch: ``kick`` and the watchdog cancel it; what is queued is flushed
and the broker detaches the session.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import trio

from . import connect as connect_phase
from .codec import (
    Disconnect,
    Framer,
    MQTTError,
    PacketType,
    ProtocolError,
    Publish,
    decode_packet,
    encode,
    encode_publish_parts,
    legal_reason_code,
)
from .inbound import HANDLERS, STOP
from .rawstream import RECEIVE_SIZE, RawSocketStream
from .types import ClientInfo, Message

if TYPE_CHECKING:
    from .broker import Broker
    from .config import ListenerConfig
    from .session import Session

log = logging.getLogger("ternmq.connection")

FLUSH_GRACE = 2.0
# Who the client is until its CONNECT is accepted, shared by all connections: only logs
# read it then (client_id ""); hooks first see the ClientInfo that connect.py builds.
_NOT_CONNECTED = ClientInfo("")
# What a server may leave out of a packet that would exceed the client's maximum size.
_OPTIONAL_PROPERTIES = frozenset({"reason_string", "user_property"})


class Connection:
    """A client's connection (see module docstring).

    :param nursery: where the writer task runs when one is needed (the listener's
        connection nursery).
    """

    __slots__ = (
        "_closing",
        "_out",
        "_out_aliases",
        "_read_scope",
        "_reading",
        "_stopping",
        "_wakeup",
        "_writer_done",
        "_writer_running",
        "auth_method",
        "broker",
        "client_info",
        "client_maximum_packet_size",
        "client_receive_maximum",
        "closed",
        "connected",
        "deadline",
        "disconnect_reason",
        "framer",
        "in_aliases",
        "keep_alive",
        "listener",
        "max_topic_alias",
        "nursery",
        "outbound_alias_maximum",
        "outbound_bytes",
        "outbound_limit",
        "over_capacity",
        "peer_host",
        "peer_port",
        "protocol_level",
        "request_problem_information",
        "server_receive_maximum",
        "session",
        "session_present",
        "stream",
        "tls_common_name",
        "will",
    )

    def __init__(
        self,
        broker: Broker,
        stream: trio.abc.Stream,
        listener: ListenerConfig,
        peer_host: str,
        peer_port: int,
        tls_common_name: str | None = None,
        *,
        nursery: trio.Nursery,
    ) -> None:
        limits = broker.settings.limits
        self.broker = broker
        self.stream = stream
        self.listener = listener
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.tls_common_name = tls_common_name
        self.nursery = nursery
        self.framer = Framer(limits.max_packet_size)
        self.protocol_level = 4
        self.client_info = _NOT_CONNECTED
        self.session: Session | None = None
        self.keep_alive = 0
        # When the watchdog closes this connection: the connect timeout until CONNECT
        # is done, then 1.5 × keep-alive after the last read (inf without keep-alive).
        self.deadline = trio.current_time() + limits.connect_timeout
        self.will: Any = None
        self.disconnect_reason = "connection_lost"
        self.connected = False
        self.closed = trio.Event()
        self._read_scope = trio.CancelScope()
        self._out: list[bytes] = []
        self.outbound_bytes = 0
        self.outbound_limit = limits.outbound_buffer_bytes
        self._wakeup: trio.Event | None = None
        self._closing = False
        self._reading = False
        self._stopping = False
        self._writer_running = False
        self._writer_done: trio.Event | None = None
        self.client_receive_maximum = 65535
        self.client_maximum_packet_size = 268_435_460
        self.outbound_alias_maximum = 0
        self._out_aliases: dict[str, int] = {}
        self.in_aliases: dict[int, str] = {}
        self.server_receive_maximum = limits.max_inflight
        self.max_topic_alias = limits.max_topic_alias
        self.request_problem_information = True
        self.auth_method: str | None = None
        self.over_capacity = False
        # The CONNACK said "session present": PUBRELs of the last connection may follow.
        self.session_present = False

    # -- lifetime ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection until the client leaves or is kicked; then tear down.

        Connect+disconnect is a hot path (bench/: CPU per connection against a bare trio
        server) on which a trio cancel scope is one of the largest costs: so the read
        side has the one scope the off switch needs, and the teardown is shielded only
        when it has something to await (SessionLifecycle.detach_at_once).
        """
        broker = self.broker
        broker.connections.add(self)
        try:
            self._reading = True
            with self._read_scope:
                try:
                    packet = await connect_phase.read_connect(self)
                    if packet is not None and await connect_phase.handshake(self, packet):
                        await self._read_loop()
                except MQTTError as exc:
                    self.protocol_error(exc.reason_code, exc.message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.disconnect_reason = "connection_lost"
            self._closing = True
            if self._out or self._writer_running:
                await self._finish_writes()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            broker.connections.discard(self)
            try:
                if not broker.detach_at_once(self):
                    with trio.CancelScope(shield=True):
                        await broker.connection_closed(self)
            finally:
                stream = self.stream
                if type(stream) is RawSocketStream:
                    stream.close_now()  # no checkpoint, no cancel scope: cheap
                else:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
                self.closed.set()

    async def _read_loop(self) -> None:
        stream = self.stream
        framer = self.framer
        handlers = HANDLERS
        level = self.protocol_level
        grace = self.keep_alive * 1.5
        self.deadline = trio.current_time() + grace if grace else math.inf
        while True:
            # Frames first, then the socket: what arrived with the CONNECT (or an AUTH
            # round) is already in the framer, and a client that pipelines CONNECT,
            # SUBSCRIBE, PUBLISH in one write waits for those answers before it writes again.
            while not self._stopping and (frame := framer.next_frame()) is not None:
                packet = decode_packet(frame[0], frame[1], level)
                if (handler := handlers.get(type(packet))) is None:  # CONNACK, SUBACK...
                    raise ProtocolError(f"{type(packet).__name__.upper()} from a client")
                if await handler(self, packet) is STOP:
                    return
            if self._out and not self._writer_running:
                await self._flush()  # our own replies (PUBACK...), batched per read
            if self._stopping:
                return
            self._reading = False
            data = await stream.receive_some(RECEIVE_SIZE)
            self._reading = True
            if not data:
                self.disconnect_reason = "connection_lost"
                return
            if grace:
                self.deadline = trio.current_time() + grace
            framer.feed(data)

    def timed_out(self) -> None:
        """Called by the broker's watchdog once ``deadline`` has passed."""
        self.deadline = math.inf
        if self.connected:
            self.disconnect_reason = "keep_alive"
            self.send_disconnect(0x8D)
        else:
            self.disconnect_reason = "connect_timeout"
        self._read_scope.cancel()

    # -- writing -----------------------------------------------------------------------
    # The reader flushes its own replies after each read. A writer task is started only
    # when another task writes to this client (a message routed to it) while the reader
    # waits for input: a client that only connects, or only publishes, never needs one.

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
            self._read_scope.cancel()
        except Exception:  # e.g. a WebSocket library error: close this client only
            log.exception("writer of %s failed", self.client_info.client_id)
            self._read_scope.cancel()
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
        """Queue bytes for the client; never blocks (the caller checks outbound_bytes)."""
        self._out.append(data)
        self.outbound_bytes += len(data)
        if self._wakeup is not None:
            self._wakeup.set()  # a writer is running and waiting: it sends this
        elif self._reading:
            return  # the reader (or a busy writer) flushes before waiting again
        elif not self._writer_running and not self._closing:
            self._writer_running = True
            self._writer_done = trio.Event()
            self.nursery.start_soon(self._write_loop)

    def send(self, packet: Any) -> bool:
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

    def protocol_error(self, reason_code: int, message: str = "") -> None:
        """Close this connection for bad input, with the reason code where v5 allows."""
        log.info(
            "closing %s (%s:%d): %s (0x%02X)",
            self.client_info.client_id or "-",
            self.peer_host,
            self.peer_port,
            message,
            reason_code,
        )
        self.disconnect_reason = "protocol_error"
        self.send_disconnect(reason_code, message)
        self.stop_reading()

    def kick(self, reason_code: int, reason: str) -> None:
        """Close from outside (takeover, admin, shutdown): DISCONNECT for v5, then close."""
        self.disconnect_reason = reason
        self.send_disconnect(reason_code)
        self.stop_reading()

    def stop_reading(self) -> None:
        """End the reader: at once if it waits for input, else when it next would.

        A reader that is handling packets or flushing must not be cancelled there:
        bytes it took off the queue would be lost (a CONNACK, the DISCONNECT just
        queued). The watchdog cancels it anyway if that takes longer than FLUSH_GRACE.
        """
        if self._reading:
            self._stopping = True
            self.deadline = min(self.deadline, trio.current_time() + FLUSH_GRACE)
        else:
            self._read_scope.cancel()

    def encode_with_alias(self, message: Message, qos: int, retain: bool, props: dict[str, Any]) -> tuple[bytes, bytes]:
        """Encode a PUBLISH using an outbound topic alias (MQTT 5 clients that allow them)."""
        topic = message.topic
        alias = self._out_aliases.get(topic)
        if alias is not None:
            props["topic_alias"] = alias
            topic = ""
        elif len(self._out_aliases) < self.outbound_alias_maximum:
            alias = len(self._out_aliases) + 1
            self._out_aliases[topic] = alias
            props["topic_alias"] = alias
        return encode_publish_parts(Publish(topic, message.payload, qos, retain, False, None, props), 5)
