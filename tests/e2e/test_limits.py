"""Configured limits: exceeding one gets its MQTT reason code and touches nobody else.

Each limit is a setting with its default in ``kernel/values/config.py`` (``Limits``, and
``ListenerConfig.max_connections``). Every test keeps a subscribed bystander connected
while a client runs into the limit, and checks afterwards that the bystander still
receives a fresh publish and that a new client can still connect.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Connack, Connect, Puback, Publish, Pubrec, Will, encode
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.values.config import Limits, ListenerConfig

from helpers import (
    BYSTANDER_TOPIC,
    LEVELS,
    DropRecorder,
    connected,
    eventually,
    expect_refused_close,
    packets_until_close,
    raw_until_close,
    session_row,
    session_rows,
    watched,
)

pytestmark = pytest.mark.usefixtures("no_tracebacks")


# -- helpers -------------------------------------------------------------------------------


async def refused_connack(broker: Broker, level: int, client_id: str, **fields: Any) -> int | bytes:
    """Connect and expect a refusal: the v5 reason code, or the raw 3.1.1 CONNACK bytes."""
    async with MQTTTestClient.open(broker.port(), level) as client:
        await client.send_raw(encode(Connect(client_id, level, **fields), level))
        if level == 5:
            packets = await packets_until_close(client)
            assert len(packets) == 1 and isinstance(packets[0], Connack), packets
            return int(packets[0].reason_code)
        return await raw_until_close(client)


def publish_of_size(level: int, size: int, topic: str = BYSTANDER_TOPIC) -> Publish:
    """A QoS 0 PUBLISH whose encoded size (fixed header included) is exactly ``size``."""
    for payload_length in range(size, -1, -1):
        packet = Publish(topic, b"p" * payload_length)
        if len(encode(packet, level)) == size:
            return packet
    raise AssertionError(f"no PUBLISH of {size} bytes")


# -- the defaults ---------------------------------------------------------------------------


def test_limit_defaults_are_the_documented_ones() -> None:
    limits = Limits()
    assert (limits.max_packet_size, limits.max_client_id_length, limits.max_inflight) == (1_048_576, 256, 32)
    assert (limits.max_queued_messages, limits.max_subscriptions_per_client) == (1000, 10_000)
    assert (limits.max_topic_levels, limits.connect_timeout) == (128, 10.0)
    assert ListenerConfig(name="default").max_connections == 10_000


async def test_connack_announces_the_default_limits(broker: Broker) -> None:
    async with connected(broker, "announced") as client:
        props = client.connack.properties
        assert props["maximum_packet_size"] == Limits().max_packet_size
        assert props["receive_maximum"] == Limits().max_inflight
        assert props["topic_alias_maximum"] == Limits().max_topic_alias


# -- max_connections (per listener) ------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_listener_over_max_connections_refuses_with_server_busy(broker_factory: Any, level: int) -> None:
    listener = ListenerConfig(name="test", port=0, max_connections=2)
    async with broker_factory(listeners=(listener,)) as broker:
        running = broker.listeners["test"]
        async with connected(broker, "first", 4) as first, connected(broker, "second", 5) as second:
            await first.subscribe("busy/#", qos=1)
            # MQTT 5: 0x89 server busy; MQTT 3.1.1: return code 3, server unavailable.
            refusal = await refused_connack(broker, level, "third")
            assert refusal == (0x89 if level == 5 else b"\x20\x02\x00\x03")
            await eventually(lambda: running.active == 2)
            assert {row["client_id"] for row in session_rows(broker)} == {"first", "second"}
            # the first two keep working
            await second.publish("busy/x", b"still served", qos=1)
            message = await first.receive()
            assert message.payload == b"still served"
            await second.disconnect()
            await eventually(lambda: running.active == 1)
            # a freed slot can be taken again
            async with connected(broker, "fourth", level) as fourth:
                await fourth.publish("busy/y", b"from the freed slot", qos=1)
                assert (await first.receive()).payload == b"from the freed slot"


# -- max_packet_size ------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_packet_over_max_packet_size_closes_with_packet_too_large(broker_factory: Any, level: int) -> None:
    async with broker_factory(max_packet_size=300) as broker, watched(broker) as bystander:
        async with connected(broker, "big", level) as big:
            if level == 5:
                assert big.connack.properties["maximum_packet_size"] == 300
            await big.send(publish_of_size(level, 300))  # exactly the limit: accepted
            assert len((await bystander.receive()).payload) > 250
            await big.send(publish_of_size(level, 301))
            await expect_refused_close(big, 0x95)
        assert await bystander.nothing_received(0.1)


# -- max_client_id_length -------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_client_id_over_max_length_is_refused(broker_factory: Any, level: int) -> None:
    async with broker_factory(max_client_id_length=16) as broker, watched(broker):
        async with connected(broker, "x" * 16, level):
            pass
        refusal = await refused_connack(broker, level, "y" * 17)
        # MQTT 5: 0x85 client identifier not valid; MQTT 3.1.1: return code 2.
        assert refusal == (0x85 if level == 5 else b"\x20\x02\x00\x02")
        assert all(row["client_id"] != "y" * 17 for row in session_rows(broker))


# -- max_inflight ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_no_more_than_max_inflight_unacknowledged_messages_go_out(broker_factory: Any, level: int) -> None:
    async with broker_factory(max_inflight=3) as broker, watched(broker):
        async with connected(broker, "slow", level, auto_ack=False) as slow, connected(broker, "pub", 4) as pub:
            await slow.subscribe("flow/#", qos=1)
            for i in range(8):
                await pub.publish("flow/x", str(i).encode(), qos=1)
            first = [await slow.receive() for _ in range(3)]
            assert await slow.nothing_received(0.2), "more than max_inflight messages went out"
            assert (session_row(broker, "slow")["inflight"], session_row(broker, "slow")["queued"]) == (3, 5)
            await slow.send(Puback(first[0].packet_id))
            fourth = await slow.receive()
            assert fourth.payload == b"3"
            assert await slow.nothing_received(0.2), "one acknowledgement frees exactly one slot"
            received = first + [fourth]
            for message in first[1:] + [fourth]:
                await slow.send(Puback(message.packet_id))
            while len(received) < 8:
                message = await slow.receive()
                assert session_row(broker, "slow")["inflight"] <= 3
                received.append(message)
                await slow.send(Puback(message.packet_id))
            assert [m.payload for m in received] == [str(i).encode() for i in range(8)]
            await eventually(lambda: session_row(broker, "slow")["inflight"] == 0)


async def test_client_over_receive_maximum_closes_with_receive_maximum_exceeded(broker_factory: Any) -> None:
    async with broker_factory(max_inflight=2) as broker, watched(broker):
        async with connected(broker, "eager", 5) as eager:
            assert eager.connack.properties["receive_maximum"] == 2
            for packet_id in (1, 2):  # QoS 2 exchanges left open: no PUBREL
                await eager.send(Publish("eager/x", b"q2", 2, False, False, packet_id))
                assert (await eager.expect(Pubrec)).packet_id == packet_id
            await eager.send(Publish("eager/x", b"one too many", 2, False, False, 3))
            await expect_refused_close(eager, 0x93)


# -- max_queued_messages --------------------------------------------------------------------


async def test_offline_queue_keeps_max_queued_messages_and_drops_the_rest(broker_factory: Any) -> None:
    recorder = DropRecorder()
    async with broker_factory(max_queued_messages=3) as broker, registered(broker, recorder), watched(broker):
        expiry = {"session_expiry_interval": 60}
        async with connected(broker, "sleeper", 5, properties=expiry) as sleeper:
            await sleeper.subscribe("queue/#", qos=1)
            await sleeper.disconnect()
        await eventually(lambda: not session_row(broker, "sleeper")["is_online"])
        async with connected(broker, "pub", 4) as pub:
            for i in range(5):
                await pub.publish("queue/x", str(i).encode(), qos=1)
        assert session_row(broker, "sleeper")["queued"] == 3
        assert recorder.drops == [("sleeper", b"3", "queue_full"), ("sleeper", b"4", "queue_full")]
        async with connected(broker, "sleeper", 5, clean_start=False, properties=expiry) as sleeper:
            assert sleeper.connack.session_present
            assert [(await sleeper.receive()).payload for _ in range(3)] == [b"0", b"1", b"2"]
            assert await sleeper.nothing_received(0.2)


async def test_online_queue_behind_a_full_window_drops_past_max_queued(broker_factory: Any) -> None:
    recorder = DropRecorder()
    async with (
        broker_factory(max_inflight=1, max_queued_messages=2) as broker,
        registered(broker, recorder),
        watched(broker),
    ):
        async with connected(broker, "slow", 5, auto_ack=False) as slow, connected(broker, "pub", 4) as pub:
            await slow.subscribe("queue/#", qos=1)
            for i in range(5):
                await pub.publish("queue/x", str(i).encode(), qos=1)
            received = []
            for _ in range(3):
                message = await slow.receive()
                received.append(message.payload)
                await slow.send(Puback(message.packet_id))
            assert received == [b"0", b"1", b"2"]
            assert await slow.nothing_received(0.2)
            assert [(payload, reason) for _, payload, reason in recorder.drops] == [
                (b"3", "queue_full"),
                (b"4", "queue_full"),
            ]


# -- max_subscriptions_per_client -------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_subscriptions_past_the_maximum_get_quota_exceeded(broker_factory: Any, level: int) -> None:
    async with broker_factory(max_subscriptions_per_client=2) as broker, watched(broker):
        async with connected(broker, "greedy", level) as greedy, connected(broker, "pub", 4) as pub:
            refused = 0x97 if level == 5 else 0x80  # quota exceeded; 3.1.1 only knows failure
            assert (await greedy.subscribe("a", "b", "c", qos=1)).reason_codes == [1, 1, refused]
            assert session_row(broker, "greedy")["subscriptions"] == 2
            await pub.publish("c", b"not for greedy", qos=1)
            assert await greedy.nothing_received(0.1)
            # replacing an existing subscription takes no new slot
            assert (await greedy.subscribe("a", qos=0)).reason_codes == [0]
            assert (await greedy.subscribe("d", qos=1)).reason_codes == [refused]
            # freeing a slot lets a new one in
            await greedy.unsubscribe("b")
            assert (await greedy.subscribe("c", qos=1)).reason_codes == [1]
            await pub.publish("c", b"for greedy now", qos=1)
            assert (await greedy.receive()).payload == b"for greedy now"


# -- max_topic_levels -------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_publish_to_a_topic_over_max_levels_closes_with_topic_name_invalid(
    broker_factory: Any, level: int
) -> None:
    async with broker_factory(max_topic_levels=3) as broker, watched(broker) as bystander:
        async with connected(broker, "deep", level) as deep:
            await deep.publish("bystander/b/c", b"three levels", qos=1)
            assert (await bystander.receive()).payload == b"three levels"
            await deep.send(Publish("bystander/b/c/d", b"four levels", 1, False, False, 9))
            await expect_refused_close(deep, 0x90)
        assert await bystander.nothing_received(0.1)


@pytest.mark.parametrize("level", LEVELS)
async def test_subscribe_to_a_filter_over_max_levels_gets_topic_filter_invalid(broker_factory: Any, level: int) -> None:
    async with broker_factory(max_topic_levels=3) as broker, watched(broker):
        async with connected(broker, "deep", level) as deep:
            refused = 0x8F if level == 5 else 0x80
            suback = await deep.subscribe("a/b/c/d", "a/+/#", "a/b/c/#", qos=1)
            assert suback.reason_codes == [refused, 1, refused]
            assert [s.topic_filter for s in broker.service.subscriptions("deep")] == ["a/+/#"]
            await deep.ping()  # still connected


async def test_will_topic_over_max_levels_is_refused_at_connect(broker_factory: Any) -> None:
    async with broker_factory(max_topic_levels=3) as broker, watched(broker):
        refusal = await refused_connack(broker, 5, "deep-will", will=Will("bystander/b/c/d", b"w"))
        assert refusal == 0x90


# -- connect_timeout ----------------------------------------------------------------------


async def test_connect_dribbled_slower_than_connect_timeout_is_cut_off(broker_factory: Any) -> None:
    data = encode(Connect("dribbler", 5), 5)
    async with broker_factory(connect_timeout=0.5) as broker, watched(broker):
        async with MQTTTestClient.open(broker.port(), 5) as dribbler:
            started = trio.current_time()
            # each byte well within the timeout, the whole CONNECT not: the timeout is total
            with trio.move_on_after(3):
                try:
                    for byte in data:
                        await dribbler.send_raw(bytes((byte,)))
                        await trio.sleep(0.1)
                except trio.BrokenResourceError:
                    pass  # closed by the broker while dribbling
            assert await raw_until_close(dribbler) == b""
            assert 0.4 <= trio.current_time() - started < 2.0
        assert all(row["client_id"] != "dribbler" for row in session_rows(broker))


async def test_connect_timeout_ends_once_the_client_is_connected(broker_factory: Any) -> None:
    async with broker_factory(connect_timeout=0.3) as broker, watched(broker) as bystander:
        async with connected(broker, "patient", 5, keep_alive=60) as patient:
            await trio.sleep(0.6)
            await patient.publish(BYSTANDER_TOPIC, b"after the connect timeout", qos=1)
            assert (await bystander.receive()).payload == b"after the connect timeout"
