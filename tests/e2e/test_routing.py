"""Routing: wildcards, overlapping subscriptions, subscription identifiers, `$` topics."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import SubscriptionRequest
from ternmq.kernel.testing import MQTTTestClient

from helpers import LEVELS, connected, eventually, session_rows


async def received_topics(c: MQTTTestClient, wait: float = 0.3) -> list[str]:
    """Every PUBLISH topic that arrives until nothing comes for ``wait`` seconds."""
    topics = []
    while not await c.nothing_received(wait):
        topics.append((await c.receive()).topic)
    return topics


# -- wildcards --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "matching", "not_matching"),
    [
        ("a/+/c", ["a/b/c", "a//c"], ["a/b", "a/b/c/d", "x/b/c"]),
        ("a/#", ["a", "a/b", "a/b/c"], ["ab", "b/a"]),
        ("+", ["a"], ["a/b", "/a"]),
        ("+/+", ["/a", "a/b"], ["a"]),
        ("a/b", ["a/b"], ["a/b/", "A/b"]),
    ],
)
async def test_topic_filters_match_the_topics_the_spec_says(
    broker: Broker, topic_filter: str, matching: list[str], not_matching: list[str]
) -> None:
    async with connected(broker, "sub") as sub, connected(broker, "pub") as pub:
        await sub.subscribe(topic_filter)
        for topic in not_matching + matching:
            await pub.publish(topic, b"x", qos=1)
        assert await received_topics(sub) == matching


# -- overlapping subscriptions --------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos(broker: Broker, level: int) -> None:
    async with connected(broker, "sub", level) as sub, connected(broker, "pub", level) as pub:
        suback = await sub.subscribe(SubscriptionRequest("a/#", 0), SubscriptionRequest("a/b", 2))
        assert suback.reason_codes == [0, 2]
        await pub.publish("a/b", b"once", qos=2)
        message = await sub.receive()
        assert (message.payload, message.qos) == (b"once", 2)
        assert await sub.nothing_received(0.3), "overlapping subscriptions delivered twice"


@pytest.mark.parametrize(
    "protocol", [pytest.param(paho.MQTTv311, id="paho-v311"), pytest.param(paho.MQTTv5, id="paho-v5")]
)
async def test_paho_overlapping_subscriptions_get_one_copy(broker: Broker, paho_client: Any, protocol: int) -> None:
    sub = paho_client("paho-sub", protocol)
    await sub.connect(broker.port())
    await sub.subscribe([("a/#", 0), ("a/+", 1), ("a/b", 2)])
    async with connected(broker, "pub") as pub:
        await pub.publish("a/b", b"once", qos=1)
    message = await sub.receive()
    assert (message.payload, message.qos) == (b"once", 1)
    assert await sub.nothing_received(0.3)
    await sub.disconnect()


async def test_v5_subscription_identifiers_give_one_copy_per_subscription(broker: Broker) -> None:
    async with connected(broker, "sub") as sub, connected(broker, "pub") as pub:
        await sub.subscribe(SubscriptionRequest("a/#", 0), properties={"subscription_identifier": [1]})
        await sub.subscribe(SubscriptionRequest("a/b", 2), properties={"subscription_identifier": [2]})
        await pub.publish("a/b", b"twice", qos=2)
        copies = [await sub.receive(), await sub.receive()]
        assert await sub.nothing_received(0.3)
        got = sorted((m.properties["subscription_identifier"], m.qos) for m in copies)
        assert got == [([1], 0), ([2], 2)]
        assert all(m.payload == b"twice" for m in copies)


async def test_v5_subscription_identifier_on_a_single_match_is_sent(broker: Broker) -> None:
    async with connected(broker, "sub") as sub, connected(broker, "pub") as pub:
        await sub.subscribe("sid/t", qos=1, properties={"subscription_identifier": [77]})
        await sub.subscribe("other/t", qos=1)
        await pub.publish("sid/t", b"x", qos=1)
        assert (await sub.receive()).properties.get("subscription_identifier") == [77]
        await pub.publish("other/t", b"y", qos=1)
        assert "subscription_identifier" not in (await sub.receive()).properties


async def test_v5_subscription_identifier_from_one_of_two_overlapping_subscriptions(broker: Broker) -> None:
    # one subscription has an identifier, the other not: one copy per subscription, the
    # identifier only on the copy of the subscription that carries it
    async with connected(broker, "sub") as sub, connected(broker, "pub") as pub:
        await sub.subscribe("a/#", qos=1, properties={"subscription_identifier": [5]})
        await sub.subscribe("a/b", qos=1)
        await pub.publish("a/b", b"x", qos=1)
        copies = [await sub.receive(), await sub.receive()]
        assert await sub.nothing_received(0.3)
        assert sorted(str(m.properties.get("subscription_identifier")) for m in copies) == ["None", "[5]"]


async def test_subscribers_of_different_clients_each_get_a_copy(broker: Broker) -> None:
    async with connected(broker, "one", 4) as one, connected(broker, "two", 5) as two, connected(broker, "pub") as pub:
        await one.subscribe("fan/+", qos=1)
        await two.subscribe("fan/#", qos=2)
        await pub.publish("fan/out", b"all", qos=2)
        assert ((await one.receive()).qos, (await two.receive()).qos) == (1, 2)


async def test_v5_no_local_keeps_a_client_from_receiving_its_own_messages(broker: Broker) -> None:
    async with connected(broker, "self") as me, connected(broker, "other") as other:
        await me.subscribe(SubscriptionRequest("loop/t", 1, no_local=True))
        await other.subscribe("loop/t", qos=1)
        await me.publish("loop/t", b"mine", qos=1)
        assert (await other.receive()).payload == b"mine"
        assert await me.nothing_received(0.3)


async def test_unsubscribe_stops_delivery(broker: Broker) -> None:
    async with connected(broker, "sub") as sub, connected(broker, "pub") as pub:
        await sub.subscribe("u/t", qos=1)
        unsuback = await sub.unsubscribe("u/t")
        assert unsuback.reason_codes == [0]
        await pub.publish("u/t", b"x", qos=1)
        assert await sub.nothing_received(0.3)


# -- $ topics --------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_leading_wildcards_do_not_match_dollar_topics(broker: Broker, level: int) -> None:
    async with (
        connected(broker, "all", level) as everything,
        connected(broker, "plus", level) as plus,
        connected(broker, "sys", level) as sys,
    ):
        await everything.subscribe("#", qos=1)
        await plus.subscribe("+/x", qos=1)
        await sys.subscribe("$SYS/#", qos=1)
        await broker.service.publish("$SYS/x", b"broker", qos=1)
        message = await sys.receive()
        assert (message.topic, message.payload) == ("$SYS/x", b"broker")
        assert await everything.nothing_received(0.3), "'#' matched a $SYS topic"
        assert await plus.nothing_received(0.1), "'+/x' matched a $SYS topic"
        # the same clients do get an ordinary topic
        await broker.service.publish("any/x", b"plain", qos=1)
        assert (await everything.receive()).topic == "any/x"
        assert (await plus.receive()).topic == "any/x"
        assert await sys.nothing_received(0.1)


async def test_client_published_dollar_topic_reaches_only_explicit_subscribers(broker: Broker) -> None:
    async with connected(broker, "all") as everything, connected(broker, "app") as app, connected(broker, "pub") as pub:
        await everything.subscribe("#", qos=1)
        await app.subscribe("$app/+", qos=1)
        await pub.publish("$app/x", b"x", qos=1)
        assert (await app.receive()).topic == "$app/x"
        assert await everything.nothing_received(0.3)


# -- mosquitto clients -----------------------------------------------------------------------


async def test_mosquitto_sub_wildcard_receives_mosquitto_pub(broker: Broker, mosquitto: Any) -> None:
    port = str(broker.port())
    result: dict[str, Any] = {}

    async def subscribe() -> None:
        result["sub"] = await mosquitto(
            "mosquitto_sub",
            "-p",
            port,
            "-V",
            "mqttv5",
            "-i",
            "mosq-sub",
            "-t",
            "house/+/temp",
            "-C",
            "1",
            "-W",
            "5",
            "-v",
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscribe)
        await eventually(lambda: any(r["client_id"] == "mosq-sub" and r["subscriptions"] for r in session_rows(broker)))
        await mosquitto("mosquitto_pub", "-p", port, "-t", "house/garden/humidity", "-m", "60")
        await mosquitto("mosquitto_pub", "-p", port, "-t", "house/kitchen/temp", "-m", "21.5")
    assert result["sub"].stdout.decode().strip() == "house/kitchen/temp 21.5"
