"""What the broker does with each packet a connected client sends.

Handlers are functions of (connection, packet); one returning ``STOP`` closes the
connection. PUBLISH is the hot path: no hook dispatch happens unless a plugin
implements the hook, and the acknowledgement is queued only after routing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import attrs
import trio

from ..codec import (
    FIRST_FAILURE_CODE,
    Auth,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Subscribe,
    Unsubscribe,
    encode,
    legal_reason_code,
)
from ..routing.router import NOT_STORED
from ..routing.topics import TopicError, is_broker_topic, validate_topic_name
from ..values.types import Allow, Answer, Deny, Message
from . import subscriptions
from .enhanced_auth import reauthenticate

if TYPE_CHECKING:
    from ..routing.session import Session
    from .ports import ClientConnection

log = logging.getLogger("ternmq.inbound")

STOP = object()  # a handler's way of saying "close this connection now"
PUBLISH_MODIFIERS = frozenset({"topic", "payload", "qos", "retain", "properties"})
PINGRESP = encode(Pingresp(), 4)
# Reading an enum class's attribute is slow on Python 3.11 (EnumType has __getattr__,
# ~50 ns): the per-PUBLISH path reads this module global instead.
_SUCCESS = ReasonCode.SUCCESS


async def on_publish(conn: ClientConnection, packet: Publish) -> object:
    broker = conn.broker
    broker.metrics.publish_received += 1
    if (throttle := conn.throttle) is not None and (delay := throttle.delay()) > 0:
        broker.metrics.publish_throttled += 1
        conn.deadline += delay  # the keep-alive counts from the reads after the wait
        # Cancelled when the connection is stopped (kicked, taken over, shut down): the
        # PUBLISH it held back is not routed then.
        with trio.CancelScope() as waiting:
            conn.throttle_wait = waiting
            await trio.sleep(delay)
        conn.throttle_wait = None
        if waiting.cancelled_caught:
            return STOP
    session = conn.session
    assert session is not None
    qos = packet.qos
    properties = packet.properties
    topic = packet.topic
    if conn.protocol_level == 5 and properties:
        alias = properties.get("topic_alias")
        if alias is not None:
            if alias == 0 or alias > conn.max_topic_alias:
                conn.protocol_error(ReasonCode.TOPIC_ALIAS_INVALID, "topic alias out of range")
                return STOP
            if topic:
                conn.in_aliases[alias] = topic
            else:
                topic = conn.in_aliases.get(alias, "")
                if not topic:
                    conn.protocol_error(ReasonCode.PROTOCOL_ERROR, "unknown topic alias")
                    return STOP
            properties = {k: v for k, v in properties.items() if k != "topic_alias"}
    try:
        validate_topic_name(topic, broker.settings.limits.max_topic_levels)
    except TopicError as exc:
        conn.protocol_error(exc.reason_code if topic else ReasonCode.PROTOCOL_ERROR, str(exc))
        return STOP
    if qos == 2:
        packet_id = packet.packet_id
        if packet_id in session.incoming_qos2:
            conn.send(Pubrec(packet_id))  # a resend (DUP): acknowledged, not routed again
            return None
        if len(session.incoming_qos2) >= conn.server_receive_maximum:
            conn.protocol_error(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
            return STOP
    if is_broker_topic(topic):
        # $SYS and $mount belong to the broker: MQTT 5 publishers are told "not authorized"; MQTT 3
        # ones, which have no negative acknowledgement, are acknowledged and ignored.
        broker.metrics.publish_denied += 1
        if packet.packet_id is not None:
            _acknowledge(
                conn,
                session,
                qos,
                packet.packet_id,
                ReasonCode.NOT_AUTHORIZED if conn.protocol_level == 5 else ReasonCode.SUCCESS,
                "clients may not publish to $SYS or $mount",
            )
        return None
    if packet.retain and not broker.retain_available:
        conn.protocol_error(ReasonCode.RETAIN_NOT_SUPPORTED, "retained messages are not supported")
        return STOP
    message, reason_code, answer = await authorize_publish(
        conn, Message(topic, packet.payload, qos, packet.retain, properties), is_will=False
    )
    packet_id = packet.packet_id  # None at QoS 0 (the decoder refuses QoS > 0 without one)
    if reason_code < FIRST_FAILURE_CODE:
        if packet_id is None:
            await broker.publisher.publish(message, conn)
        else:
            # A stored session's QoS 2 exchange is saved before routing, so it is in the
            # same commit as the copies the PUBREC waits for: a PUBLISH resent after a
            # crash is then known, and not routed twice.
            entry_id = 0
            if qos == 2 and (journal := session.journal) is not None:
                entry_id = journal.received(session.client_id, packet_id)

            # Acknowledged once the subscribers are known and before any gets a copy: a
            # publisher subscribed to its own topic sees its PUBACK/PUBREC first (after
            # them when a store keeps the message: Router.route).
            def acknowledge(matched: int) -> None:
                if matched == NOT_STORED:
                    _not_stored(conn, session, qos, packet_id, entry_id)
                    return
                # In a cluster, subscribers on other nodes are not known here: no 0x10 then.
                code = (
                    _SUCCESS
                    if matched or conn.protocol_level < 5 or "cluster_forward" in broker.dispatcher.implemented
                    else ReasonCode.NO_MATCHING_SUBSCRIBERS
                )
                _acknowledge(conn, session, qos, packet_id, code, entry_id=entry_id)

            await broker.publisher.publish(message, conn, on_matched=acknowledge)
        return None
    broker.metrics.publish_denied += 1
    if conn.protocol_level == 4:
        # MQTT 3.1.1 has no negative PUBACK: a refused publisher is disconnected.
        conn.disconnect_reason = "not_authorized"
        return STOP
    # MQTT 3.1 publishers are acknowledged anyway (v3 encoding has no reason code); MQTT 5
    # ones get the code (and reason string [MQTT-3.1.2-29]); QoS 0 vanishes.
    if packet_id is not None:
        reason = answer.reason_string if isinstance(answer, Deny) else None
        _acknowledge(conn, session, qos, packet_id, reason_code, reason)
    return None


def _acknowledge(
    conn: ClientConnection,
    session: Session,
    qos: int,
    packet_id: int,
    reason_code: int,
    reason_string: str | None = None,
    *,
    entry_id: int = 0,
) -> None:
    """PUBACK (QoS 1) or PUBREC (QoS 2) for a client's PUBLISH (``entry_id``: the
    journal's entry of a QoS 2 one)."""
    props = conn.problem_information(reason_string)
    if qos == 1:
        conn.send(Puback(packet_id, legal_reason_code(PacketType.PUBACK, reason_code), props))
        return
    if reason_code < FIRST_FAILURE_CODE:
        session.incoming_qos2[packet_id] = entry_id
    conn.send(Pubrec(packet_id, legal_reason_code(PacketType.PUBREC, reason_code), props))


def _not_stored(conn: ClientConnection, session: Session, qos: int, packet_id: int, entry_id: int) -> None:
    """The store failed to write a message the broker keeps for a stored session: it is
    not acknowledged as written. MQTT 5 publishers get 0x80 in PUBACK/PUBREC; MQTT 3 ones,
    which have no negative acknowledgement, are disconnected without one (they send it
    again when they reconnect: at least once, never a false "written")."""
    conn.broker.metrics.publish_not_stored += 1
    session.forget_entry(entry_id)
    if conn.protocol_level == 5:
        _acknowledge(conn, session, qos, packet_id, ReasonCode.UNSPECIFIED_ERROR, "the message could not be stored")
    else:
        conn.kick(ReasonCode.UNSPECIFIED_ERROR, "store_failed")


async def authorize_publish(
    conn: ClientConnection, message: Message, *, is_will: bool
) -> tuple[Message, int, Answer | None]:
    """Ask auth_on_publish (if anybody implements it): (message to route, reason code, answer)."""
    dispatcher = conn.broker.dispatcher
    answer = None
    if dispatcher.has("auth_on_publish"):
        answer = await dispatcher.decide("auth_on_publish", client=conn.client_info, message=message, is_will=is_will)
    message, reason_code = apply_publish_answer(conn.broker.settings.no_match, message, answer)
    return message, reason_code, answer


def apply_publish_answer(no_match: str, message: Message, answer: Answer | None) -> tuple[Message, int]:
    """Turn an auth_on_publish answer into (message to route, reason code); ``no_match``
    is the broker's setting, for no answer."""
    if answer is None:
        return message, _SUCCESS if no_match == "allow" else ReasonCode.NOT_AUTHORIZED
    if isinstance(answer, Deny):
        return message, answer.reason_code
    if isinstance(answer, Allow) and answer.modifiers:
        modifiers = answer.modifiers
        unknown = set(modifiers) - PUBLISH_MODIFIERS
        if unknown:
            log.error("auth_on_publish: unknown modifiers %s", sorted(unknown))
            return message, ReasonCode.UNSPECIFIED_ERROR
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
            return message, ReasonCode.UNSPECIFIED_ERROR
        return attrs.evolve(message, **changes), _SUCCESS
    return message, _SUCCESS


async def on_puback(conn: ClientConnection, packet: Puback) -> object:
    return await _settled(conn, packet.packet_id, 1)


async def on_pubcomp(conn: ClientConnection, packet: Pubcomp) -> object:
    return await _settled(conn, packet.packet_id, 2)


async def _settled(conn: ClientConnection, packet_id: int, qos: int) -> object:
    session = conn.session
    assert session is not None
    if session.acknowledge(packet_id, qos) is not None and session.queue:
        await conn.broker.lifecycle.drain(session)
    return None


async def on_pubrec(conn: ClientConnection, packet: Pubrec) -> object:
    session = conn.session
    assert session is not None
    # A refusing PUBREC ends the exchange (MQTT 5 §4.3.3): no PUBREL, room in the window.
    refused = packet.reason_code >= FIRST_FAILURE_CODE
    known = session.received(packet.packet_id, refused)
    if refused:
        if known and session.queue:
            await conn.broker.lifecycle.drain(session)
    elif known:
        conn.send(Pubrel(packet.packet_id))
    else:
        conn.send(Pubrel(packet.packet_id, _not_found(conn)))
    return None


def _not_found(conn: ClientConnection) -> ReasonCode:
    """PUBREL/PUBCOMP for an unknown packet id: "not found" (v3 has no reason code)."""
    return ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if conn.protocol_level == 5 else ReasonCode.SUCCESS


async def on_pubrel(conn: ClientConnection, packet: Pubrel) -> object:
    session = conn.session
    assert session is not None
    packet_id = packet.packet_id
    if packet_id in session.incoming_qos2:
        entry_id = session.incoming_qos2.pop(packet_id)
        session.forget_entry(entry_id)
        conn.send(Pubcomp(packet_id))
    elif conn.session_present:
        # The PUBCOMP of an earlier connection may not have arrived: the client resends
        # its PUBREL after reconnecting [MQTT-4.3.3], and gets "not found" from us.
        conn.send(Pubcomp(packet_id, _not_found(conn)))
    else:
        conn.protocol_error(ReasonCode.PROTOCOL_ERROR, f"PUBREL for packet {packet_id}, which awaits no release")
        return STOP
    return None


async def on_subscribe(conn: ClientConnection, packet: Subscribe) -> object:
    await subscriptions.handle_subscribe(conn, packet)
    return None


async def on_unsubscribe(conn: ClientConnection, packet: Unsubscribe) -> object:
    await subscriptions.handle_unsubscribe(conn, packet)
    return None


async def on_pingreq(conn: ClientConnection, packet: Pingreq) -> object:
    conn.write(PINGRESP)
    return None


async def on_disconnect(conn: ClientConnection, packet: Disconnect) -> object:
    session = conn.session
    if packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
        conn.will = None  # a normal DISCONNECT discards the will
    expiry = packet.properties.get("session_expiry_interval")
    if expiry is not None and session is not None:
        if session.expiry_interval == 0 and expiry != 0:
            conn.protocol_error(ReasonCode.PROTOCOL_ERROR, "session expiry cannot be set after a zero one")
            return STOP
        session.expiry_interval = None if expiry == 0xFFFFFFFF else expiry
    conn.disconnect_reason = "normal"
    return STOP


async def on_auth(conn: ClientConnection, packet: Auth) -> object:
    if not await reauthenticate(conn, packet):
        return STOP
    return None


async def on_second_connect(conn: ClientConnection, packet: Connect) -> object:
    conn.protocol_error(ReasonCode.PROTOCOL_ERROR, "second CONNECT")
    return STOP


# A handler takes a connection and a packet of the type it is registered under.
Handler = Callable[["ClientConnection", Packet], Awaitable[object]]
_P = TypeVar("_P", bound=Packet)


def _handles(packet_type: type[_P], handler: Callable[[ClientConnection, _P], Awaitable[object]]) -> Handler:
    """``handler`` as an entry of HANDLERS under ``packet_type``: mypy checks here that it
    takes that type; the table gives each handler only packets of its key's type, so
    the cast to the table's wider type is safe."""
    return cast(Handler, handler)


# One table for all connections (bound methods per connection would cost memory per
# idle client).
HANDLERS: Mapping[type[Packet], Handler] = {
    Publish: _handles(Publish, on_publish),
    Puback: _handles(Puback, on_puback),
    Pubrec: _handles(Pubrec, on_pubrec),
    Pubrel: _handles(Pubrel, on_pubrel),
    Pubcomp: _handles(Pubcomp, on_pubcomp),
    Subscribe: _handles(Subscribe, on_subscribe),
    Unsubscribe: _handles(Unsubscribe, on_unsubscribe),
    Pingreq: _handles(Pingreq, on_pingreq),
    Disconnect: _handles(Disconnect, on_disconnect),
    Auth: _handles(Auth, on_auth),
    Connect: _handles(Connect, on_second_connect),
}
