"""Client-id takeover and empty client identifiers."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Disconnect, Puback
from ternmq.kernel.testing import MQTTTestClient

from helpers import LEVELS, connected, session_rows

# -- takeover -------------------------------------------------------------------------------


async def test_v5_second_connection_sends_disconnect_0x8e_to_the_first(broker: Broker) -> None:
    async with connected(broker, "twin", 5) as first:
        async with connected(broker, "twin", 5) as second:
            disconnect = await first.closed()
            assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x8E
            suback = await second.subscribe("twin/t", qos=1)  # the newcomer is the one served
            assert suback.reason_codes == [1]
            online = [r for r in session_rows(broker) if r["client_id"] == "twin"]
            assert len(online) == 1 and online[0]["is_online"]


async def test_v311_second_connection_closes_the_first_without_a_packet(broker: Broker) -> None:
    async with connected(broker, "twin", 4) as first:
        async with connected(broker, "twin", 4) as second:
            assert await first.next_packet() is None  # closed, nothing sent first
            assert (await second.subscribe("twin/t", qos=1)).reason_codes == [1]


@pytest.mark.parametrize("level", LEVELS)
async def test_takeover_with_clean_start_false_continues_the_session(broker: Broker, level: int) -> None:
    async with connected(broker, "pub", level) as pub:
        async with connected(broker, "twin", level, clean_start=False) as first:
            await first.subscribe("twin/t", qos=1)
            async with connected(broker, "twin", level, clean_start=False) as second:
                assert second.connack.session_present  # type: ignore[attr-defined]
                await first.closed()
                await pub.publish("twin/t", b"to the new one", qos=1)
                assert (await second.receive()).payload == b"to the new one"


@pytest.mark.parametrize("level", LEVELS)
async def test_takeover_with_clean_start_drops_the_old_session(broker: Broker, level: int) -> None:
    async with connected(broker, "pub", level) as pub:
        async with connected(broker, "twin", level, clean_start=False) as first:
            await first.subscribe("twin/t", qos=1)
            async with connected(broker, "twin", level, clean_start=True) as second:
                assert not second.connack.session_present  # type: ignore[attr-defined]
                await first.closed()
                await pub.publish("twin/t", b"nobody", qos=1)
                assert await second.nothing_received(0.3)


@pytest.mark.parametrize("level", LEVELS)
async def test_takeover_resends_the_first_connections_unacknowledged_messages(broker: Broker, level: int) -> None:
    async with connected(broker, "pub", level) as pub:
        async with connected(broker, "twin", level, clean_start=False, auto_ack=False) as first:
            await first.subscribe("twin/t", qos=1)
            await pub.publish("twin/t", b"unacked", qos=1)
            original = await first.receive()
            async with connected(broker, "twin", level, clean_start=False, auto_ack=False) as second:
                again = await second.receive()
                assert (again.packet_id, again.payload, again.dup) == (original.packet_id, b"unacked", True)
                await second.send(Puback(again.packet_id))


async def test_paho_v5_client_is_told_its_session_was_taken_over(broker: Broker, paho_client: Any) -> None:
    first = paho_client("paho-twin", paho.MQTTv5)
    first.client.reconnect_delay_set(min_delay=30, max_delay=30)  # no reconnect ping-pong
    await first.connect(broker.port())
    async with connected(broker, "paho-twin", 5):
        ok = await trio.to_thread.run_sync(first.disconnected.wait, 5)
        assert ok, "paho was not disconnected"
        assert first.disconnect_reason == 0x8E


# -- empty client identifiers ---------------------------------------------------------------


async def test_v5_empty_client_id_gets_an_assigned_client_identifier(broker: Broker) -> None:
    async with MQTTTestClient.open(broker.port(), 5) as a, MQTTTestClient.open(broker.port(), 5) as b:
        first = await a.connect("")
        second = await b.connect("")
        assert first.reason_code == second.reason_code == 0
        ids = [first.properties.get("assigned_client_identifier"), second.properties.get("assigned_client_identifier")]
        assert all(ids) and ids[0] != ids[1], ids
        assert {r["client_id"] for r in session_rows(broker)} >= set(ids)


async def test_v5_assigned_client_identifier_names_a_resumable_session(broker: Broker) -> None:
    async with MQTTTestClient.open(broker.port(), 5) as c:
        connack = await c.connect("", clean_start=False, properties={"session_expiry_interval": 60})
        assigned = connack.properties["assigned_client_identifier"]
        await c.subscribe("assigned/t", qos=1)
        await c.disconnect()
        await c.closed()
    async with connected(broker, assigned, 5, clean_start=False) as c:
        assert c.connack.session_present  # type: ignore[attr-defined]


async def test_v311_empty_client_id_with_clean_session_is_accepted(broker: Broker) -> None:
    async with MQTTTestClient.open(broker.port(), 4) as c:
        connack = await c.connect("", clean_start=True)
        assert connack.reason_code == 0
        assert "assigned_client_identifier" not in connack.properties
        assert (await c.subscribe("anon/t", qos=1)).reason_codes == [1]


async def test_paho_v311_empty_client_id_connects(broker: Broker, paho_client: Any) -> None:
    c = paho_client("", paho.MQTTv311)
    _, reason, _ = await c.connect(broker.port())
    assert reason == 0
    await c.subscribe("anon/paho", qos=1)
    await c.publish("anon/paho", b"me", qos=1)
    assert (await c.receive()).payload == b"me"
    await c.disconnect()


@pytest.mark.parametrize(("name", "level"), [(b"MQTT", 4), (b"MQIsdp", 3)])
async def test_empty_client_id_without_clean_session_is_refused_with_identifier_rejected(
    broker: Broker, name: bytes, level: int
) -> None:
    # CONNECT, clean session 0, keep-alive 60, zero-length client id
    variable = len(name).to_bytes(2, "big") + name + bytes([level, 0x00, 0, 60, 0, 0])
    async with MQTTTestClient.open(broker.port(), level) as c:
        await c.send_raw(bytes([0x10, len(variable)]) + variable)
        assert await c.stream.receive_some(16) == bytes([0x20, 0x02, 0x00, 0x02])
        assert await c.closed() is None
    assert session_rows(broker) == []


async def test_v31_empty_client_id_is_refused_even_with_clean_session(broker: Broker) -> None:
    # MQTT 3.1 requires a client identifier of 1 to 23 characters.
    variable = b"\x00\x06MQIsdp" + bytes([3, 0x02, 0, 60, 0, 0])
    async with MQTTTestClient.open(broker.port(), 3) as c:
        await c.send_raw(bytes([0x10, len(variable)]) + variable)
        assert await c.stream.receive_some(16) == bytes([0x20, 0x02, 0x00, 0x02])
