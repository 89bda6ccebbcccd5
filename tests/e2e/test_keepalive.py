"""Keep-alive: silent clients are closed after 1.5 × keep-alive; server keep-alive maximum."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Disconnect, Pingresp, Will
from ternmq.kernel.testing import MQTTTestClient

from helpers import LEVELS, PAHO


async def closed_after(c: MQTTTestClient, timeout: float = 4.0) -> tuple[float, Any]:
    """Seconds until the broker closes ``c``, and the DISCONNECT it sent (or None)."""
    start = trio.current_time()
    disconnect = await c.closed(timeout)
    return trio.current_time() - start, disconnect


@pytest.mark.parametrize("level", LEVELS)
async def test_silent_client_is_closed_after_one_and_a_half_keep_alive(broker: Broker, level: int) -> None:
    async with MQTTTestClient.open(broker.port(), level) as c:
        connack = await c.connect("silent", keep_alive=1)
        assert connack.reason_code == 0
        elapsed, disconnect = await closed_after(c)
        assert 1.4 <= elapsed <= 2.5, elapsed
        if level == 5:
            assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x8D
        else:
            assert disconnect is None  # MQTT 3.1.1 has no server DISCONNECT: just closed


@pytest.mark.parametrize("level", LEVELS)
async def test_client_sending_pingreq_stays_connected(broker: Broker, level: int) -> None:
    async with MQTTTestClient.open(broker.port(), level) as c:
        await c.connect("pinger", keep_alive=1)
        for _ in range(4):  # 2 s, past 1.5 × keep-alive
            await trio.sleep(0.5)
            await c.ping()
            assert isinstance(await c.next_packet(1), Pingresp)
        suback = await c.subscribe("still/here", qos=1)
        assert suback.reason_codes == [1]


async def test_any_packet_counts_as_activity(broker: Broker) -> None:
    async with MQTTTestClient.open(broker.port(), 5) as c:
        await c.connect("busy", keep_alive=1)
        for n in range(4):
            await trio.sleep(0.5)
            await c.publish(f"busy/{n}", b"x", qos=1)  # no PINGREQ, only PUBLISH
        assert await c.nothing_received(0.2)


@pytest.mark.parametrize("protocol", PAHO)
async def test_paho_client_with_one_second_keep_alive_stays_connected(
    broker: Broker, paho_client: Any, protocol: int
) -> None:
    c = paho_client("paho-ka", protocol)
    await c.connect(broker.port(), keepalive=1)
    await trio.sleep(2.0)
    assert not c.disconnected.is_set(), f"paho was disconnected: {c.disconnect_reason}"
    await c.subscribe("paho/ka", qos=1)
    await c.publish("paho/ka", b"alive", qos=1)
    assert (await c.receive()).payload == b"alive"
    await c.disconnect()


async def test_keep_alive_timeout_publishes_the_will(broker: Broker) -> None:
    async with MQTTTestClient.open(broker.port(), 5) as w:
        await w.connect("watcher")
        await w.subscribe("ka/will", qos=1)
        async with MQTTTestClient.open(broker.port(), 4) as c:
            await c.connect("silent", keep_alive=1, will=Will("ka/will", b"timed out", 1))
            await c.closed(4)
            message = await w.receive(timeout=1)
            assert message.payload == b"timed out"


# -- server keep-alive maximum --------------------------------------------------------------


async def test_v5_keep_alive_above_the_maximum_gets_server_keep_alive(broker_factory: Any) -> None:
    async with broker_factory(max_keep_alive=5) as broker:
        async with MQTTTestClient.open(broker.port(), 5) as c:
            connack = await c.connect("asks-60", keep_alive=60)
            assert connack.reason_code == 0
            assert connack.properties.get("server_keep_alive") == 5


async def test_v5_keep_alive_zero_gets_the_maximum_when_one_is_set(broker_factory: Any) -> None:
    async with broker_factory(max_keep_alive=5) as broker:
        async with MQTTTestClient.open(broker.port(), 5) as c:
            connack = await c.connect("asks-0", keep_alive=0)
            assert connack.reason_code == 0
            assert connack.properties.get("server_keep_alive") == 5


async def test_v5_keep_alive_within_the_maximum_is_kept_as_asked(broker_factory: Any) -> None:
    async with broker_factory(max_keep_alive=5) as broker:
        async with MQTTTestClient.open(broker.port(), 5) as c:
            connack = await c.connect("asks-3", keep_alive=3)
            assert connack.reason_code == 0
            assert "server_keep_alive" not in connack.properties


async def test_server_keep_alive_is_the_one_enforced(broker_factory: Any) -> None:
    async with broker_factory(max_keep_alive=1) as broker:
        async with MQTTTestClient.open(broker.port(), 5) as c:
            connack = await c.connect("asks-60", keep_alive=60)
            assert connack.properties.get("server_keep_alive") == 1
            elapsed, disconnect = await closed_after(c)
            assert 1.4 <= elapsed <= 2.5, elapsed
            assert disconnect is not None and disconnect.reason_code == 0x8D


async def test_paho_v5_sees_server_keep_alive(broker_factory: Any, paho_client: Any) -> None:
    async with broker_factory(max_keep_alive=5) as broker:
        c = paho_client("paho-ska", paho.MQTTv5)
        _, reason, properties = await c.connect(broker.port(), keepalive=60)
        assert reason == 0
        assert properties.ServerKeepAlive == 5
        await c.disconnect()


async def test_v311_keep_alive_above_the_maximum_is_refused_with_identifier_rejected(broker_factory: Any) -> None:
    async with broker_factory(max_keep_alive=5) as broker:
        async with MQTTTestClient.open(broker.port(), 4) as c:
            await c.send_raw(CONNECT_V311_KEEP_ALIVE_60)
            data = await c.stream.receive_some(16)
            assert data == bytes([0x20, 0x02, 0x00, 0x02])  # CONNACK, return code 2
            assert await c.closed() is None


async def test_v311_keep_alive_within_the_maximum_is_accepted(broker_factory: Any) -> None:
    async with broker_factory(max_keep_alive=5) as broker:
        async with MQTTTestClient.open(broker.port(), 4) as c:
            connack = await c.connect("asks-5", keep_alive=5)
            assert connack.reason_code == 0


# CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client id "ka"
CONNECT_V311_KEEP_ALIVE_60 = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 2]) + b"ka"
