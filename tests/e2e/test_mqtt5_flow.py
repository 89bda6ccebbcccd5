"""MQTT 5 end to end: topic aliases, receive maximum, maximum packet size, message expiry.

Real clients (paho-mqtt MQTTv5) where a client library can express the feature, and
MQTTTestClient where the exact packets matter or the packet is one a client library
refuses to send.
"""

from __future__ import annotations

import paho.mqtt.client as paho
import trio
from paho.mqtt.packettypes import PacketTypes

from ternmq.kernel.codec import Disconnect, Puback, Pubcomp, Publish, Pubrec, Pubrel
from ternmq.kernel.testing import registered

from helpers import DropRecorder, connected, paho_props

# -- topic aliases, client -> broker ----------------------------------------------------


async def test_client_topic_alias_routes_empty_topic_publishes_to_the_aliased_topic(broker, paho_client):
    sub = paho_client("alias-sub", paho.MQTTv5)
    await sub.connect(broker.port())
    await sub.subscribe("alias/#", 1)
    pub = paho_client("alias-pub", paho.MQTTv5)
    flags, reason, connack_props = await pub.connect(broker.port())
    assert connack_props.TopicAliasMaximum >= 1

    await pub.publish("alias/one", b"first", 1, properties=paho_props(PacketTypes.PUBLISH, TopicAlias=1))
    await pub.publish("", b"second", 1, properties=paho_props(PacketTypes.PUBLISH, TopicAlias=1))
    # A topic name with a known alias replaces the mapping (MQTT 5 §3.3.2.3.4).
    await pub.publish("alias/two", b"third", 1, properties=paho_props(PacketTypes.PUBLISH, TopicAlias=1))
    await pub.publish("", b"fourth", 1, properties=paho_props(PacketTypes.PUBLISH, TopicAlias=1))

    got = [await sub.receive() for _ in range(4)]
    assert [(m.topic, m.payload) for m in got] == [
        ("alias/one", b"first"),
        ("alias/one", b"second"),
        ("alias/two", b"third"),
        ("alias/two", b"fourth"),
    ]
    # The publisher's alias is per connection: it is never forwarded to a subscriber
    # that did not allow aliases.
    assert not any(hasattr(m.properties, "TopicAlias") for m in got)


async def test_topic_alias_zero_is_disconnected_with_topic_alias_invalid(broker):
    async with connected(broker.port(), "alias-zero") as c:
        await c.send(Publish("alias/t", b"x", 0, properties={"topic_alias": 0}))
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x94


async def test_topic_alias_above_connack_maximum_is_disconnected_with_topic_alias_invalid(broker_factory):
    async with broker_factory(max_topic_alias=3) as broker, connected(broker.port(), "alias-big") as c:
        assert c.connack.properties["topic_alias_maximum"] == 3
        await c.send(Publish("alias/t", b"ok", 1, packet_id=1, properties={"topic_alias": 3}))
        assert (await c.expect(Puback)).packet_id == 1  # the maximum itself is fine
        await c.send(Publish("alias/t", b"x", 0, properties={"topic_alias": 4}))
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x94


async def test_unknown_topic_alias_with_empty_topic_is_a_protocol_error(broker):
    async with connected(broker.port(), "alias-unknown") as c:
        await c.send(Publish("alias/t", b"x", 0, properties={"topic_alias": 1}))
        await c.send(Publish("", b"y", 0, properties={"topic_alias": 2}))
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x82


# -- topic aliases, broker -> client ----------------------------------------------------


async def test_broker_uses_topic_aliases_up_to_the_client_maximum(broker):
    maximum = 2
    topics = ["ta/a", "ta/a", "ta/b", "ta/c", "ta/c", "ta/a", "ta/b", "ta/d", "ta/c"]
    async with connected(broker.port(), "ta-sub", properties={"topic_alias_maximum": maximum}) as sub:
        await sub.subscribe("ta/#")
        async with connected(broker.port(), "ta-pub") as pub:
            for index, topic in enumerate(topics):
                await pub.publish(topic, str(index).encode())
        received = [await sub.receive() for _ in topics]
        assert await sub.nothing_received()

    mapping: dict[int, str] = {}
    resolved = []
    for packet in received:
        alias = packet.properties.get("topic_alias")
        assert alias is None or 1 <= alias <= maximum, packet
        if packet.topic:
            if alias is not None:
                mapping[alias] = packet.topic
            resolved.append(packet.topic)
        else:
            assert alias in mapping, f"empty topic with unknown alias: {packet}"
            resolved.append(mapping[alias])
    assert resolved == topics
    assert [p.payload for p in received] == [str(i).encode() for i in range(len(topics))]
    # The second message on ta/a came with the alias alone.
    assert received[0].topic == "ta/a" and received[0].properties.get("topic_alias") is not None
    assert received[1].topic == "" and received[1].properties["topic_alias"] == received[0].properties["topic_alias"]
    assert len(set(mapping)) <= maximum


async def test_broker_sends_no_topic_alias_to_a_client_that_allows_none(broker):
    async with connected(broker.port(), "ta-none") as sub:
        await sub.subscribe("tn/#")
        async with connected(broker.port(), "tn-pub") as pub:
            for _ in range(3):
                await pub.publish("tn/t", b"x")
        received = [await sub.receive() for _ in range(3)]
    assert all(p.topic == "tn/t" and "topic_alias" not in p.properties for p in received)


# -- receive maximum ----------------------------------------------------------------------


async def test_broker_keeps_at_most_receive_maximum_unacknowledged_messages_in_flight(broker):
    async with connected(broker.port(), "rm-sub", auto_ack=False, properties={"receive_maximum": 2}) as sub:
        await sub.subscribe("rm/t", qos=1)
        async with connected(broker.port(), "rm-pub") as pub:
            acks = [await pub.publish("rm/t", str(i).encode(), qos=1) for i in range(5)]
        # Queued behind the window, the messages still have a subscriber (0x10 would lie).
        assert [a.reason_code for a in acks] == [0] * 5

        first = [await sub.receive(), await sub.receive()]
        assert [p.payload for p in first] == [b"0", b"1"]
        assert await sub.nothing_received(0.3)

        await sub.send(Puback(first[0].packet_id))
        third = await sub.receive()
        assert third.payload == b"2"
        assert await sub.nothing_received(0.3)

        for packet in (first[1], third):
            await sub.send(Puback(packet.packet_id))
        rest = [await sub.receive(), await sub.receive()]
        assert [p.payload for p in rest] == [b"3", b"4"]


async def test_receive_maximum_counts_qos2_messages_until_pubcomp(broker):
    async with connected(broker.port(), "rm2-sub", auto_ack=False, properties={"receive_maximum": 1}) as sub:
        await sub.subscribe("rm2/t", qos=2)
        async with connected(broker.port(), "rm2-pub") as pub:
            for i in range(2):
                await pub.publish("rm2/t", str(i).encode(), qos=2)
        first = await sub.receive()
        assert first.payload == b"0"
        await sub.send(Pubrec(first.packet_id))
        assert (await sub.expect(Pubrel)).packet_id == first.packet_id
        assert await sub.nothing_received(0.3)  # still in flight until PUBCOMP
        await sub.send(Pubcomp(first.packet_id))
        second = await sub.receive()
        assert second.payload == b"1"


async def test_client_exceeding_the_broker_receive_maximum_is_disconnected(broker_factory):
    async with broker_factory(max_inflight=2) as broker, connected(broker.port(), "rm-flood") as c:
        assert c.connack.properties["receive_maximum"] == 2
        for packet_id in (1, 2):
            await c.send(Publish("flood/t", b"x", 2, packet_id=packet_id))
            assert (await c.expect(Pubrec)).packet_id == packet_id
        await c.send(Publish("flood/t", b"x", 2, packet_id=3))  # third without PUBREL
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x93


# -- maximum packet size ----------------------------------------------------------------------


async def test_packet_above_the_broker_maximum_packet_size_is_disconnected(broker_factory):
    async with broker_factory(max_packet_size=1024) as broker, connected(broker.port(), "big-pub") as c:
        assert c.connack.properties["maximum_packet_size"] == 1024
        assert (await c.publish("big/t", b"x" * 900, qos=1)).reason_code == 0x10  # under the limit
        await c.send(Publish("big/t", b"x" * 2000, 1, packet_id=2))
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x95


async def test_broker_never_sends_a_packet_above_the_client_maximum_packet_size(broker, paho_client):
    recorder = DropRecorder()
    async with registered(broker, recorder):
        sub = paho_client("small-sub", paho.MQTTv5)
        await sub.connect(broker.port(), properties=paho_props(PacketTypes.CONNECT, MaximumPacketSize=100))
        await sub.subscribe("mps/t", 1)
        async with connected(broker.port(), "mps-pub") as pub:
            await pub.publish("mps/t", b"L" * 500, qos=1)
            await pub.publish("mps/t", b"small", qos=1)
            await pub.publish("mps/t", b"S" * 80)  # 80 + headers: still under 100 bytes
        first = await sub.receive()
        second = await sub.receive()
        assert (first.payload, second.payload) == (b"small", b"S" * 80)
        assert await sub.nothing_received()
    assert recorder.drops == [("small-sub", b"L" * 500, "max_packet_size_exceeded")]


# -- message expiry ------------------------------------------------------------------------------


async def test_queued_message_expires_and_a_later_one_carries_its_remaining_expiry(broker):
    port = broker.port()
    recorder = DropRecorder()
    async with registered(broker, recorder):
        async with connected(port, "exp-sub", properties={"session_expiry_interval": 60}) as sub:
            await sub.subscribe("exp/t", qos=1)
            await sub.disconnect()
            await sub.closed()
        async with connected(port, "exp-pub") as pub:
            acks = [
                await pub.publish("exp/t", b"short", qos=1, properties={"message_expiry_interval": 1}),
                await pub.publish("exp/t", b"long", qos=1, properties={"message_expiry_interval": 60}),
            ]
        assert [a.reason_code for a in acks] == [0, 0]  # queued for an offline subscriber
        await trio.sleep(1.2)
        async with connected(port, "exp-sub", clean_start=False, properties={"session_expiry_interval": 60}) as sub:
            assert sub.connack.session_present
            message = await sub.receive()
            assert message.payload == b"long"
            assert 0 < message.properties["message_expiry_interval"] < 60
            assert await sub.nothing_received()
    assert ("exp-sub", b"short", "expired") in recorder.drops


async def test_live_message_keeps_its_message_expiry_interval(broker, paho_client):
    sub = paho_client("exp-live", paho.MQTTv5)
    await sub.connect(broker.port())
    await sub.subscribe("expl/t", 1)
    pub = paho_client("exp-live-pub", paho.MQTTv5)
    await pub.connect(broker.port())
    await pub.publish("expl/t", b"x", 1, properties=paho_props(PacketTypes.PUBLISH, MessageExpiryInterval=30))
    message = await sub.receive()
    assert message.properties.MessageExpiryInterval in (29, 30)
