"""Slow consumers and overload: a subscriber that stops reading is held within its
limits while the others keep their pace; CONNECTs beyond a listener's max_connections
are refused cleanly; a publisher over max_message_rate is slowed, not cut off; the
management API answers throughout."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.lowlevel

from ternmq.kernel.codec import Connack
from ternmq.kernel.testing import MQTTTestClient, open_broker, test_config
from ternmq.kernel.values.config import ListenerConfig

from helpers import connected, eventually

pytestmark = pytest.mark.usefixtures("no_tracebacks")

PAYLOAD = b"x" * 4096


def shrink_receive_buffer(client: MQTTTestClient) -> None:
    """Make a client's socket hold little, so that a client that stops reading fills up."""
    client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # type: ignore[attr-defined]


async def read_all(client: MQTTTestClient, count: int, got: list[bytes]) -> None:
    for _ in range(count):
        got.append((await client.receive(10)).payload)


async def test_a_qos0_subscriber_that_stops_reading_is_held_to_its_buffer(tmp_path: Path) -> None:
    limit = 256 * 1024
    async with (
        open_broker(test_config(outbound_buffer_bytes=limit)) as broker,
        connected(broker, "slow", 5) as slow,
        connected(broker, "fast", 5) as fast,
    ):
        shrink_receive_buffer(slow)
        await slow.subscribe("flood", qos=0)
        await fast.subscribe("flood", qos=0)
        count, got = 3000, []  # 12 MB: far more than the slow one's socket and buffer hold
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all, fast, count, got)
            for _ in range(count):
                await broker.service.publish("flood", PAYLOAD, qos=0)
                await trio.lowlevel.checkpoint()  # the fast reader's turn
        assert len(got) == count  # the fast subscriber kept its pace: every message
        connection = broker.sessions["slow"].connection
        assert connection is not None  # still connected, not cut off
        assert connection.outbound_bytes <= limit + len(PAYLOAD) + 64  # bounded: one message past the limit
        assert broker.router.drops > 0  # the rest dropped and counted (on_message_drop: slow_consumer)


async def test_a_qos1_subscriber_that_stops_acknowledging_stays_in_its_window_and_queue() -> None:
    async with (
        open_broker(test_config(max_inflight=8, max_queued_messages=100)) as broker,
        connected(broker, "stalled", 5, auto_ack=False) as stalled,
        connected(broker, "keeps-up", 5) as keeps_up,
    ):
        await stalled.subscribe("q", qos=1)
        await keeps_up.subscribe("q", qos=1)
        count, got = 500, []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all, keeps_up, count, got)
            for _ in range(count):
                await broker.service.publish("q", b"m", qos=1)
                await trio.lowlevel.checkpoint()
        assert len(got) == count
        session = broker.sessions["stalled"]
        assert len(session.inflight) == 8 and len(session.queue) == 100  # its limits, no more
        assert broker.router.drops == count - 108


async def test_connects_beyond_max_connections_are_refused_while_the_api_answers(tmp_path: Path) -> None:
    api = {"port": 0, "keys_file": str(tmp_path / "keys.json"), "apps_file": str(tmp_path / "apps.json")}
    config = test_config(plugins={"api": api}, listeners=(ListenerConfig(name="small", port=0, max_connections=5),))
    async with open_broker(config) as broker:
        port = broker.plugins.loaded["api"].plugin.port
        answers: list[Any] = []
        health: list[int] = []

        async def one(index: int) -> None:
            async with MQTTTestClient.open(broker.port(), 5 if index % 2 else 4) as client:
                answers.append(await client.connect(f"c{index}"))
                await trio.sleep(1)  # holding its place (or not) while the others come

        async def ask_health() -> None:
            async with httpx.AsyncClient(timeout=5) as http:
                for _ in range(5):
                    health.append((await http.get(f"http://127.0.0.1:{port}/health")).status_code)
                    await trio.sleep(0.1)

        async with trio.open_nursery() as nursery:
            for index in range(40):
                nursery.start_soon(one, index)
            nursery.start_soon(ask_health)
        accepted = [a for a in answers if isinstance(a, Connack) and a.reason_code == 0]
        refused = [a for a in answers if not (isinstance(a, Connack) and a.reason_code == 0)]
        assert len(accepted) == 5 and len(refused) == 35
        # MQTT 5: 0x89 server busy; MQTT 3.1.1's CONNACK says 3, server unavailable (read as 0x88)
        assert all(a is None or isinstance(a, Connack) and a.reason_code in (0x88, 0x89) for a in refused), refused
        assert health == [200] * 5  # the API answered all along


async def test_a_publisher_over_max_message_rate_is_slowed_not_cut_off(tmp_path: Path) -> None:
    api = {"port": 0, "keys_file": str(tmp_path / "keys.json"), "apps_file": str(tmp_path / "apps.json")}
    async with (
        open_broker(test_config(plugins={"api": api}, max_message_rate=100)) as broker,
        connected(broker, "reader", 5) as reader,
        connected(broker, "flooder", 5) as flooder,
        connected(broker, "calm", 5) as calm,
    ):
        await reader.subscribe("rate/#", qos=0)
        port = broker.plugins.loaded["api"].plugin.port
        started = trio.current_time()
        for index in range(300):  # 3 s of messages at the limit, sent at once
            await flooder.publish("rate/flood", str(index).encode())
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all, reader, 301, got)
            await trio.sleep(0.2)
            await calm.publish("rate/calm", b"me too")  # another client is not held up
            async with httpx.AsyncClient(timeout=5) as http:
                assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        assert got.index(b"me too") < 250  # it came through while the flood was held back
        assert [p for p in got if p != b"me too"] == [str(i).encode() for i in range(300)]  # all, in order
        assert trio.current_time() - started >= 1.5  # held to about 100 a second
        assert broker.metrics.publish_throttled > 0
        await eventually(lambda: broker.sessions["flooder"].connection is not None)


async def test_a_throttled_publisher_is_not_taken_for_a_silent_one() -> None:
    async with (
        open_broker(test_config(max_message_rate=10)) as broker,
        connected(broker, "reader", 5) as reader,
        connected(broker, "short-keep-alive", 5, keep_alive=1) as flooder,
    ):
        await reader.subscribe("k", qos=0)
        for _ in range(30):  # 3 s of reading at the limit; its keep-alive allows 1.5 s of silence
            await flooder.publish("k", b".")
        got: list[bytes] = []
        await read_all(reader, 30, got)
        assert len(got) == 30 and broker.sessions["short-keep-alive"].connection is not None


async def test_a_kick_ends_a_throttled_wait_at_once() -> None:
    async with (
        open_broker(test_config(max_message_rate=0.1)) as broker,
        connected(broker, "reader", 5) as reader,
        connected(broker, "slowed", 5) as slowed,
    ):
        await reader.subscribe("w", qos=0)
        for _ in range(5):  # the first goes at once, the next waits 10 s
            await slowed.publish("w", b".")
        assert (await reader.receive()).payload == b"."
        await eventually(lambda: broker.metrics.publish_throttled > 0)
        started = trio.current_time()
        assert broker.service.disconnect("slowed")
        disconnect = await slowed.closed()
        assert trio.current_time() - started < 1  # not after the wait, nor the flush grace
        assert disconnect.reason_code == 0x98  # the kick's reason, not a keep-alive timeout
        assert await reader.nothing_received()  # what it held back was not routed


async def test_a_rate_set_at_run_time_reaches_the_clients_already_connected() -> None:
    async with (
        open_broker() as broker,
        connected(broker, "reader", 5) as reader,
        connected(broker, "early", 5) as early,
    ):
        await reader.subscribe("r", qos=0)
        await broker.service.run_command(["set", "max_message_rate=0.1"])
        for _ in range(3):  # the first goes at once, the others wait 10 s each
            await early.publish("r", b".")
        assert (await reader.receive()).payload == b"."
        assert await reader.nothing_received(0.5)
        await broker.service.run_command(["set", "max_message_rate=0"])  # no limit from now on
        await early.publish("r", b"free")
        assert broker.sessions["early"].connection.throttle is None  # type: ignore[union-attr]
