"""MQTT 5 end to end: subscription identifiers, no local, retain as published, retain
handling, shared subscriptions."""

from __future__ import annotations

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ternmq.kernel.codec import Disconnect, Subscribe, SubscriptionRequest

from helpers import connected

# -- subscription identifiers ---------------------------------------------------------------


async def test_subscription_identifier_is_delivered_with_matching_messages(broker, paho_client):
    sub = paho_client("sid-sub", paho.MQTTv5)
    await sub.connect(broker.port())
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 7
    await sub.subscribe("sid/with/#", 1, properties=props)
    await sub.subscribe("sid/without/#", 1)
    pub = paho_client("sid-pub", paho.MQTTv5)
    await pub.connect(broker.port())
    await pub.publish("sid/with/a", b"1", 1)
    await pub.publish("sid/without/a", b"2", 1)
    with_id = await sub.receive()
    without_id = await sub.receive()
    assert with_id.payload == b"1" and with_id.properties.SubscriptionIdentifier == [7]
    assert without_id.payload == b"2" and not hasattr(without_id.properties, "SubscriptionIdentifier")


async def test_overlapping_subscriptions_deliver_every_matching_identifier(broker):
    async with connected(broker.port(), "sid-overlap") as sub:
        await sub.subscribe("ov/#", qos=1, properties={"subscription_identifier": [1]})
        await sub.subscribe("ov/+", qos=1, properties={"subscription_identifier": [2]})
        async with connected(broker.port(), "ov-pub") as pub:
            await pub.publish("ov/x", b"m", qos=1)
        # MQTT 5 §3.3.4: one copy carrying both identifiers, or one copy per subscription.
        ids: list[int] = []
        while not await sub.nothing_received(0.3):
            packet = await sub.receive()
            assert packet.payload == b"m"
            ids.extend(packet.properties["subscription_identifier"])
    assert sorted(ids) == [1, 2]


# -- no local -------------------------------------------------------------------------------------


async def test_no_local_subscription_does_not_echo_own_messages(broker, paho_client):
    me = paho_client("nl-me", paho.MQTTv5)
    await me.connect(broker.port())
    await me.subscribe("nl/t", options=SubscribeOptions(qos=1, noLocal=True))
    other = paho_client("nl-other", paho.MQTTv5)
    await other.connect(broker.port())
    await other.subscribe("nl/t", options=SubscribeOptions(qos=1))  # no_local off: gets everything

    await me.publish("nl/t", b"mine", 1)
    assert (await other.receive()).payload == b"mine"
    assert await me.nothing_received()

    await other.publish("nl/t", b"theirs", 1)
    assert (await me.receive()).payload == b"theirs"
    assert (await other.receive()).payload == b"theirs"


# -- retain as published ----------------------------------------------------------------------


async def test_retain_as_published_keeps_the_retain_flag_of_live_messages_only_when_set(broker):
    port = broker.port()
    async with connected(port, "rap-1") as keep, connected(port, "rap-0") as clear:
        await keep.subscribe(SubscriptionRequest("rap/t", 0, retain_as_published=True))
        await clear.subscribe(SubscriptionRequest("rap/t", 0, retain_as_published=False))
        async with connected(port, "rap-pub") as pub:
            await pub.publish("rap/t", b"r", retain=True)
            await pub.publish("rap/t", b"n", retain=False)
        assert [(p.payload, p.retain) for p in (await keep.receive(), await keep.receive())] == [
            (b"r", True),
            (b"n", False),
        ]
        assert [(p.payload, p.retain) for p in (await clear.receive(), await clear.receive())] == [
            (b"r", False),
            (b"n", False),
        ]
        # A retained message sent because of a new subscription always has RETAIN set.
        async with connected(port, "rap-late") as late:
            await late.subscribe(SubscriptionRequest("rap/t", 0, retain_as_published=False))
            retained = await late.receive()
            assert (retained.payload, retained.retain) == (b"r", True)


# -- retain handling ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("handling", "on_first", "on_repeat"),
    [
        (0, True, True),  # send retained messages at every subscribe
        (1, True, False),  # only if the subscription did not exist
        (2, False, False),  # never
    ],
)
async def test_retain_handling_decides_when_retained_messages_are_sent(broker, handling, on_first, on_repeat):
    port = broker.port()
    async with connected(port, "rh-pub") as pub:
        await pub.publish("rh/t", b"kept", qos=1, retain=True)
    async with connected(port, "rh-sub") as sub:
        request = SubscriptionRequest("rh/t", 1, retain_handling=handling)
        for expected in (on_first, on_repeat):
            await sub.subscribe(request)
            if expected:
                message = await sub.receive()
                assert (message.payload, message.retain) == (b"kept", True)
            assert await sub.nothing_received()
        # Whatever the handling, live messages still flow.
        async with connected(port, "rh-pub2") as pub:
            await pub.publish("rh/t", b"live", qos=1)
        assert (await sub.receive()).payload == b"live"


# -- shared subscriptions -------------------------------------------------------------------------


async def test_shared_subscription_gives_each_message_to_exactly_one_member(broker):
    port = broker.port()
    async with connected(port, "sh-a") as a, connected(port, "sh-b") as b:
        for member in (a, b):
            assert (await member.subscribe("$share/g/sh/t", qos=1)).reason_codes == [1]
        async with connected(port, "sh-pub") as pub:
            for i in range(6):
                await pub.publish("sh/t", str(i).encode(), qos=1)
        got: dict[str, list[bytes]] = {"a": [], "b": []}
        for name, member in (("a", a), ("b", b)):
            while not await member.nothing_received(0.3):
                got[name].append((await member.receive()).payload)
    everything = got["a"] + got["b"]
    assert sorted(everything) == [str(i).encode() for i in range(6)], got


@pytest.mark.parametrize(("pub_qos", "sub_qos"), [(0, 1), (1, 2), (2, 1)])
async def test_shared_delivery_qos_is_the_lower_of_publish_and_subscription_qos(broker, pub_qos, sub_qos):
    async with connected(broker, "sh-member") as member, connected(broker, "sh-pub") as pub:
        await member.subscribe("$share/g/sh/q", qos=sub_qos)
        await pub.publish("sh/q", b"m", qos=pub_qos)
        assert (await member.receive()).qos == min(pub_qos, sub_qos)


async def test_every_shared_group_and_plain_subscriber_gets_the_message(broker, paho_client):
    port = broker.port()
    members = {}
    for name, topic_filter in (("g1", "$share/g1/shg/#"), ("g2", "$share/g2/shg/t"), ("plain", "shg/t")):
        members[name] = paho_client(f"shg-{name}", paho.MQTTv5)
        await members[name].connect(port)
        assert (await members[name].subscribe(topic_filter, 1))[0].value == 1
    pub = paho_client("shg-pub", paho.MQTTv5)
    await pub.connect(port)
    await pub.publish("shg/t", b"all", 1)
    for name, member in members.items():
        message = await member.receive()
        assert (message.topic, message.payload) == ("shg/t", b"all"), name
        assert await member.nothing_received(0.1), name


async def test_shared_subscription_gets_no_retained_messages(broker):
    port = broker.port()
    async with connected(port, "shr-pub") as pub:
        await pub.publish("shr/t", b"kept", qos=1, retain=True)
    async with connected(port, "shr-shared") as shared, connected(port, "shr-plain") as plain:
        await shared.subscribe("$share/g/shr/t", qos=1)
        await plain.subscribe("shr/t", qos=1)
        assert (await plain.receive()).payload == b"kept"  # the retained message exists
        assert await shared.nothing_received()


async def test_no_local_on_a_shared_subscription_is_a_protocol_error(broker):
    async with connected(broker.port(), "sh-nl") as c:
        await c.send(Subscribe(1, [SubscriptionRequest("$share/g/nl/t", 1, no_local=True)]))
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x82
