"""The shortcuts of the connect+disconnect path give what the general code gives.

The accepting CONNACK of MQTT 3.1/3.1.1 is four cached bytes (kernel/protocol/connect.py), a
close with nothing to await skips the shielded teardown (SessionLifecycle.detach_at_once),
the reader of a plain TCP client has no cancel scope until it needs one
(kernel/transport/connection.py), and the framer slices a packet that came whole out of the read
(Framer.feed_frame); bench/ says why. The end-to-end tests cover the behaviour; these pin
the shortcuts.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import (
    DEFAULT_MAX_PACKET_SIZE,
    Connack,
    Connect,
    Disconnect,
    Framer,
    PacketTooLarge,
    Pingreq,
    Pingresp,
    Publish,
    Will,
    encode,
)
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.protocol import connect
from ternmq.kernel.protocol.inbound import HANDLERS, STOP
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.transport.connection import Connection
from ternmq.kernel.transport.rawstream import ListeningSocket, RawSocketStream

from helpers import eventually


@pytest.mark.parametrize("level", [3, 4])
@pytest.mark.parametrize("session_present", [False, True])
def test_cached_connack_is_the_encoded_one(level: int, session_present: bool) -> None:
    cached = (connect._CONNACK_ACCEPTED_V4 if level == 4 else connect._CONNACK_ACCEPTED_V3)[session_present]
    assert cached == encode(Connack(session_present, 0, {}), level)


# -- the reader without a cancel scope (kernel/transport/connection.py) -------------------------------
#
# Over plain TCP the reader enters its cancel scope only before it may wait for anything
# but its socket; before that, RawSocketStream.abort_receive is its off switch. That is
# exact only if what it runs outside the scope awaits nothing: these pin it.


def _connect(client_id: str, level: int, clean_start: bool = True, **fields: Any) -> Connect:
    return Connect(
        client_id,
        level,
        clean_start,
        60,
        fields.get("username"),
        None,
        fields.get("will"),
        fields.get("properties", {}),
        "MQIsdp" if level == 3 else "MQTT",
    )


@asynccontextmanager
async def unserved_connection(broker: Broker) -> AsyncIterator[Connection]:
    """A Connection over a socket pair that nobody serves: its steps are run by hand."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    with theirs:
        async with trio.open_nursery() as nursery:
            conn = Connection(
                broker, RawSocketStream(ours), broker.config.listeners[0], "127.0.0.1", 1, nursery=nursery
            )
            try:
                yield conn
            finally:
                broker.lifecycle.detach_at_once(conn)
                ours.close()


def run_without_suspending(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that must finish without waiting for anything."""
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    return done.value.value


@pytest.mark.parametrize("level", [3, 4, 5])
@pytest.mark.parametrize("clean_start", [True, False])
async def test_a_handshake_that_awaits_nothing_returns_in_one_step(
    broker: Broker, level: int, clean_start: bool
) -> None:
    async with unserved_connection(broker) as conn:
        packet = _connect(f"one-step-{level}-{clean_start}", level, clean_start)
        assert not connect.handshake_awaits(conn, packet)
        assert run_without_suspending(connect.handshake(conn, packet)) is True
        assert conn.connected and conn.session is not None
        assert conn.client_info.client_id == packet.client_id


@pytest.mark.parametrize("level", [3, 4, 5])
async def test_the_disconnect_handler_awaits_nothing(broker: Broker, level: int) -> None:
    async with unserved_connection(broker) as conn:
        run_without_suspending(connect.handshake(conn, _connect("leaving", level)))
        packet = Disconnect(0, {"session_expiry_interval": 0}) if level == 5 else Disconnect()
        assert run_without_suspending(HANDLERS[Disconnect](conn, packet)) is STOP
        assert conn.disconnect_reason == "normal"


# handshake_now (kernel/protocol/connect.py) is handshake without the steps that cannot happen
# when handshake_awaits says no: both must answer a CONNECT alike, accepted or refused.
# name: (broker settings, CONNECT, accepted)
_CASES: dict[str, tuple[dict[str, Any], Connect, bool]] = {
    "3.1 clean": ({}, _connect("case", 3), True),
    "3.1.1 clean": ({}, _connect("case", 4), True),
    "3.1.1 persistent": ({}, _connect("case", 4, clean_start=False), True),
    "5 with properties": (
        {},
        _connect(
            "case",
            5,
            properties={
                "session_expiry_interval": 100,
                "receive_maximum": 10,
                "topic_alias_maximum": 5,
                "request_response_information": 1,
            },
        ),
        True,
    ),
    "5 expiry above the cap": (
        {"max_session_expiry": 50},
        _connect("case", 5, properties={"session_expiry_interval": 0xFFFFFFFF}),
        True,
    ),
    "5 keep-alive above the maximum": ({"max_keep_alive": 30}, _connect("case", 5), True),
    "3.1.1 keep-alive above the maximum": ({"max_keep_alive": 30}, _connect("case", 4), False),
    "client id too long": ({"max_client_id_length": 3}, _connect("case", 5), False),
    "CONNACK too large": ({}, _connect("case", 5, properties={"maximum_packet_size": 8}), False),
    "5 not anonymous": ({"allow_anonymous": False}, _connect("case", 5), False),
    "3.1.1 not anonymous": ({"allow_anonymous": False}, _connect("case", 4), False),
}


def _outcome(conn: Connection) -> dict[str, Any]:
    session = conn.session
    return {
        "sent": b"".join(conn._out),
        "connected": conn.connected,
        "session_present": conn.session_present,
        "disconnect_reason": conn.disconnect_reason,
        "client_info": conn.client_info,
        "keep_alive": conn.keep_alive,
        "session": None
        if session is None
        else (
            session.client_id,
            session.username,
            session.protocol_level,
            session.expiry_interval,
            session.max_inflight,
            session.max_queued,
            session.connection is conn,
            conn.broker.sessions.get(session.client_id) is session,
        ),
    }


def _forget(broker: Broker, client_id: str) -> None:
    """End a session left behind, so that the next CONNECT of ``client_id`` finds none."""
    session = broker.sessions.get(client_id)
    if session is not None:
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
        broker.lifecycle.forget_session(session)


@pytest.mark.parametrize("case", list(_CASES))
async def test_handshake_now_answers_as_handshake_does(broker_factory: Any, case: str) -> None:
    settings, packet, accepted = _CASES[case]
    async with broker_factory(**settings) as broker:
        outcomes = []
        for run in (connect.handshake, connect.handshake_now):
            async with unserved_connection(broker) as conn:
                assert not connect.handshake_awaits(conn, packet)
                refused_before = broker.metrics.connect_refused
                if run is connect.handshake:
                    result = run_without_suspending(connect.handshake(conn, packet))
                else:
                    result = connect.handshake_now(conn, packet)
                outcomes.append((result, broker.metrics.connect_refused - refused_before, _outcome(conn)))
            _forget(broker, "case")
        assert outcomes[0] == outcomes[1]
        assert outcomes[0][0] is accepted


class _Hooked:
    def __init__(self, hook: str) -> None:
        async def implementation(**kwargs: Any) -> None:
            return None

        setattr(self, hook, hookimpl(implementation))


@pytest.mark.parametrize("hook", ["auth_on_register", "on_register", "on_client_wakeup"])
async def test_a_hook_on_the_way_makes_the_handshake_one_that_awaits(broker: Broker, hook: str) -> None:
    async with unserved_connection(broker) as conn, registered(broker, _Hooked(hook)):
        assert connect.handshake_awaits(conn, _connect("hooked", 4))


async def test_a_will_an_existing_session_an_assigned_id_or_enhanced_auth_await(broker: Broker) -> None:
    async with unserved_connection(broker) as first, unserved_connection(broker) as second:
        run_without_suspending(connect.handshake(first, _connect("taken", 4)))
        assert connect.handshake_awaits(second, _connect("taken", 4))  # a takeover
        assert connect.handshake_awaits(second, _connect("", 4))
        assert connect.handshake_awaits(second, _connect("w", 4, will=Will("t", b"x", 0, False, {})))
        assert connect.handshake_awaits(second, _connect("a", 5, properties={"authentication_method": "m"}))
        assert not connect.handshake_awaits(second, _connect("free", 4))


def _served(broker: Broker, client_id: str) -> Connection:
    (conn,) = [c for c in broker.connections if c.client_info.client_id == client_id]
    return conn


@pytest.mark.parametrize("level", [4, 5])
async def test_a_connected_client_is_read_without_a_cancel_scope_until_it_needs_one(broker: Broker, level: int) -> None:
    async with MQTTTestClient.open(broker.port(), level) as client:
        await client.connect("lean")
        conn = await eventually(lambda: _served(broker, "lean"))
        assert conn._read_scope is None
        await client.subscribe("lean/#")  # any packet but DISCONNECT: the reader enters its scope
        assert conn._read_scope is not None


@pytest.mark.parametrize("level", [4, 5])
async def test_a_kick_stops_a_reader_without_a_cancel_scope(broker: Broker, level: int) -> None:
    async with MQTTTestClient.open(broker.port(), level) as client:
        await client.connect("kicked")
        conn = await eventually(lambda: _served(broker, "kicked"))
        assert conn._read_scope is None
        conn.kick(0x98, "admin")
        disconnect = await client.closed()
        if level == 5:
            assert disconnect is not None and disconnect.reason_code == 0x98
        with trio.fail_after(5):
            await conn.closed.wait()
        assert conn.disconnect_reason == "admin"
        assert "kicked" not in broker.sessions


async def test_a_client_that_sends_more_with_its_connect_is_read_in_the_scope(broker: Broker) -> None:
    async with MQTTTestClient.open(broker.port(), 4) as client:
        await client.send_raw(encode(_connect("eager", 4), 4) + encode(Pingreq(), 4))
        assert isinstance(await client.next_packet(), Connack)
        assert isinstance(await client.next_packet(), Pingresp)
        assert _served(broker, "eager")._read_scope is not None


async def test_closed_is_set_whether_asked_for_before_or_after_the_close(broker: Broker) -> None:
    async with MQTTTestClient.open(broker.port(), 4) as client:
        await client.connect("early")
        early = await eventually(lambda: _served(broker, "early"))
        waiting = early.closed
        async with MQTTTestClient.open(broker.port(), 4) as other:
            await other.connect("late")
            late = await eventually(lambda: _served(broker, "late"))
            await other.disconnect()
            await eventually(lambda: late not in broker.connections)
        await client.disconnect()
        with trio.fail_after(5):
            await waiting.wait()
        assert late.closed.is_set()


@pytest.mark.parametrize("seed", range(20))
def test_feed_frame_is_feed_then_next_frame(seed: int) -> None:
    rng = random.Random(seed)
    packets = [
        encode(_connect("c" * rng.randrange(0, 300), 4), 4),
        encode(Disconnect(), 4),
        encode(Pingreq(), 4),
        encode(Publish("t", rng.randbytes(rng.randrange(0, 400)), 0, False, False, None, {}), 4),
    ]
    stream = b"".join(rng.choice(packets) for _ in range(10))
    max_size = rng.choice([DEFAULT_MAX_PACKET_SIZE, 150])
    lean, plain = Framer(max_size), Framer(max_size)
    pos = 0
    while pos < len(stream):
        chunk = stream[pos : pos + rng.randrange(1, 200)]
        pos += len(chunk)
        expected: list[Any] = []
        got: list[Any] = []
        for framer, out in ((plain, expected), (lean, got)):
            try:
                if framer is plain:
                    framer.feed(chunk)
                    frame = framer.next_frame()
                else:
                    frame = framer.feed_frame(chunk)
                out.append(frame)
                while frame is not None:
                    frame = framer.next_frame()
                    out.append(frame)
            except PacketTooLarge:
                out.append("too large")
        assert got == expected
        if "too large" in got:
            break


def test_a_listening_socket_accepts_as_the_standard_library_does() -> None:
    with socket.create_server(("127.0.0.1", 0)) as plain:
        listening = ListeningSocket(plain.detach())
        with listening, socket.create_connection(listening.getsockname()) as client:
            accepted, address = listening.accept()
            with accepted:
                assert address == client.getsockname()
                assert (accepted.family, accepted.type) == (socket.AF_INET, socket.SOCK_STREAM)
                assert isinstance(accepted.family, socket.AddressFamily)
                client.sendall(b"x")
                assert accepted.recv(1) == b"x"
