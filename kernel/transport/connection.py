"""One client connection: its lifetime, reading, writing and timeouts.

The reader task performs the CONNECT handshake, then reads packets and hands each to
its handler in ``inbound.py`` (to the end, before the next is read), and flushes its
own replies in one write per read. Messages other clients route here while the reader
waits are sent by a writer task that is started on first need in the listener's
nursery. Connect timeout and keep-alive are deadlines checked by the broker's
watchdog, not one cancel scope per client.

The off switch (``_cancel_reader``: ``kick``, the watchdog, a failed writer) ends the
reader where it waits; what is queued is flushed and the broker detaches the session.
Over TLS and WebSocket it cancels the reader's cancel scope. Over plain TCP, the common
case, a cancel scope would be one of the largest costs of a client that connects and
disconnects (bench/), so the reader starts without one: as long as all it waits for is
its socket (the CONNECT, a handshake that awaits nothing, the DISCONNECT), the switch is
``RawSocketStream.abort_receive``. From the first step that may wait for anything else
(a hook, a takeover, a packet other than DISCONNECT, a reply the socket does not take
at once) the reader runs in its cancel scope, entered there and kept to the end.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..codec import (
    Framer,
    MQTTError,
    ProtocolError,
    ReasonCode,
    decode_packet,
)
from ..protocol import connect as connect_phase
from ..protocol.inbound import HANDLERS, STOP
from ..protocol.ports import RECEIVE_SIZE
from ..protocol.throttle import Throttle
from ..values.counters import packet_size
from ..values.types import ClientInfo, Message
from .outbound import FLUSH_GRACE, Outbound
from .rawstream import RawSocketStream, ReceiveAborted

if TYPE_CHECKING:
    from ..protocol.ports import BrokerCore
    from ..routing.session import Session
    from ..values.config import ListenerConfig

log = logging.getLogger("ternmq.connection")

# Who the client is until its CONNECT is accepted, shared by all connections: only logs
# read it then (client_id ""); hooks first see the ClientInfo that connect.py builds.
_NOT_CONNECTED = ClientInfo("")
# A DISCONNECT with nothing in it (reason Normal in MQTT 5), the most common last packet.
_PLAIN_DISCONNECT = b"\xe0\x00"


class Connection(Outbound):
    """A client's connection (see module docstring).

    :param nursery: where the writer task runs when one is needed (the listener's
        connection nursery).
    :param now: ``trio.current_time``, or the same function of the clock (listeners.py
        passes ``current_clock().current_time``: two calls fewer each time).
    """

    __slots__ = (  # and Outbound's
        "_closed",
        "_in_aliases",
        "_now",
        "_read_scope",
        "_reading",
        "_stopping",
        "auth_method",
        "broker",
        "client_info",
        "connected",
        "deadline",
        "disconnect_reason",
        "framer",
        "keep_alive",
        "listener",
        "max_topic_alias",
        "nursery",
        "over_capacity",
        "throttle",
        "throttle_wait",
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
        broker: BrokerCore,
        stream: trio.abc.Stream,
        listener: ListenerConfig,
        peer_host: str,
        peer_port: int,
        tls_common_name: str | None = None,
        *,
        nursery: trio.Nursery,
        now: Callable[[], float] = trio.current_time,
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
        self.deadline = now() + limits.connect_timeout
        self._now = now
        self.will: Message | None = None
        self.disconnect_reason = "connection_lost"
        self.connected = False
        self._closed: trio.Event | bool = False  # see closed
        # Plain TCP: none until the reader needs one (module docstring).
        self._read_scope = None if type(stream) is RawSocketStream else trio.CancelScope()
        self._out: list[bytes] = []
        self.sent_counts = broker.packet_counts.sent
        self.sent_bytes = broker.packet_counts.sent_bytes
        self.outbound_bytes = 0
        self.outbound_limit = limits.outbound_buffer_bytes
        self._wakeup: trio.Event | None = None
        self._closing = False
        self._reading = True  # until it waits for input (serve)
        self._stopping = False
        self._writer_running = False
        self._writer_done: trio.Event | None = None
        self.client_receive_maximum = 65535
        self.client_maximum_packet_size = 268_435_460
        self.outbound_alias_maximum = 0
        self._out_aliases: dict[str, int] | None = None  # MQTT 5 only: made on first use
        self._in_aliases: dict[int, str] | None = None
        self.server_receive_maximum = limits.max_inflight
        self.max_topic_alias = limits.max_topic_alias
        self.request_problem_information = True
        self.auth_method: str | None = None
        self.over_capacity = False
        self.throttle = Throttle(limits.max_message_rate) if limits.max_message_rate else None
        self.throttle_wait: trio.CancelScope | None = None  # while a throttled PUBLISH waits
        # The CONNACK said "session present": PUBRELs of the last connection may follow.
        self.session_present = False

    @property
    def closed(self) -> trio.Event:
        """Set once the connection is closed and its session detached."""
        event = self._closed
        if event is True or event is False:  # made only when someone waits: most never do
            finished = event
            event = self._closed = trio.Event()
            if finished:
                event.set()
        return event

    @property
    def in_aliases(self) -> dict[int, str]:
        """Topic aliases the client set (MQTT 5)."""
        aliases = self._in_aliases
        if aliases is None:
            aliases = self._in_aliases = {}
        return aliases

    # -- lifetime ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection until the client leaves or is kicked; then tear down.

        Connect+disconnect is a hot path (bench/: CPU per connection against a bare trio
        server) on which a trio cancel scope is one of the largest costs: so the reader
        enters its scope only when it needs one (module docstring), and the teardown is
        shielded only when it has something to await (SessionLifecycle.detach_at_once).
        """
        broker = self.broker
        stream = self.stream
        try:
            try:
                if type(stream) is RawSocketStream:
                    await self._serve_lean()
                else:
                    scope = self._read_scope
                    assert scope is not None  # made in __init__ for TLS and WebSocket
                    with scope:
                        packet = await connect_phase.read_connect(self)
                        if packet is not None and await connect_phase.handshake(self, packet):
                            await self._read_loop()
            except MQTTError as exc:
                self.protocol_error(exc.reason_code, exc.message)
            except ReceiveAborted:
                pass  # the off switch, while the reader waited for its socket
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.disconnect_reason = "connection_lost"
            self._closing = True
            if self._out or self._writer_running:
                await self._finish_writes()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            try:
                if not broker.lifecycle.detach_at_once(self):
                    with trio.CancelScope(shield=True):
                        await broker.lifecycle.connection_closed(self)
            finally:
                if type(stream) is RawSocketStream:
                    stream.close_now()  # no checkpoint, no cancel scope: cheap
                else:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(stream)
                closed = self._closed
                if closed is False:
                    self._closed = True
                elif closed is not True:
                    closed.set()

    async def _serve_lean(self) -> None:
        """serve() over plain TCP: outside a cancel scope as long as all it waits for is
        its socket (module docstring), with the common case of the connects hot path,
        CONNECT, CONNACK, DISCONNECT, close, in this one function (bench/)."""
        stream = self.stream
        assert type(stream) is RawSocketStream
        # Just started by the scheduler: a CONNECT that is there is read without one
        # more pass of it (a checkpoint), one that is not yet there is waited for
        # without a read that fails first.
        data = stream.receive_now()
        if data is None:
            data = await stream.receive_after_wait()
        if not data:
            return
        packet = connect_phase.parse_connect(self, data)
        if packet is None:  # the CONNECT came in pieces
            packet = await connect_phase.read_connect(self)
            if packet is None:
                return
        if connect_phase.handshake_awaits(self, packet):
            with self._enter_scope():
                if await connect_phase.handshake(self, packet):
                    await self._read_loop()
            return
        if not connect_phase.handshake_now(self, packet):
            return
        # Connected: the client sent more with its CONNECT, or the CONNACK does not fit
        # in the socket's buffer now, or it is answered and the next read is waited for.
        if self.framer.buffered() or not self._send_now():
            return await self._read_loop_in_scope()
        grace = self.keep_alive * 1.5
        self.deadline = self._now() + grace if grace else math.inf
        self._reading = False
        data = await stream.receive_after_wait(RECEIVE_SIZE)
        self._reading = True
        if data == _PLAIN_DISCONNECT:  # as inbound.on_disconnect handles it; no will here
            self.disconnect_reason = "normal"
            self.broker.metrics.bytes_received += 2
            self.broker.packet_counts.count_received(_PLAIN_DISCONNECT[0], 0)
        elif not data:
            self.disconnect_reason = "connection_lost"
        else:
            self.broker.metrics.bytes_received += len(data)
            self.framer.feed(data)
            await self._read_loop_in_scope()

    async def _read_loop(self) -> None:
        """Handle packets, flush replies, read; until the client leaves or is stopped."""
        stream = self.stream
        framer = self.framer
        handlers = HANDLERS
        level = self.protocol_level
        grace = self.keep_alive * 1.5
        now = self._now
        self.deadline = now() + grace if grace else math.inf
        frame: tuple[int, bytes] | None = None  # the first of a read
        received = self.broker.packet_counts.received
        received_bytes = self.broker.packet_counts.received_bytes
        counters = self.broker.metrics
        while True:
            # Frames first, then the socket: what arrived with the CONNECT (or an AUTH
            # round) is already in the framer, and a client that pipelines CONNECT,
            # SUBSCRIBE, PUBLISH in one write waits for those answers before it writes again.
            while not self._stopping and (frame is not None or (frame := framer.next_frame()) is not None):
                # Counted inline (a call per packet would cost more than the counting).
                kind = frame[0] >> 4
                received[kind] += 1
                size = len(frame[1])
                received_bytes[kind] += size + 2 if size < 128 else packet_size(size)
                try:
                    packet = decode_packet(frame[0], frame[1], level)
                except MQTTError:
                    if kind == 1:  # any second CONNECT is a protocol error, whatever it holds
                        raise ProtocolError("second CONNECT") from None
                    raise
                frame = None
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
            counters.bytes_received += len(data)
            if grace:
                self.deadline = now() + grace
            frame = framer.feed_frame(data)

    async def receive_cancellable(self) -> bytes | bytearray:
        """Some bytes from the client; a cancel loses none (connect.while_connected reads
        while a hook runs and is cancelled when it returns). RawSocketStream.receive_some
        reads before its checkpoint, where a cancel would drop what it read."""
        stream = self.stream
        if type(stream) is RawSocketStream:
            return await stream.receive_after_wait(RECEIVE_SIZE, cancel_point=True)
        return await stream.receive_some(RECEIVE_SIZE)

    async def _read_loop_in_scope(self) -> None:
        with self._enter_scope():
            await self._read_loop()

    def _enter_scope(self) -> trio.CancelScope:
        """The cancel scope of a reader that started without one (plain TCP)."""
        scope = self._read_scope = trio.CancelScope()
        return scope

    def timed_out(self) -> None:
        """Called by the broker's watchdog once ``deadline`` has passed."""
        self.deadline = math.inf
        if self._stopping:  # stopped already (kicked, taken over...): its reason stays
            self._cancel_reader()
            return
        if self.connected:
            self.disconnect_reason = "keep_alive"
            self.send_disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)
        else:
            self.disconnect_reason = "connect_timeout"
        self._cancel_reader()

    def _cancel_reader(self) -> None:
        """The off switch: end the reader where it waits (module docstring)."""
        scope = self._read_scope
        if scope is not None:
            scope.cancel()
        else:
            stream = self.stream
            assert type(stream) is RawSocketStream
            stream.abort_receive()

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
        queued). The watchdog stops it anyway if that takes longer than FLUSH_GRACE.
        """
        if self._reading:
            self._stopping = True
            self.deadline = min(self.deadline, self._now() + FLUSH_GRACE)
            if self.throttle_wait is not None:  # a throttled reader waits: it has nothing to lose
                self.throttle_wait.cancel()
        else:
            self._cancel_reader()
