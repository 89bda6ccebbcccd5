"""The CONNECT handshake: checks, enhanced auth, auth_on_register, session, CONNACK.

The order is VerneMQ's (docs/hooks.md, "When hooks fire in a client's life"): enhanced authentication
(``on_auth``), ``auth_on_register``, the will's ``auth_on_publish``, takeover of an
existing connection, session attach, ``on_register``, CONNACK, then the queue drains
and ``on_client_wakeup`` fires. What needs no await (the checks, the terms, the CONNACK's
properties) is in negotiation.py; ``handshake_now`` runs only that, for a CONNECT on which
nothing can wait (``handshake_awaits``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from ..codec import (
    FIRST_FAILURE_CODE,
    Connack,
    Connect,
    MQTTError,
    PacketType,
    ProtocolError,
    ReasonCode,
    decode_packet,
    legal_reason_code,
)
from ..routing.topics import is_broker_topic
from ..values.types import Message
from . import inbound
from .enhanced_auth import enhanced_auth
from .negotiation import Refused, apply_register_answer, check_connect, settle
from .ports import RECEIVE_SIZE

if TYPE_CHECKING:
    from ..hooks.dispatch import HookDispatcher
    from ..routing.session import Session
    from .ports import ClientConnection

# The fixed header byte of a CONNECT: anything else first is refused at its first byte.
_CONNECT_HEADER = PacketType.CONNECT << 4
log = logging.getLogger("ternmq.connect")

# How much a client may send after its CONNECT while auth_on_register runs before the
# broker stops reading (its packets wait in the framer; TCP holds back the rest).
_READ_AHEAD = 65536
_T = TypeVar("_T")

# CONNACK return code 1 (unacceptable protocol level) in the 3.1.1 form.
_CONNACK_UNSUPPORTED_LEVEL = b"\x20\x02\x00\x01"
# The accepting CONNACK of MQTT 3.1 / 3.1.1 by session present (3.1 has no such flag):
# four fixed bytes, encoded here once instead of at every CONNECT.
_CONNACK_ACCEPTED_V3 = {False: b"\x20\x02\x00\x00", True: b"\x20\x02\x00\x00"}
_CONNACK_ACCEPTED_V4 = {False: b"\x20\x02\x00\x00", True: b"\x20\x02\x01\x00"}


def parse_connect(conn: ClientConnection, data: bytes | bytearray) -> Connect | None:
    """Feed ``data`` to the framer: the CONNECT once it is whole, None until then.

    Anything but a CONNECT is refused at its first byte, without waiting for the rest.
    An unsupported protocol level gets CONNACK return code 1, then the close (MQTT 3.1.1
    [MQTT-3.1.2-2]; MQTT 5 §3.1.2.2 allows it): the client's level is unknown, so the
    3.1.1 form.
    """
    framer = conn.framer
    conn.broker.metrics.bytes_received += len(data)
    if data[0] != _CONNECT_HEADER and not framer.buffered():
        raise ProtocolError("the first packet must be CONNECT")
    if (frame := framer.feed_frame(data)) is None:
        return None
    conn.broker.packet_counts.count_received(frame[0], len(frame[1]))
    try:
        packet = decode_packet(frame[0], frame[1], 4)
    except MQTTError as exc:
        if exc.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
            conn.write(_CONNACK_UNSUPPORTED_LEVEL)
        raise
    if not isinstance(packet, Connect):
        raise ProtocolError("the first packet must be CONNECT")
    return packet


async def read_connect(conn: ClientConnection) -> Connect | None:
    """Read until the CONNECT is whole (parse_connect); None if the client closed first.

    The broker's watchdog enforces connect_timeout (conn.deadline) by stopping the
    reader; no cancel scope per connection here.
    """
    receive = conn.stream.receive_some
    while True:
        data = await receive(RECEIVE_SIZE)
        if not data:
            return None
        if (packet := parse_connect(conn, data)) is not None:
            return packet


# The hooks of the handshake: while none is implemented, handshake_now may run it
# (cluster_register: for a CONNECT without clean start, or with no cluster_claim).
_HANDSHAKE_HOOKS = frozenset({"auth_on_register", "on_register", "on_client_wakeup"})


def handshake_awaits(conn: ClientConnection, packet: Connect) -> bool:
    """Whether ``handshake(conn, packet)`` may wait for anything; False: ``handshake_now``
    does it, and the reader needs no cancel scope (see transport/connection.py).

    It may wait for a hook (auth_on_register, on_register, on_client_wakeup), enhanced
    authentication, a will (authorized as a PUBLISH), the client id's existing session
    (a takeover, a will delay, the session store) or, with no client id, one that is
    assigned (it could, in theory, name an existing session).
    """
    broker = conn.broker
    client_id = packet.client_id
    return (
        not client_id
        or client_id in broker.sessions
        or packet.will is not None
        or "authentication_method" in packet.properties
        or not _HANDSHAKE_HOOKS.isdisjoint(broker.dispatcher.implemented)
        or (broker.dispatcher.has("cluster_register") and not _claims_at_once(broker.dispatcher, packet.clean_start))
    )


def _claims_at_once(dispatcher: HookDispatcher, clean_start: bool) -> bool:
    """Whether a cluster plugin claims this CONNECT's client id without being awaited
    (``cluster_claim``: a clean start, nothing to resume)."""
    return clean_start and dispatcher.has("cluster_claim")


async def handshake(conn: ClientConnection, packet: Connect) -> bool:
    """Run the CONNECT phase; True when the client is connected and may go on."""
    broker = conn.broker
    dispatcher = broker.dispatcher
    try:
        terms = check_connect(conn, packet, broker.settings)
        props = packet.properties
        if conn.protocol_level == 5 and "authentication_method" in props:
            method = props["authentication_method"]
            auth_data = await enhanced_auth(conn, method, props.get("authentication_data"))
            terms.connack["authentication_method"] = method
            if auth_data:
                terms.connack["authentication_data"] = auth_data
        if dispatcher.has("auth_on_register"):
            ask = partial(
                dispatcher.decide,
                "auth_on_register",
                client=conn.client_info,
                password=packet.password,
                clean_start=terms.clean_start,
                properties=props,
            )
            answer = await while_connected(conn, ask)
        else:
            answer = None
        apply_register_answer(conn, terms, answer, broker.settings)
        if packet.will is not None:
            conn.will = await _authorize_will(conn, packet)
        settle(conn, packet, terms, broker.settings, retain_available=broker.retain_available)
        if _claims_at_once(dispatcher, terms.clean_start):
            dispatcher.provide_now("cluster_claim", client=conn.client_info)
        elif dispatcher.has("cluster_register"):
            taken = await dispatcher.provide("cluster_register", client=conn.client_info, clean_start=terms.clean_start)
            if taken is not None and not terms.clean_start:
                await broker.lifecycle.adopt_session(taken, broker.settings.limits)
        session, present = await broker.lifecycle.attach_session(
            conn,
            terms.client_id,
            clean_start=terms.clean_start,
            expiry_interval=terms.expiry_interval,
            username=terms.username,
            max_inflight=terms.max_inflight,
            max_queued=terms.max_queued,
        )
        conn.session = session
        if dispatcher.has("on_register"):
            await dispatcher.notify("on_register", client=conn.client_info, properties=dict(terms.connack))
    except Refused as refused:
        _refuse(conn, packet, refused)
        return False
    _accepted(conn, session, present, terms.connack)
    await broker.lifecycle.session_online(conn, session)
    return True


async def while_connected(conn: ClientConnection, call: Callable[[], Awaitable[_T]]) -> _T:
    """``await call()`` while the client's socket is read: a client that closes its
    connection meanwhile cancels the call (a webhook asked for nobody is not waited for),
    and ``trio.BrokenResourceError`` ends the handshake. What the client sends meanwhile
    is kept in the framer, up to _READ_AHEAD bytes; past that reading waits."""
    framer = conn.framer
    outcome: list[_T] = []

    async def watch(cancel_scope: trio.CancelScope) -> None:
        try:
            while framer.buffered() < _READ_AHEAD:
                data = await conn.receive_cancellable()
                if not data:
                    break
                conn.broker.metrics.bytes_received += len(data)
                framer.feed(data)
            else:
                return  # read far enough ahead: the call runs to its end
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, nursery.cancel_scope)
        outcome.append(await call())
        nursery.cancel_scope.cancel()
    if not outcome:
        raise trio.BrokenResourceError("the client left while its CONNECT was being decided")
    return outcome[0]


def handshake_now(conn: ClientConnection, packet: Connect) -> bool:
    """``handshake`` for a CONNECT that awaits nothing (not ``handshake_awaits``): the
    same steps but those that cannot happen then (no hook, no will, no enhanced auth,
    a new session). A coroutine fewer per step on the connects hot path (bench/)."""
    broker = conn.broker
    settings = broker.settings
    try:
        terms = check_connect(conn, packet, settings)
        apply_register_answer(conn, terms, None, settings)
        settle(conn, packet, terms, settings, retain_available=broker.retain_available)
    except Refused as refused:
        _refuse(conn, packet, refused)
        return False
    if _claims_at_once(broker.dispatcher, terms.clean_start):
        broker.dispatcher.provide_now("cluster_claim", client=conn.client_info)
    session = broker.lifecycle.attach_new_session(
        conn,
        terms.client_id,
        expiry_interval=terms.expiry_interval,
        username=terms.username,
        max_inflight=terms.max_inflight,
        max_queued=terms.max_queued,
    )
    conn.session = session
    _accepted(conn, session, False, terms.connack)
    return True


def _refuse(conn: ClientConnection, packet: Connect, refused: Refused) -> None:
    conn.broker.metrics.connect_refused += 1
    conn.disconnect_reason = "refused"
    log.info(
        "refused %s (%s:%d): %s (0x%02X)",
        packet.client_id or "-",
        conn.peer_host,
        conn.peer_port,
        refused,
        refused.reason_code,
    )
    if refused.answered:
        # The reason string goes out even with Request Problem Information 0: the
        # spec allows it on CONNACK, and it tells the user why.
        props = {"reason_string": refused.reason_string} if conn.protocol_level == 5 and refused.reason_string else {}
        conn.send(Connack(False, legal_reason_code(PacketType.CONNACK, refused.reason_code), props))


def _accepted(conn: ClientConnection, session: Session, session_present: bool, connack: dict[str, Any]) -> None:
    conn.connected = True
    conn.session_present = session_present
    level = conn.protocol_level
    if level == 5:
        conn.send(Connack(session_present, 0, connack))
    else:  # what encode() gives, without encoding it (tests/kernel/test_connect_path.py)
        conn.write((_CONNACK_ACCEPTED_V4 if level == 4 else _CONNACK_ACCEPTED_V3)[session_present])


async def _authorize_will(conn: ClientConnection, packet: Connect) -> Message:
    will = packet.will
    assert will is not None
    broker = conn.broker
    if is_broker_topic(will.topic):
        raise Refused(ReasonCode.NOT_AUTHORIZED, "clients may not publish to $SYS or $mount")
    if will.retain and not broker.retain_available:
        raise Refused(ReasonCode.RETAIN_NOT_SUPPORTED, "retained messages are not supported")
    message, reason_code, _ = await inbound.authorize_publish(
        conn, Message(will.topic, will.payload, will.qos, will.retain, will.properties), is_will=True
    )
    if reason_code >= FIRST_FAILURE_CODE:
        raise Refused(reason_code, "will not authorized")
    return message
