"""One client connection: read, decode, ask hooks, route; a writer drains in batches.

A connection is two tasks in one nursery: the reader (CONNECT handshake, then one
packet after another, each handled to the end before the next is read) and the writer
(joins everything queued by ``write`` since its last send into one ``send_all``). The
reader's cancel scope is the connection's off switch: ``kick`` cancels it, the writer
flushes what is left, and the broker detaches the session.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import attrs
import trio

from . import connect as connect_phase
from . import subscriptions
from .codec import (
    Auth,
    Connect,
    Disconnect,
    Framer,
    MQTTError,
    PacketType,
    Pingreq,
    Pingresp,
    ProtocolError,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
    decode_packet,
    encode,
    encode_publish_parts,
    legal_reason_code,
)
from .topics import TopicError, validate_topic_name
from .types import Allow, ClientInfo, Deny, Message

if TYPE_CHECKING:
    from .broker import Broker
    from .config import ListenerConfig
    from .session import Session

log = logging.getLogger("ternmq.connection")

RECEIVE_SIZE = 65536
FLUSH_GRACE = 2.0
_STOP = object()  # a handler's way of saying "close this connection now"
PUBLISH_MODIFIERS = frozenset({"topic", "payload", "qos", "retain", "properties"})


class Connection:
    """A client's connection (see module docstring)."""

    __slots__ = (
        "broker", "stream", "listener", "peer_host", "peer_port", "tls_common_name",
        "framer", "protocol_level", "client_info", "session", "keep_alive",
        "will", "disconnect_reason", "connected", "closed", "_read_scope", "_out",
        "outbound_bytes", "outbound_limit", "_wakeup", "_closing",
        "client_receive_maximum", "client_maximum_packet_size", "outbound_alias_maximum",
        "_out_aliases", "_in_aliases", "server_receive_maximum", "max_topic_alias",
        "request_problem_information", "auth_method", "over_capacity",
    )

    def __init__(
        self,
        broker: Broker,
        stream: trio.abc.Stream,
        listener: ListenerConfig,
        peer_host: str,
        peer_port: int,
        tls_common_name: str | None = None,
    ) -> None:
        limits = broker.settings.limits
        self.broker = broker
        self.stream = stream
        self.listener = listener
        self.peer_host = peer_host
        self.peer_port = peer_port
        self.tls_common_name = tls_common_name
        self.framer = Framer(limits.max_packet_size)
        self.protocol_level = 4
        self.client_info = ClientInfo("", peer_host=peer_host, peer_port=peer_port,
                                      listener=listener.name, node=broker.settings.node_name,
                                      tls_common_name=tls_common_name)
        self.session: Session | None = None
        self.keep_alive = 0
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
        self.client_receive_maximum = 65535
        self.client_maximum_packet_size = 268_435_460
        self.outbound_alias_maximum = 0
        self._out_aliases: dict[str, int] = {}
        self._in_aliases: dict[int, str] = {}
        self.server_receive_maximum = limits.max_inflight
        self.max_topic_alias = limits.max_topic_alias
        self.request_problem_information = True
        self.auth_method: str | None = None
        self.over_capacity = False

    # -- lifetime ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection until the client leaves or is kicked; then tear down."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                try:
                    await self._read_side()
                finally:
                    self._closing = True
                    self._wake_writer()
                    # Give the writer a moment to flush a CONNACK or DISCONNECT.
                    nursery.cancel_scope.deadline = trio.current_time() + FLUSH_GRACE
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.broker.connection_closed(self)
                finally:
                    await trio.aclose_forcefully(self.stream)
                    self.closed.set()

    async def _read_side(self) -> None:
        with self._read_scope:
            try:
                packet = await connect_phase.read_connect(self)
                if packet is None:
                    self.disconnect_reason = "connect_timeout"
                    return
                if not await connect_phase.handshake(self, packet):
                    return
                await self._read_loop()
            except MQTTError as exc:
                self.protocol_error(exc.reason_code, exc.message)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.disconnect_reason = "connection_lost"

    async def _read_loop(self) -> None:
        stream = self.stream
        framer = self.framer
        handlers = _HANDLERS
        level = self.protocol_level
        grace = self.keep_alive * 1.5
        with trio.CancelScope() as keep_alive_scope:
            if grace:
                keep_alive_scope.deadline = trio.current_time() + grace
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    self.disconnect_reason = "connection_lost"
                    return
                if grace:
                    keep_alive_scope.deadline = trio.current_time() + grace
                framer.feed(data)
                while (frame := framer.next_frame()) is not None:
                    packet = decode_packet(frame[0], frame[1], level)
                    if (handler := handlers.get(type(packet))) is None:  # CONNACK, SUBACK...
                        raise ProtocolError(f"{type(packet).__name__.upper()} from a client")
                    if await handler(self, packet) is _STOP:
                        return
        if keep_alive_scope.cancelled_caught:
            self.disconnect_reason = "keep_alive"
            self.send_disconnect(0x8D)

    async def _write_loop(self) -> None:
        stream = self.stream
        try:
            while True:
                while not self._out:
                    if self._closing:
                        return
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    self._wakeup = None
                out = self._out
                data = out[0] if len(out) == 1 else b"".join(out)
                self._out = []
                self.outbound_bytes = 0
                await stream.send_all(data)
                self.broker.metrics.bytes_sent += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._read_scope.cancel()

    def _wake_writer(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def write(self, data: bytes) -> None:
        """Queue bytes for the writer; never blocks (the caller checks outbound_bytes)."""
        self._out.append(data)
        self.outbound_bytes += len(data)
        if self._wakeup is not None:
            self._wakeup.set()

    def send(self, packet: Any) -> None:
        self.write(encode(packet, self.protocol_level))

    def send_disconnect(self, reason_code: int, reason_string: str | None = None) -> None:
        """MQTT 5 clients get a DISCONNECT with the reason; v3 ones just see the close."""
        if self.protocol_level == 5 and self.connected:
            props = {"reason_string": reason_string} if reason_string and self.request_problem_information else {}
            self.send(Disconnect(legal_reason_code(PacketType.DISCONNECT, reason_code), props))

    def protocol_error(self, reason_code: int, message: str = "") -> None:
        """Close this connection for bad input, with the reason code where v5 allows."""
        log.info("closing %s (%s:%d): %s (0x%02X)", self.client_info.client_id or "-",
                 self.peer_host, self.peer_port, message, reason_code)
        self.disconnect_reason = "protocol_error"
        self.send_disconnect(reason_code, message)
        self._read_scope.cancel()

    def kick(self, reason_code: int, reason: str) -> None:
        """Close from outside (takeover, admin, shutdown): DISCONNECT for v5, then close."""
        self.disconnect_reason = reason
        self.send_disconnect(reason_code)
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

    # -- packets -----------------------------------------------------------------------

    async def _on_publish(self, packet: Publish) -> object:
        broker = self.broker
        broker.metrics.publish_received += 1
        session = self.session
        assert session is not None
        qos = packet.qos
        properties = packet.properties
        topic = packet.topic
        if self.protocol_level == 5 and properties:
            alias = properties.get("topic_alias")
            if alias is not None:
                if alias == 0 or alias > self.max_topic_alias:
                    self.protocol_error(0x94, "topic alias out of range")
                    return _STOP
                if topic:
                    self._in_aliases[alias] = topic
                else:
                    topic = self._in_aliases.get(alias, "")
                    if not topic:
                        self.protocol_error(0x82, "unknown topic alias")
                        return _STOP
                properties = {k: v for k, v in properties.items() if k != "topic_alias"}
        try:
            validate_topic_name(topic, broker.settings.limits.max_topic_levels)
        except TopicError as exc:
            self.protocol_error(exc.reason_code if topic else 0x82, str(exc))
            return _STOP
        if qos == 2:
            packet_id = packet.packet_id
            if packet_id in session.incoming_qos2:
                self.send(Pubrec(packet_id))  # a resend (DUP): acknowledged, not routed again
                return None
            if len(session.incoming_qos2) >= self.server_receive_maximum:
                self.protocol_error(0x93, "receive maximum exceeded")
                return _STOP
        if packet.retain and not broker.retain_available:
            self.protocol_error(0x9A, "retained messages are not supported")
            return _STOP
        message = Message(topic, packet.payload, qos, packet.retain, properties)
        reason_code, answer = 0, None
        if broker.dispatcher.has("auth_on_publish"):
            answer = await broker.dispatcher.decide(
                "auth_on_publish", client=self.client_info, message=message, is_will=False)
            message, reason_code = self.apply_publish_answer(message, answer)
        elif not broker.settings.allow_anonymous:
            reason_code = 0x87
        if reason_code >= 0x80:
            broker.metrics.publish_denied += 1
            if self.protocol_level == 4:
                # MQTT 3.1.1 has no negative PUBACK: a refused publisher is disconnected.
                self.disconnect_reason = "not_authorized"
                return _STOP
            # MQTT 3.1 publishers are acknowledged anyway (v3 encoding has no reason
            # code); MQTT 5 ones get the code (and reason string [MQTT-3.1.2-29]); QoS 0 vanishes.
            props = ({"reason_string": answer.reason_string} if isinstance(answer, Deny) and answer.reason_string
                     and self.protocol_level == 5 and self.request_problem_information else {})
            if qos == 1:
                self.send(Puback(packet.packet_id, legal_reason_code(PacketType.PUBACK, reason_code), props))
            elif qos == 2:
                self.send(Pubrec(packet.packet_id, legal_reason_code(PacketType.PUBREC, reason_code), props))
            return None
        matched = await broker.publish(message, self)
        if qos == 1:
            self.send(Puback(packet.packet_id, 0 if matched or self.protocol_level < 5 else 0x10))
        elif qos == 2:
            session.incoming_qos2.add(packet.packet_id)
            self.send(Pubrec(packet.packet_id, 0 if matched or self.protocol_level < 5 else 0x10))
        return None

    def apply_publish_answer(self, message: Message, answer: Any) -> tuple[Message, int]:
        """Turn an auth_on_publish answer into (message to route, reason code)."""
        if answer is None:
            return message, 0 if self.broker.settings.allow_anonymous else 0x87
        if isinstance(answer, Deny):
            return message, answer.reason_code
        if isinstance(answer, Allow) and answer.modifiers:
            modifiers = answer.modifiers
            unknown = set(modifiers) - PUBLISH_MODIFIERS
            if unknown:
                log.error("auth_on_publish: unknown modifiers %s", sorted(unknown))
                return message, 0x80
            changes: dict[str, Any] = {}
            try:
                if "topic" in modifiers:
                    changes["topic"] = str(modifiers["topic"])
                    validate_topic_name(changes["topic"])
                if "payload" in modifiers:
                    changes["payload"] = bytes(modifiers["payload"])
                if "qos" in modifiers:
                    changes["qos"] = int(modifiers["qos"])
                    if changes["qos"] not in (0, 1, 2):
                        raise ValueError("qos must be 0, 1 or 2")
                if "retain" in modifiers:
                    changes["retain"] = bool(modifiers["retain"])
                if "properties" in modifiers:
                    changes["properties"] = {**message.properties, **dict(modifiers["properties"])}
            except (ValueError, TypeError) as exc:
                log.error("auth_on_publish: bad modifier: %s", exc)
                return message, 0x80
            return attrs.evolve(message, **changes), 0
        return message, 0

    async def _on_puback(self, packet: Puback | Pubcomp) -> object:
        session = self.session
        assert session is not None
        if session.acknowledge(packet.packet_id) is not None and session.queue:
            await self.broker.drain(session)
        return None

    async def _on_pubrec(self, packet: Pubrec) -> object:
        session = self.session
        assert session is not None
        if packet.reason_code >= 0x80:
            # The receiver refused the message: the exchange ends here (MQTT 5 §4.3.3).
            session.acknowledge(packet.packet_id)
            if session.queue:
                await self.broker.drain(session)
            return None
        if session.received(packet.packet_id):
            self.send(Pubrel(packet.packet_id))
        else:
            self.send(Pubrel(packet.packet_id, 0x92 if self.protocol_level == 5 else 0))
        return None

    async def _on_pubrel(self, packet: Pubrel) -> object:
        session = self.session
        assert session is not None
        if packet.packet_id in session.incoming_qos2:
            session.incoming_qos2.discard(packet.packet_id)
            self.send(Pubcomp(packet.packet_id))
        else:
            self.send(Pubcomp(packet.packet_id, 0x92 if self.protocol_level == 5 else 0))
        return None

    async def _on_subscribe(self, packet: Subscribe) -> object:
        await subscriptions.handle_subscribe(self, packet)
        return None

    async def _on_unsubscribe(self, packet: Unsubscribe) -> object:
        await subscriptions.handle_unsubscribe(self, packet)
        return None

    async def _on_pingreq(self, packet: Pingreq) -> object:
        self.write(_PINGRESP)
        return None

    async def _on_disconnect(self, packet: Disconnect) -> object:
        session = self.session
        if packet.reason_code != 0x04:
            self.will = None  # a normal DISCONNECT discards the will
        expiry = packet.properties.get("session_expiry_interval")
        if expiry is not None and session is not None:
            if session.expiry_interval == 0 and expiry != 0:
                self.protocol_error(0x82, "session expiry cannot be set after a zero one")
                return _STOP
            session.expiry_interval = None if expiry == 0xFFFFFFFF else expiry
        self.disconnect_reason = "normal"
        return _STOP

    async def _on_auth(self, packet: Auth) -> object:
        if not await connect_phase.reauthenticate(self, packet):
            return _STOP
        return None

    async def _on_second_connect(self, packet: Connect) -> object:
        self.protocol_error(0x82, "second CONNECT")
        return _STOP


_PINGRESP = encode(Pingresp(), 4)
# One table for all connections (bound methods per connection would cost memory per
# idle client).
_HANDLERS = {
    Publish: Connection._on_publish,
    Puback: Connection._on_puback,
    Pubrec: Connection._on_pubrec,
    Pubrel: Connection._on_pubrel,
    Pubcomp: Connection._on_puback,
    Subscribe: Connection._on_subscribe,
    Unsubscribe: Connection._on_unsubscribe,
    Pingreq: Connection._on_pingreq,
    Disconnect: Connection._on_disconnect,
    Auth: Connection._on_auth,
    Connect: Connection._on_second_connect,
}

