"""Sessions: clean session / clean start, session present, expiry, the offline queue."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import MQTTTestClient, registered

from helpers import LEVELS, DropRecorder, connected, session_rows, wait_offline


async def disconnect(c: MQTTTestClient) -> None:
    """A normal DISCONNECT, then wait for the broker to close."""
    await c.disconnect()
    assert await c.closed() is None


def session_ids(broker: Broker) -> set[str]:
    return {row["client_id"] for row in session_rows(broker)}


# -- clean session / clean start, session present ------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_clean_session_starts_empty_and_drops_subscriptions_on_disconnect(broker: Broker, level: int) -> None:
    async with connected(broker, "c", level) as c:
        assert not c.connack.session_present  # type: ignore[attr-defined]
        await c.subscribe("s/t", qos=1)
        await disconnect(c)
    assert "c" not in session_ids(broker)
    async with connected(broker, "c", level) as c, connected(broker, "p", level) as p:
        assert not c.connack.session_present  # type: ignore[attr-defined]
        await p.publish("s/t", b"x", qos=1)
        assert await c.nothing_received(0.3), "a clean session kept a subscription"


@pytest.mark.parametrize("level", LEVELS)
async def test_persistent_session_is_present_on_reconnect_and_keeps_subscriptions(broker: Broker, level: int) -> None:
    async with connected(broker, "c", level, clean_start=False) as c:
        assert not c.connack.session_present  # type: ignore[attr-defined]
        await c.subscribe("s/t", qos=1)
        await disconnect(c)
    assert "c" in session_ids(broker)
    async with connected(broker, "c", level, clean_start=False) as c, connected(broker, "p", level) as p:
        assert c.connack.session_present  # type: ignore[attr-defined]
        await p.publish("s/t", b"kept", qos=1)
        message = await c.receive()
        assert (message.payload, message.qos) == (b"kept", 1)


@pytest.mark.parametrize("level", LEVELS)
async def test_clean_start_discards_an_existing_persistent_session(broker: Broker, level: int) -> None:
    async with connected(broker, "c", level, clean_start=False) as c:
        await c.subscribe("s/t", qos=1)
        await disconnect(c)
    async with connected(broker, "c", level, clean_start=True, expiry=60) as c, connected(broker, "p", level) as p:
        assert not c.connack.session_present  # type: ignore[attr-defined]
        await p.publish("s/t", b"x", qos=1)
        assert await c.nothing_received(0.3), "clean start kept the old subscription"


async def test_paho_v311_clean_session_false_gets_session_present(broker: Broker, paho_client: Any) -> None:
    first = paho_client("paho-persistent", paho.MQTTv311, clean_session=False)
    flags, reason, _ = await first.connect(broker.port())
    assert not flags.session_present and reason == 0
    await first.subscribe("paho/kept", qos=1)
    await first.disconnect()
    second = paho_client("paho-persistent", paho.MQTTv311, clean_session=False)
    flags, reason, _ = await second.connect(broker.port())
    assert flags.session_present and reason == 0
    publisher = paho_client("paho-pub", paho.MQTTv311)
    await publisher.connect(broker.port())
    await publisher.publish("paho/kept", b"still subscribed", qos=1)
    assert (await second.receive()).payload == b"still subscribed"
    await second.disconnect()
    await publisher.disconnect()


async def test_paho_v5_clean_start_false_with_expiry_gets_session_present(broker: Broker, paho_client: Any) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 60
    first = paho_client("paho5-persistent", paho.MQTTv5)
    flags, reason, _ = await first.connect(broker.port(), clean=False, properties=props)
    assert not flags.session_present and reason == 0
    await first.subscribe("paho5/kept", qos=1)
    await first.disconnect()
    second = paho_client("paho5-persistent", paho.MQTTv5)
    flags, reason, _ = await second.connect(broker.port(), clean=False, properties=props)
    assert flags.session_present and reason == 0
    await second.disconnect()


# -- expiry ---------------------------------------------------------------------------------


async def test_v5_session_with_zero_expiry_ends_at_disconnect_even_without_clean_start(broker: Broker) -> None:
    async with connected(broker, "c", 5, clean_start=False, expiry=0) as c:
        await c.subscribe("s/t", qos=1)
        await disconnect(c)
    assert "c" not in session_ids(broker)
    async with connected(broker, "c", 5, clean_start=False, expiry=0) as c:
        assert not c.connack.session_present  # type: ignore[attr-defined]


async def test_v5_session_expiry_keeps_session_before_and_ends_it_after_the_interval(broker: Broker) -> None:
    async with connected(broker, "c", 5, clean_start=False, expiry=1) as c:
        await c.subscribe("s/t", qos=1)
        await disconnect(c)
    await trio.sleep(0.3)
    async with connected(broker, "c", 5, clean_start=False, expiry=1) as c:
        assert c.connack.session_present  # type: ignore[attr-defined]
        await disconnect(c)
    await trio.sleep(0.7)
    assert "c" in session_ids(broker), "the reconnect must restart the expiry interval"
    await trio.sleep(0.6)
    assert "c" not in session_ids(broker)
    async with connected(broker, "c", 5, clean_start=False, expiry=1) as c, connected(broker, "p", 5) as p:
        assert not c.connack.session_present  # type: ignore[attr-defined]
        await p.publish("s/t", b"x", qos=1)
        assert await c.nothing_received(0.3), "an expired session's subscription survived"


async def test_v5_disconnect_can_change_session_expiry(broker: Broker) -> None:
    async with connected(broker, "c", 5, clean_start=False, expiry=60) as c:
        await c.disconnect(0, {"session_expiry_interval": 0})
        assert await c.closed() is None
    assert "c" not in session_ids(broker)


@pytest.mark.parametrize(("wait", "present"), [(0.3, True), (1.5, False)])
async def test_persistent_session_expiry_config_applies_to_v311_sessions(
    broker_factory: Any, wait: float, present: bool
) -> None:
    async with broker_factory(persistent_session_expiry=1) as broker:
        async with connected(broker, "c", 4, clean_start=False) as c:
            await c.subscribe("s/t", qos=1)
            await disconnect(c)
        await trio.sleep(wait)
        async with connected(broker, "c", 4, clean_start=False) as c:
            assert c.connack.session_present is present  # type: ignore[attr-defined]


async def test_v311_persistent_session_never_expires_without_the_config(broker: Broker) -> None:
    async with connected(broker, "c", 4, clean_start=False) as c:
        await disconnect(c)
    await trio.sleep(1.2)
    async with connected(broker, "c", 4, clean_start=False) as c:
        assert c.connack.session_present  # type: ignore[attr-defined]


# -- offline queue ------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_qos1_and_qos2_messages_published_while_offline_are_delivered_on_reconnect(
    broker: Broker, level: int
) -> None:
    async with connected(broker, "c", level, clean_start=False) as c:
        await c.subscribe("off/#", qos=2)
        await disconnect(c)
    async with connected(broker, "p", level) as p:
        await p.publish("off/1", b"one", qos=1)
        await p.publish("off/0", b"zero", qos=0)
        await p.publish("off/2", b"two", qos=2)
    async with connected(broker, "c", level, clean_start=False) as c:
        assert c.connack.session_present  # type: ignore[attr-defined]
        first = await c.receive()
        second = await c.receive()
        assert [(m.topic, m.payload, m.qos) for m in (first, second)] == [("off/1", b"one", 1), ("off/2", b"two", 2)]
        assert await c.nothing_received(0.3), "a QoS 0 message was queued for an offline session"


async def test_queued_messages_are_downgraded_to_the_subscription_qos(broker: Broker) -> None:
    async with connected(broker, "c", 5, clean_start=False) as c:
        await c.subscribe("off/t", qos=1)
        await disconnect(c)
    async with connected(broker, "p", 5) as p:
        await p.publish("off/t", b"two", qos=2)
    async with connected(broker, "c", 5, clean_start=False) as c:
        assert (await c.receive()).qos == 1


async def test_offline_messages_reach_a_clean_session_false_client_after_abrupt_close(broker: Broker) -> None:
    async with connected(broker, "c", 4, clean_start=False) as c:
        await c.subscribe("off/t", qos=1)
    await wait_offline(broker, "c")  # socket closed without DISCONNECT
    async with connected(broker, "p", 4) as p:
        await p.publish("off/t", b"while away", qos=1)
    async with connected(broker, "c", 4, clean_start=False) as c:
        assert (await c.receive()).payload == b"while away"


async def test_paho_v311_persistent_client_gets_messages_sent_while_offline(broker: Broker, paho_client: Any) -> None:
    first = paho_client("paho-offline", paho.MQTTv311, clean_session=False)
    await first.connect(broker.port())
    await first.subscribe("paho/offline", qos=1)
    await first.disconnect()
    publisher = paho_client("paho-pub", paho.MQTTv311)
    await publisher.connect(broker.port())
    for n in range(3):
        await publisher.publish("paho/offline", b"%d" % n, qos=1)
    await publisher.disconnect()
    second = paho_client("paho-offline", paho.MQTTv311, clean_session=False)
    await second.connect(broker.port())
    assert [(await second.receive()).payload for _ in range(3)] == [b"0", b"1", b"2"]
    await second.disconnect()


async def test_mosquitto_sub_persistent_session_receives_message_queued_while_offline(
    broker: Broker, mosquitto: Any
) -> None:
    port = str(broker.port())
    # subscribe, wait for the SUBACK, leave with the session kept (-c)
    await mosquitto("mosquitto_sub", "-p", port, "-c", "-i", "mosq-offline", "-q", "1", "-t", "mosq/off", "-E")
    assert "mosq-offline" in session_ids(broker)
    await mosquitto("mosquitto_pub", "-p", port, "-q", "1", "-t", "mosq/off", "-m", "queued")
    done = await mosquitto(
        "mosquitto_sub", "-p", port, "-c", "-i", "mosq-offline", "-q", "1", "-t", "mosq/off", "-C", "1", "-W", "5"
    )
    assert done.stdout.decode().strip() == "queued"


@pytest.mark.parametrize("level", LEVELS)
async def test_offline_queue_limit_drops_the_excess_and_fires_on_message_drop(broker_factory: Any, level: int) -> None:
    async with broker_factory(max_queued_messages=2) as broker:
        recorder = DropRecorder()
        async with registered(broker, recorder):
            async with connected(broker, "c", level, clean_start=False) as c:
                await c.subscribe("off/t", qos=1)
                await disconnect(c)
            async with connected(broker, "p", level) as p:
                for n in range(5):
                    await p.publish("off/t", b"m%d" % n, qos=1)
            assert recorder.drops == [
                ("c", b"m2", "queue_full"),
                ("c", b"m3", "queue_full"),
                ("c", b"m4", "queue_full"),
            ]
            async with connected(broker, "c", level, clean_start=False) as c:
                assert [(await c.receive()).payload for _ in range(2)] == [b"m0", b"m1"]
                assert await c.nothing_received(0.3), "more than max_queued_messages were kept"
