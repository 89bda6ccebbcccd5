"""The cluster plugin end to end: ternmq nodes joined through a real Redis.

A ``redis-server`` of the test's own (a free port, nothing saved, its folder temporary)
serves the whole file; every test has a key prefix of its own, so no test sees another's
nodes. Most tests run several brokers in one trio test (``open_broker``, node names set
per broker); the last one runs three ``ternmq`` processes, reads ``ternmq-admin cluster
show`` and kills one of them with SIGKILL.
"""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import coredis
import httpx
import pytest
import trio

from ternmq.kernel import CommandError, ConfigError, Message, Table, Text
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Puback, Pubcomp, Publish, Pubrec, Pubrel, SubscriptionRequest
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, test_config
from ternmq.kernel.values.config import Config, ListenerConfig, PluginEntry, load_config, parse_config
from ternmq.plugins.cluster import Plugin, questions
from ternmq.plugins.cluster.frames import decode_frame, encode_control, encode_frame, inbox_channel, pack_frame
from ternmq.plugins.cluster.routes import notice, routes_key

from helpers import (
    ClusterNode,
    answers_ping,
    cluster_processes,
    connected,
    eventually,
    eventually_sync,
    free_port,
    redis_client,
)

QUIET = 0.2  # seconds a client waits to show that nothing more comes


pytestmark = pytest.mark.usefixtures("no_tracebacks")


# -- Redis --------------------------------------------------------------------------------


# -- nodes --------------------------------------------------------------------------------


def node_config(
    redis_url: str,
    prefix: str,
    name: str,
    /,
    *,
    listeners: tuple[ListenerConfig, ...] | None = None,
    **table: Any,
) -> Config:
    """The test config (retainer loaded) of node ``name``, ``[cluster]`` first."""
    config = test_config(plugins={"retainer": {}}, listeners=listeners)
    config = attrs.evolve(config, broker=attrs.evolve(config.broker, node_name=name))
    entry = PluginEntry("cluster", True, {"redis_url": redis_url, "prefix": prefix, **table})
    return attrs.evolve(config, plugins=(entry, *config.plugins))


def cluster(broker: Broker) -> Plugin:
    plugin = broker.plugins.loaded["cluster"].plugin
    assert isinstance(plugin, Plugin)
    return plugin


def counter(broker: Broker, name: str) -> int | float:
    return broker.service.metrics()[f"counter.{name}"]


@asynccontextmanager
async def nodes(
    redis_url: str, prefix: str, *names: str, listeners: tuple[ListenerConfig, ...] | None = None, **table: Any
) -> AsyncIterator[tuple[Broker, ...]]:
    """Brokers ``names`` of one cluster, returned once each sees every other running."""
    async with AsyncExitStack() as stack:
        brokers = []
        for name in names:
            config = node_config(redis_url, prefix, name, listeners=listeners, **table)
            brokers.append(await stack.enter_async_context(open_broker(config)))
        await eventually(
            lambda: all(cluster(b).running(n) for b in brokers for n in names if n != b.node_name),
            message="the nodes see each other",
        )
        yield tuple(brokers)


async def routed(broker: Broker, topic: str, *to: str) -> None:
    """Until ``broker`` knows that exactly the nodes ``to`` want ``topic``."""
    await eventually(
        lambda: cluster(broker).routes.nodes_for(topic) == set(to),
        message=f"{broker.node_name} routes {topic} to {set(to)}",
    )


async def show(broker: Broker) -> list[dict[str, Any]]:
    table = await broker.service.run_command(["cluster", "show"])
    assert isinstance(table, Table) and table.columns == ("Node", "Running")
    return [dict(row) for row in table.rows]


async def received_all(client: MQTTTestClient, count: int) -> list[tuple[str, bytes, int]]:
    """``count`` messages as (topic, payload, qos), then proof that nothing more comes."""
    got = []
    for _ in range(count):
        packet = await client.receive()
        got.append((packet.topic, packet.payload, packet.qos))
    assert await client.nothing_received(QUIET), "a copy too many"
    return got


# -- forwarding ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", [4, 5])
async def test_a_subscriber_on_b_gets_what_a_publishes_at_every_qos_downgraded_per_subscription(
    redis_url: str, prefix: str, level: int
) -> None:
    async with (
        nodes(redis_url, prefix, "a@test", "b@test") as (a, b),
        connected(b, "sub-b", level) as subscriber,
        connected(a, "pub-a") as publisher,
    ):
        suback = await subscriber.subscribe(
            SubscriptionRequest("q/0", 0), SubscriptionRequest("q/1", 1), SubscriptionRequest("q/2", 2)
        )
        assert suback.reason_codes == [0, 1, 2]
        for granted in range(3):
            await routed(a, f"q/{granted}", "b@test")
        for sub_qos in range(3):
            for pub_qos in range(3):
                await publisher.publish(f"q/{sub_qos}", f"{pub_qos}->{sub_qos}".encode(), qos=pub_qos)
        got = await received_all(subscriber, 9)
        expected = [
            (f"q/{sub_qos}", f"{pub_qos}->{sub_qos}".encode(), min(pub_qos, sub_qos))
            for sub_qos in range(3)
            for pub_qos in range(3)
        ]
        assert sorted(got) == sorted(expected)
        assert counter(a, "cluster_forwarded") == 9 and counter(b, "cluster_received") == 9
        assert counter(a, "cluster_dropped") == 0 and counter(b, "cluster_frame_gaps") == 0


@pytest.mark.parametrize("qos", [1, 2])
async def test_a_publisher_whose_only_subscriber_is_on_another_node_is_not_told_no_matching_subscribers(
    redis_url: str, prefix: str, qos: int
) -> None:
    async with (
        nodes(redis_url, prefix, "a@test", "b@test") as (a, b),
        connected(b, "sub-b") as subscriber,
        connected(a, "pub-a") as publisher,
    ):
        await subscriber.subscribe("ack/#", qos=qos)
        await routed(a, "ack/x", "b@test")
        # PUBACK at QoS 1, PUBREC at QoS 2 (MQTTTestClient.publish hides a PUBREC under 0x80).
        await publisher.send(Publish("ack/x", b"acknowledged", qos, False, False, 1, {}))
        answer = await publisher.expect(Puback if qos == 1 else Pubrec)
        if qos == 2:
            await publisher.send(Pubrel(1))
            await publisher.expect(Pubcomp)
        assert await received_all(subscriber, 1) == [("ack/x", b"acknowledged", qos)]
        assert answer.reason_code == 0, answer


async def test_mqtt5_properties_and_retain_flag_travel_with_the_message(redis_url: str, prefix: str) -> None:
    async with (
        nodes(redis_url, prefix, "a@test", "b@test") as (a, b),
        connected(b, "sub-b") as subscriber,
        connected(a, "pub-a") as publisher,
    ):
        await subscriber.subscribe(SubscriptionRequest("p/#", 1, retain_as_published=True))
        await routed(a, "p/x", "b@test")
        properties = {"content_type": "text/plain", "user_property": [("k", "v")], "message_expiry_interval": 60}
        await publisher.publish("p/x", b"with properties", qos=1, properties=properties)
        packet = await subscriber.receive()
        assert (packet.topic, packet.payload, packet.qos, packet.retain) == ("p/x", b"with properties", 1, False)
        assert packet.properties["content_type"] == "text/plain"
        assert packet.properties["user_property"] == [("k", "v")]
        assert 0 < packet.properties["message_expiry_interval"] <= 60


async def test_wildcard_subscriptions_get_only_the_topics_they_match(redis_url: str, prefix: str) -> None:
    async with (
        nodes(redis_url, prefix, "a@test", "b@test") as (a, b),
        connected(b, "sub-b") as subscriber,
        connected(a, "pub-a") as publisher,
    ):
        await subscriber.subscribe("w/+/x", "w/deep/#", qos=1)
        await routed(a, "w/one/x", "b@test")
        await routed(a, "w/deep/1/2", "b@test")
        assert cluster(a).routes.nodes_for("w/one/y") == set()
        for topic in ("w/one/x", "w/one/y", "w/deep/1/2", "w/deep", "w/two/x/more", "other"):
            await publisher.publish(topic, topic.encode(), qos=1)
        got = await received_all(subscriber, 3)
        assert sorted(topic for topic, _, _ in got) == ["w/deep", "w/deep/1/2", "w/one/x"]
        # What matched nothing on b was not even sent there.
        assert counter(a, "cluster_forwarded") == 3 and counter(b, "cluster_received") == 3


async def test_a_local_subscriber_gets_one_copy_and_a_node_without_subscribers_nothing(
    redis_url: str, prefix: str
) -> None:
    async with (
        nodes(redis_url, prefix, "a@test", "b@test", "c@test") as (a, b, c),
        connected(a, "sub-a") as local,
        connected(b, "sub-b") as remote,
        connected(c, "idle-c") as idle,
        connected(a, "pub-a") as publisher,
    ):
        await local.subscribe("one/#", qos=1)
        await remote.subscribe("one/#", qos=1)
        await idle.subscribe("elsewhere/#", qos=1)
        await routed(a, "one/x", "b@test")
        await routed(a, "elsewhere/x", "c@test")
        await publisher.publish("one/x", b"once", qos=1)
        assert await received_all(local, 1) == [("one/x", b"once", 1)]
        assert await received_all(remote, 1) == [("one/x", b"once", 1)]
        assert await idle.nothing_received(QUIET)
        assert counter(a, "cluster_forwarded") == 1
        assert counter(a, "cluster_received") == 0  # nothing came back to where it was published
        assert counter(b, "cluster_received") == 1
        assert counter(c, "cluster_received") == 0


async def test_three_nodes_subscribers_on_two_of_them_each_get_one_copy(redis_url: str, prefix: str) -> None:
    async with (
        nodes(redis_url, prefix, "a@test", "b@test", "c@test") as (a, b, c),
        connected(a, "sub-a1") as a1,
        connected(a, "sub-a2") as a2,
        connected(b, "sub-b1") as b1,
        connected(b, "sub-b2") as b2,
        connected(c, "pub-c") as publisher,
    ):
        for subscriber in (a1, a2, b1, b2):
            await subscriber.subscribe("three/+", qos=2)
        await routed(c, "three/x", "a@test", "b@test")
        assert await publisher.publish("three/x", b"each once", qos=2)
        for subscriber in (a1, a2, b1, b2):
            assert await received_all(subscriber, 1) == [("three/x", b"each once", 2)]
        # One message per node, not per subscriber: each node fans it out itself.
        assert counter(c, "cluster_forwarded") == 2
        assert (counter(a, "cluster_received"), counter(b, "cluster_received")) == (1, 1)


async def test_an_unsubscribed_filter_stops_being_forwarded_after_the_sweep(redis_url: str, prefix: str) -> None:
    async with (
        nodes(redis_url, prefix, "a@test", "b@test", route_sweep_interval=0.2) as (a, b),
        connected(b, "sub-b") as subscriber,
        connected(a, "pub-a") as publisher,
        redis_client(redis_url) as redis,
    ):
        await subscriber.subscribe("u/gone", "u/kept", qos=1)
        await routed(a, "u/gone", "b@test")
        assert await redis.smembers(routes_key(prefix, "b@test")) == {b"u/gone", b"u/kept"}
        await subscriber.unsubscribe("u/gone")
        await routed(a, "u/gone")  # within route_sweep_interval (and a little)
        assert await redis.smembers(routes_key(prefix, "b@test")) == {b"u/kept"}
        await publisher.publish("u/gone", b"nobody", qos=1)
        await publisher.publish("u/kept", b"somebody", qos=1)
        assert await received_all(subscriber, 1) == [("u/kept", b"somebody", 1)]
        assert counter(a, "cluster_forwarded") == 1 and counter(b, "cluster_received") == 1
        # A session that ends takes its filters with it too.
        await subscriber.disconnect()
        await routed(a, "u/kept")
        assert await redis.smembers(routes_key(prefix, "b@test")) == set()


async def test_a_retained_message_is_retained_on_every_node_and_an_empty_one_clears_it_everywhere(
    redis_url: str, prefix: str
) -> None:
    async with (
        nodes(redis_url, prefix, "a@test", "b@test", "c@test") as (a, b, c),
        connected(a, "pub-a") as publisher,
    ):

        async def retained(broker: Broker) -> list[tuple[str, bytes]]:
            return [(m.topic, m.payload) for m in await broker.service.retained("r/#")]

        assert await publisher.publish("r/1", b"kept", qos=1, retain=True)
        for node in (a, b, c):  # c and b have no subscriber: retained messages go everywhere
            await eventually(lambda node=node: retained(node), message=f"retained on {node.node_name}")
            assert await retained(node) == [("r/1", b"kept")]
        async with connected(c, "late-c") as late:
            await late.subscribe("r/#", qos=1)
            packet = await late.receive()
            assert (packet.topic, packet.payload, packet.retain) == ("r/1", b"kept", True)
        await publisher.publish("r/1", b"", qos=1, retain=True)
        for node in (a, b, c):
            await eventually(lambda node=node: _cleared(node), message=f"cleared on {node.node_name}")
            assert await retained(node) == []


async def _cleared(broker: Broker) -> bool:
    return not await broker.service.retained("r/#")


async def test_mountpoints_keep_their_topics_apart_across_nodes(redis_url: str, prefix: str) -> None:
    listeners = (ListenerConfig(name="plain", port=0), ListenerConfig(name="m", port=0, mountpoint="m1"))
    async with (
        nodes(redis_url, prefix, "a@test", "b@test", listeners=listeners) as (a, b),
        connected(b.port("m"), "sub-b-m1") as mounted,
        connected(b.port("plain"), "sub-b-plain") as plain,
        connected(a.port("m"), "pub-a-m1") as mounted_publisher,
        connected(a.port("plain"), "pub-a-plain") as plain_publisher,
    ):
        await mounted.subscribe("t/#", qos=1)
        await plain.subscribe("t/#", qos=1)
        await routed(a, "$mount/m1/t/x", "b@test")
        await routed(a, "t/x", "b@test")
        await mounted_publisher.publish("t/x", b"in m1", qos=1)
        await plain_publisher.publish("t/x", b"outside", qos=1)
        assert await received_all(mounted, 1) == [("t/x", b"in m1", 1)]
        assert await received_all(plain, 1) == [("t/x", b"outside", 1)]


# -- nodes: cluster show, leaving ---------------------------------------------------------


async def test_cluster_show_lists_every_node_running_and_a_node_that_stops_leaves(redis_url: str, prefix: str) -> None:
    names = ["a@test", "b@test", "c@test"]
    async with nodes(redis_url, prefix, "a@test", "b@test") as (a, b), redis_client(redis_url) as redis:
        async with open_broker(node_config(redis_url, prefix, "c@test")) as c:
            for node in (a, b, c):
                await eventually(lambda node=node: len(cluster(node).heartbeats) == 3)
                assert await show(node) == [{"Node": name, "Running": True} for name in names]
                assert [(info.name, info.running) for info in await node.service.nodes()] == [
                    (name, True) for name in names
                ]
            assert set(await redis.hkeys(f"{prefix}:nodes")) == {name.encode() for name in names}
            async with connected(c, "sub-c") as subscriber:
                await subscriber.subscribe("leaving/#", qos=1)
                await routed(a, "leaving/x", "c@test")
        # c stopped cleanly: it left at once (no waiting for its heartbeat to age).
        for node in (a, b):
            await eventually(lambda node=node: len(cluster(node).heartbeats) == 2, timeout=3)
            assert await show(node) == [{"Node": "a@test", "Running": True}, {"Node": "b@test", "Running": True}]
        assert set(await redis.hkeys(f"{prefix}:nodes")) == {b"a@test", b"b@test"}
        assert not await redis.exists([routes_key(prefix, "c@test")])
        assert cluster(a).routes.nodes_for("leaving/x") == set()


async def test_a_broker_without_the_plugin_shows_itself_alone() -> None:
    async with open_broker() as broker:
        assert await show(broker) == [{"Node": broker.node_name, "Running": True}]


async def test_frames_batch_many_messages_and_the_metrics_count_them(redis_url: str, prefix: str) -> None:
    async with (
        nodes(redis_url, prefix, "a@test", "b@test", linger=0.3) as (a, b),
        connected(b, "sub-b") as subscriber,
        connected(a, "pub-a") as publisher,
        redis_client(redis_url) as redis,
    ):
        await subscriber.subscribe("batch/#", qos=0)
        await routed(a, "batch/x", "b@test")
        frames: list[bytes] = []
        async with redis.pubsub(channels=[inbox_channel(prefix, "b@test")], ignore_subscribe_messages=True) as pubsub:
            for number in range(20):
                await publisher.publish(f"batch/{number}", b"%d" % number, qos=0)
            got = await received_all(subscriber, 20)
            with trio.move_on_after(QUIET):
                async for item in pubsub:
                    if item["type"] == "message":
                        frames.append(item["data"])
        assert sorted(payload for _, payload, _ in got) == sorted(b"%d" % n for n in range(20))
        decoded = [decode_frame(frame) for frame in frames]
        # Everything published within one linger went out in one Redis PUBLISH.
        assert [(f.node, len(f.messages)) for f in decoded] == [("a@test", 20)]
        assert counter(a, "cluster_forwarded") == 20 and counter(b, "cluster_received") == 20
        assert counter(a, "cluster_dropped") == 0 and counter(b, "cluster_frame_gaps") == 0


# -- frames sent by hand ------------------------------------------------------------------


def frame(
    sequence: int,
    topic: str,
    payload: bytes,
    node: str = "ghost@test",
    incarnation: str = "1",
    base: int | None = None,
) -> bytes:
    """A message frame as a node sends it: one QoS 1 message, no publisher client id, no
    shared group to serve; ``base``, the oldest frame the sender keeps (itself)."""
    message = Message(topic, payload, qos=1)
    return encode_frame(node, incarnation, sequence, [(message, None, frozenset())], base=base)


async def next_frame(pubsub: Any) -> Any:
    """The next frame (or control frame) published on the channel ``pubsub`` reads."""
    with trio.fail_after(5):
        async for item in pubsub:
            if item["type"] == "message":
                return decode_frame(item["data"])
    raise AssertionError("the subscription ended")


@asynccontextmanager
async def ghost_sending_to_b(
    redis_url: str, prefix: str, topic_filter: str
) -> AsyncIterator[tuple[Broker, MQTTTestClient, coredis.Redis[bytes], Any, str]]:
    """Node b with a subscriber to ``topic_filter``, and a node "ghost@test" played by
    hand: (b, the subscriber, a Redis client, ghost's inbox as read, b's inbox)."""
    async with (
        nodes(redis_url, prefix, "b@test") as (b,),
        connected(b, "sub-b") as subscriber,
        redis_client(redis_url) as redis,
        redis.pubsub(channels=[inbox_channel(prefix, "ghost@test")]) as acknowledgements,
    ):
        await subscriber.subscribe(topic_filter, qos=1)
        yield b, subscriber, redis, acknowledgements, inbox_channel(prefix, "b@test")


async def test_a_frame_after_a_gap_is_held_back_asked_for_again_and_delivered_in_order(
    redis_url: str, prefix: str
) -> None:
    async with ghost_sending_to_b(redis_url, prefix, "gap/#") as (b, subscriber, redis, acknowledgements, inbox):
        for sequence in (1, 2):
            assert await redis.publish(inbox, frame(sequence, "gap/x", b"%d" % sequence)) == 1
        assert await received_all(subscriber, 2) == [("gap/x", b"1", 1), ("gap/x", b"2", 1)]
        ack = await next_frame(acknowledgements)
        assert (ack.kind, ack.body["inc"], ack.body["seq"], ack.body["resend"]) == ("ack", "1", 2, False)
        assert counter(b, "cluster_frame_gaps") == 0
        await redis.publish(inbox, frame(4, "gap/x", b"4", base=3))  # 3 was lost
        assert await subscriber.nothing_received(QUIET)  # 4 waits: one publisher's order holds
        ack = await next_frame(acknowledgements)
        assert (ack.body["seq"], ack.body["resend"]) == (2, True)  # everything after 2, again
        assert counter(b, "cluster_frame_gaps") == 1
        await eventually(lambda: counter(b, "cluster_resyncs") == 1)  # routes read again after a gap
        for sequence in (3, 4, 4):  # the sender sends 3 and 4 again (and 4 a third time)
            await redis.publish(inbox, frame(sequence, "gap/x", b"%d" % sequence, base=3))
        assert await received_all(subscriber, 2) == [("gap/x", b"3", 1), ("gap/x", b"4", 1)]
        await redis.publish(inbox, frame(1, "gap/x", b"other", node="other@test"))  # a sender of its own
        await redis.publish(inbox, frame(1, "gap/x", b"restarted", incarnation="2"))  # ghost, started again
        assert [payload for _, payload, _ in await received_all(subscriber, 2)] == [b"other", b"restarted"]
        assert counter(b, "cluster_frame_gaps") == 1
        assert counter(b, "cluster_received") == 6
        # The sender gave 2..4 of this run up (dropped, counted there): 5, based on 5, goes on.
        await redis.publish(inbox, frame(5, "gap/x", b"5", incarnation="2", base=5))
        assert [payload for _, payload, _ in await received_all(subscriber, 1)] == [b"5"]


async def test_a_node_started_again_gets_every_frame_its_sender_kept_in_order(redis_url: str, prefix: str) -> None:
    async with ghost_sending_to_b(redis_url, prefix, "again/#") as (_, subscriber, redis, acknowledgements, inbox):
        # b is new to ghost's run: ghost still keeps 10..13 (b's earlier run got 10..12 and
        # died before acknowledging them), and 13 is the first b sees.
        await redis.publish(inbox, frame(13, "again/x", b"13", base=10))
        assert await subscriber.nothing_received(QUIET)
        ack = await next_frame(acknowledgements)
        assert (ack.body["seq"], ack.body["resend"]) == (9, True)
        for sequence in (10, 11, 12, 13):
            await redis.publish(inbox, frame(sequence, "again/x", b"%d" % sequence, base=10))
        assert [payload for _, payload, _ in await received_all(subscriber, 4)] == [b"10", b"11", b"12", b"13"]


async def test_frames_a_node_does_not_acknowledge_are_sent_again_until_it_does(redis_url: str, prefix: str) -> None:
    async with (
        nodes(redis_url, prefix, "a@test") as (a,),
        redis_client(redis_url) as redis,
        redis.pubsub(channels=[inbox_channel(prefix, "ghost@test")]) as ghost,
    ):
        # A node that listens and never acknowledges: it runs (a heartbeat for a while)
        # and subscribes to rs/#.
        await redis.hset(f"{prefix}:nodes", {"ghost@test": repr(time.time() + 60)})
        await redis.publish(f"{prefix}:routes", notice("ghost@test", added=["rs/#"]))
        await routed(a, "rs/x", "ghost@test")
        await a.service.publish("rs/x", b"once", qos=1)
        first = await next_frame(ghost)
        again = await next_frame(ghost)  # RESEND_AFTER later
        assert again == first and [m.payload for m, _, _ in first.messages] == [b"once"]
        assert counter(a, "cluster_resent") >= 1
        ack = encode_control("ack", "ghost@test", inc=cluster(a).incarnation, seq=first.sequence, resend=False)
        await redis.publish(inbox_channel(prefix, "a@test"), ack)
        await eventually(lambda: not cluster(a)._peers["ghost@test"].unacked, message="acknowledged")
        with trio.move_on_after(1.0):  # two RESEND_AFTERs: nothing more comes
            extra = await next_frame(ghost)
            raise AssertionError(f"sent again after its acknowledgement: {extra}")
        await redis.hdel(f"{prefix}:nodes", ["ghost@test"])


# A message as a frame's flat fields: topic, payload, QoS, retain, created_at, origin,
# groups, properties (frames.py); each bad frame below spoils one thing.
GOOD = ["bad/x", b"fine", 1, False, 0.0, None, None, None]
BAD_FRAMES = [
    pytest.param(b"not json", id="not-json"),  # nor MessagePack
    pytest.param(b'{"node": "ghost@test", "kind": ', id="control-not-json"),
    pytest.param(b"\x94\xa2\xff\xfe\xa11\x01\x90", id="not-utf8"),  # the node's name
    pytest.param(pack_frame({"node": "ghost@test", "inc": "1", "seq": 1, "messages": []}), id="a-map"),
    pytest.param(pack_frame(["ghost@test", "1", 1, 1, 1]), id="no-messages"),
    pytest.param(pack_frame(["ghost@test", None, 1, 1, []]), id="no-incarnation"),
    pytest.param(pack_frame(["ghost@test", "1", "x", 1, []]), id="seq-not-a-number"),
    pytest.param(pack_frame(["ghost@test", "1", 1, "x", []]), id="base-not-a-number"),
    pytest.param(pack_frame(["ghost@test", "1", 1, 2, []]), id="base-after-the-frame"),
    pytest.param(pack_frame(["ghost@test", "1", 1, 1, 5]), id="messages-not-a-list"),
    pytest.param(pack_frame(["ghost@test", "1", 1, 1, GOOD[:3]]), id="half-a-message"),
    pytest.param(pack_frame(["ghost@test", "1", 1, 1, ["bad/x", "text", *GOOD[2:]]]), id="payload-not-binary"),
    pytest.param(pack_frame(["ghost@test", "1", 1, 1, [*GOOD[:2], 7, *GOOD[3:]]]), id="bad-qos"),
    pytest.param(pack_frame(["ghost@test", "1", 1, 1, ["bad/#", *GOOD[1:]]]), id="wildcard-topic"),
    pytest.param(pack_frame(["ghost@test", "1", 1, 1, [*GOOD[:6], [["g"]], None]]), id="groups-not-pairs"),
    pytest.param(
        pack_frame(["ghost@test", "1", 1, 1, [*GOOD[:7], {"message_expiry_interval": "x"}]]), id="bad-property"
    ),
    pytest.param(pack_frame(["ghost@test", "1", 1, 1, [*GOOD, *GOOD[:2], 7, *GOOD[3:]]]), id="one-good-one-bad"),
]


@pytest.mark.parametrize("data", BAD_FRAMES)
async def test_a_frame_that_does_not_decode_is_logged_and_nothing_breaks(
    redis_url: str, prefix: str, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    await _send_bad_frame_then_forward(redis_url, prefix, data, caplog)


async def test_a_frame_whose_sequence_overflows_is_logged_and_nothing_breaks(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    await _send_bad_frame_then_forward(redis_url, prefix, pack_frame(["ghost@test", "1", 1e400, 1, []]), caplog)


async def _send_bad_frame_then_forward(
    redis_url: str, prefix: str, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ternmq")
    async with (
        nodes(redis_url, prefix, "a@test", "b@test") as (a, b),
        connected(b, "sub-b") as subscriber,
        connected(a, "pub-a") as publisher,
        redis_client(redis_url) as redis,
    ):
        await subscriber.subscribe("bad/#", "fine/#", qos=1)
        await routed(a, "fine/x", "b@test")
        assert await redis.publish(inbox_channel(prefix, "b@test"), data) == 1
        await eventually(
            lambda: (
                any("frame that does not read" in r.getMessage() for r in caplog.records)
                or b.plugins.loaded["cluster"].state != "running"
            ),
            message="the bad frame was logged",
        )
        assert b.plugins.loaded["cluster"].state == "running"
        warnings = [r for r in caplog.records if "frame that does not read" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert counter(b, "cluster_received") == 0 and counter(b, "cluster_frame_gaps") == 0
        # Nothing broke: forwarding goes on both ways.
        await publisher.publish("fine/x", b"after", qos=1)
        assert await received_all(subscriber, 1) == [("fine/x", b"after", 1)]
        await publisher.subscribe("back/#", qos=1)
        await routed(b, "back/x", "a@test")
        await subscriber.publish("back/x", b"back", qos=1)
        assert await received_all(publisher, 1) == [("back/x", b"back", 1)]


@pytest.mark.parametrize(
    "notice", [b'{"node": "ghost@test", "add": 5}', b"[" * 100_000], ids=["add-not-a-list", "nested-too-deep"]
)
async def test_a_route_notice_that_does_not_read_is_logged_and_nothing_breaks(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture, notice: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="ternmq")
    async with (
        nodes(redis_url, prefix, "a@test", "b@test") as (a, b),
        connected(b, "sub-b") as subscriber,
        connected(a, "pub-a") as publisher,
        redis_client(redis_url) as redis,
    ):
        await redis.publish(f"{prefix}:routes", notice)
        await eventually(
            lambda: (
                any("route notice that does not read" in r.getMessage() for r in caplog.records)
                or a.plugins.loaded["cluster"].state != "running"
            ),
        )
        assert a.plugins.loaded["cluster"].state == "running"
        await subscriber.subscribe("fine/#", qos=1)
        await routed(a, "fine/x", "b@test")
        await publisher.publish("fine/x", b"after", qos=1)
        assert await received_all(subscriber, 1) == [("fine/x", b"after", 1)]


async def test_a_node_restarted_under_the_same_name_is_not_counted_as_a_gap(redis_url: str, prefix: str) -> None:
    async with nodes(redis_url, prefix, "a@test") as (a,), connected(a, "sub-a") as subscriber:
        await subscriber.subscribe("restart/#", qos=1)
        for run in range(2):
            async with open_broker(node_config(redis_url, prefix, "b@test")) as b:
                await routed(b, "restart/x", "a@test")
                async with connected(b, f"pub-b-{run}") as publisher:
                    await publisher.publish("restart/x", b"run %d" % run, qos=1)
                assert await received_all(subscriber, 1) == [("restart/x", b"run %d" % run, 1)]
        assert counter(a, "cluster_received") == 2
        assert counter(a, "cluster_frame_gaps") == 0


# -- configuration ------------------------------------------------------------------------


async def _start_fails(config: Config) -> pytest.ExceptionInfo[ExceptionGroup[Any]]:
    with pytest.raises(ExceptionGroup) as caught:
        with trio.fail_after(10):
            async with open_broker(config):
                pass
    return caught


@pytest.mark.parametrize(
    ("table", "match"),
    [
        pytest.param({"redis_url": "http://127.0.0.1:6379"}, r"\[cluster\]: redis_url: not a redis://", id="bad-url"),
        pytest.param({"redis_url": 6379}, r"\[cluster\] redis_url: ", id="url-not-a-string"),
        pytest.param(
            {"heartbeat_interval": 2.0, "node_timeout": 2.0},
            r"\[cluster\]: node_timeout must be longer than heartbeat_interval",
            id="timeout-equal",
        ),
        pytest.param(
            {"heartbeat_interval": 2.0, "node_timeout": 1.0},
            r"\[cluster\]: node_timeout must be longer than heartbeat_interval",
            id="timeout-shorter",
        ),
        pytest.param({"heartbeat_interval": 0}, r"\[cluster\] heartbeat_interval: ", id="heartbeat-zero"),
        pytest.param({"linger": -1}, r"\[cluster\] linger: ", id="linger-negative"),
        pytest.param({"prefix": ""}, r"\[cluster\] prefix: ", id="prefix-empty"),
        pytest.param({"redis": "x"}, r"\[cluster\] redis: unknown key", id="unknown-key"),
    ],
)
async def test_a_bad_cluster_table_fails_the_start_naming_it(
    redis_url: str, prefix: str, table: dict[str, Any], match: str
) -> None:
    caught = await _start_fails(node_config(redis_url, prefix, "a@test", **table))
    assert caught.group_contains(ConfigError, match=match, depth=2)


async def test_a_cluster_table_without_redis_url_fails_the_start(prefix: str) -> None:
    config = node_config("redis://unused", prefix, "a@test")
    entry = PluginEntry("cluster", True, {"prefix": prefix})
    caught = await _start_fails(attrs.evolve(config, plugins=(entry, *config.plugins[1:])))
    assert caught.group_contains(ConfigError, match=r"\[cluster\] redis_url: is required", depth=2)


async def test_a_redis_that_does_not_answer_fails_the_start_naming_the_cluster_table_and_why(prefix: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.monotonic()
    caught = await _start_fails(node_config(url, prefix, "a@test"))
    assert caught.group_contains(
        ConfigError, match=rf"\[cluster\]: failed to start: .*cannot reach Redis at {re.escape(url)}", depth=2
    )
    assert time.monotonic() - started < 5


async def test_a_redis_that_accepts_but_never_answers_fails_the_start_within_node_timeout(prefix: str) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections are accepted (the backlog) and never answered
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        config = node_config(url, prefix, "a@test", heartbeat_interval=0.2, node_timeout=1.0)
        started = time.monotonic()
        with trio.move_on_after(4) as waited:
            caught = await _start_fails(config)
        assert not waited.cancel_called, f"the start still waited for Redis after {time.monotonic() - started:.1f} s"
        assert caught.group_contains(ConfigError, match=r"\[cluster\]: failed to start: ", depth=2)


def test_plugins_cluster_is_refused_pointing_at_the_cluster_table() -> None:
    data = {"plugins": {"cluster": {"redis_url": "redis://127.0.0.1/0"}}}
    with pytest.raises(ConfigError, match=r"f\.toml: \[plugins\.cluster\]: configured by the \[cluster\] table"):
        parse_config(data, "f.toml")
    both = {"cluster": {"redis_url": "redis://127.0.0.1/0"}, "plugins": {"cluster": {"redis_url": "redis://x/0"}}}
    with pytest.raises(ConfigError, match=r"\[plugins\.cluster\]: configured by the \[cluster\] table"):
        parse_config(both, "f.toml")


def test_plugins_cluster_equal_to_the_cluster_table_is_refused_too() -> None:
    table = {"redis_url": "redis://127.0.0.1/0"}
    with pytest.raises(ConfigError, match=r"\[plugins\.cluster\]: configured by the \[cluster\] table"):
        parse_config({"cluster": dict(table), "plugins": {"cluster": dict(table)}}, "f.toml")


def test_a_config_file_with_a_cluster_table_parses_with_cluster_first(tmp_path: Path) -> None:
    file = tmp_path / "ternmq.toml"
    file.write_text(
        "[plugins.retainer]\n\n"
        "[cluster]\n"
        'redis_url = "redis://127.0.0.1:6379/0"\n'
        'prefix = "shop"\n'
        "heartbeat_interval = 0.5\n"
        "node_timeout = 2.0\n"
    )
    config = load_config(file)
    assert [entry.name for entry in config.plugins] == ["cluster", "retainer"]
    assert config.plugins[0] == PluginEntry(
        "cluster",
        True,
        {"redis_url": "redis://127.0.0.1:6379/0", "prefix": "shop", "heartbeat_interval": 0.5, "node_timeout": 2.0},
    )
    file.write_text('[cluster]\nenabled = false\nredis_url = "redis://127.0.0.1:6379/0"\n')
    assert load_config(file).plugins == (PluginEntry("cluster", False, {"redis_url": "redis://127.0.0.1:6379/0"}),)
    file.write_text("[cluster]\nenabled = 1\n")
    with pytest.raises(ConfigError, match=r"\[cluster\] enabled: must be true or false"):
        load_config(file)
    file.write_text('cluster = "on"\n')
    with pytest.raises(ConfigError, match=r"\[cluster\]: must be a table"):
        load_config(file)


# -- real processes -----------------------------------------------------------------------


@pytest.fixture
def processes(redis_url: str, prefix: str) -> Iterator[list[ClusterNode]]:
    with cluster_processes(redis_url, prefix) as started:
        yield started


async def until_forwarded(publisher: MQTTTestClient, subscriber: MQTTTestClient, topic: str) -> None:
    """Probe ``topic`` (QoS 0) until the subscriber on another node gets one (its route
    reached the publisher's node); the probes are read and gone when this returns."""

    async def probe() -> bool:
        await publisher.publish(topic, b"probe", qos=0)
        return not await subscriber.nothing_received(0.1)

    await eventually(probe, timeout=10, message=f"{topic} probes reach the subscriber")
    while not await subscriber.nothing_received(0.2):
        assert (await subscriber.receive()).topic == topic


async def reaches(publisher_port: int, subscriber_port: int, topic: str) -> None:
    """A QoS 1 message published on one node reaches a subscriber on the other."""
    async with connected(subscriber_port, f"sub-{topic}") as subscriber, connected(publisher_port) as publisher:
        await subscriber.subscribe(f"{topic}/#", qos=1)
        await until_forwarded(publisher, subscriber, f"{topic}/probe")
        await publisher.publish(f"{topic}/real", b"real", qos=1)
        with trio.fail_after(5):
            packet = await subscriber.receive()
        assert (packet.topic, packet.payload, packet.qos) == (f"{topic}/real", b"real", 1)


async def test_three_processes_route_every_qos_share_a_group_and_take_a_session_over(
    processes: list[ClusterNode],
) -> None:
    n1, n2, n3 = processes
    persistent = {"session_expiry_interval": 300}
    async with (
        connected(n2.port, "q-sub2") as sub2,
        connected(n3.port, "q-sub3") as sub3,
        connected(n1.port, "q-pub") as publisher,
    ):
        await sub2.subscribe("q/#", qos=2)
        await until_forwarded(publisher, sub2, "q/probe")
        for qos in (0, 1, 2):
            await publisher.publish(f"q/{qos}", b"%d" % qos, qos=qos)
        got = [await sub2.receive() for _ in range(3)]
        assert [(p.topic, p.payload, p.qos) for p in got] == [("q/0", b"0", 0), ("q/1", b"1", 1), ("q/2", b"2", 2)]
        # A shared group with a member on n2 and one on n3: each message once.
        for member in (sub2, sub3):
            await member.subscribe("$share/g/s/#", qos=1)
        probed: set[MQTTTestClient] = set()

        async def both_members_probed() -> bool:  # the group's routes reached n1
            await publisher.publish("s/probe", b"probe", qos=0)
            for member in (sub2, sub3):
                while not await member.nothing_received(0.05):
                    if (await member.receive()).topic == "s/probe":
                        probed.add(member)
            return len(probed) == 2

        await eventually(both_members_probed, timeout=10, message="both members get probes")
        for member in (sub2, sub3):
            while not await member.nothing_received(0.2):
                await member.receive()
        for number in range(20):
            await publisher.publish("s/x", b"%d" % number, qos=1)
        shares: dict[MQTTTestClient, list[int]] = {sub2: [], sub3: []}
        for member, numbers in shares.items():
            while not await member.nothing_received(0.5):
                numbers.append(int((await member.receive()).payload))
        assert sorted(shares[sub2] + shares[sub3]) == list(range(20))  # once each
        assert shares[sub2] and shares[sub3]  # both nodes' members served
    # Takeover across nodes: a live session on n2 moves to n3 with its queued message.
    async with MQTTTestClient.open(n2.port) as old, connected(n1.port, "mv-pub") as publisher:
        await old.connect("mover", clean_start=False, properties=persistent)
        await old.subscribe("mv/#", qos=1)
        await until_forwarded(publisher, old, "mv/probe")
        async with MQTTTestClient.open(n3.port) as new:
            assert (await new.connect("mover", clean_start=False, properties=persistent)).session_present
            disconnect = await old.closed()
            assert disconnect is not None and disconnect.reason_code == 0x8E
            await until_forwarded(publisher, new, "mv/probe")
            await publisher.publish("mv/2", b"to n3 now", qos=1)
            assert (await new.receive()).payload == b"to n3 now"


async def test_three_processes_show_each_other_forward_and_see_a_killed_node_stop(
    processes: list[ClusterNode],
) -> None:
    n1, n2, n3 = processes
    everyone = {node.name: "true" for node in processes}

    def shows(node: ClusterNode, expected: dict[str, str]) -> bool:
        return node.cluster_show() == expected

    await trio.to_thread.run_sync(lambda: eventually_sync(lambda: shows(n1, everyone), 10, interval=0.2))
    await reaches(n1.port, n3.port, "before")

    await trio.to_thread.run_sync(n2.kill)
    killed = {n1.name: "true", n2.name: "false", n3.name: "true"}
    for node in (n1, n3):  # after node_timeout (1 s) and a heartbeat or two
        await trio.to_thread.run_sync(lambda node=node: eventually_sync(lambda: shows(node, killed), 10, interval=0.2))
    await reaches(n1.port, n3.port, "after")


# -- client ids and shared subscriptions across nodes -------------------------------------------


async def test_connecting_to_another_node_takes_the_session_over_with_its_subscriptions_and_queue(
    redis_url: str, prefix: str
) -> None:
    persistent = {"session_expiry_interval": 300}
    async with nodes(redis_url, prefix, "a@t", "b@t") as (a, b):
        async with MQTTTestClient.open(a.port()) as old:
            await old.connect("mover", clean_start=False, properties=persistent)
            await old.subscribe("mv/#", qos=1)
            await old.disconnect()
        await eventually(lambda: a.sessions["mover"].connection is None)
        await a.service.publish("mv/queued", b"queued on a", qos=1)
        async with MQTTTestClient.open(a.port()) as online, MQTTTestClient.open(b.port()) as new:
            await online.connect("mover", clean_start=False, properties=persistent)
            assert (await online.receive()).payload == b"queued on a"
            connack = await new.connect("mover", clean_start=False, properties=persistent)
            assert connack.session_present  # resumed on b
            disconnect = await online.closed()
            assert disconnect is not None and disconnect.reason_code == 0x8E  # taken over
            assert "mover" not in a.sessions and "mover" in b.sessions
            await routed(a, "mv/x", "b@t")
            await a.service.publish("mv/x", b"to the new node", qos=1)
            assert (await new.receive()).payload == b"to the new node"
        assert counter(b, "cluster_takeovers") == 1
        async with MQTTTestClient.open(b.port()) as clean, MQTTTestClient.open(a.port()) as again:
            await clean.connect("clean-one")
            assert not (await again.connect("clean-one")).session_present  # a clean one ends
            assert await clean.closed() is not None


async def test_of_two_clean_connects_on_two_nodes_the_later_is_kept_though_its_claim_lands_first(
    redis_url: str, prefix: str
) -> None:
    # a's claims wait 0.3 s for their batch: its client's claim reaches Redis after b's.
    async with (
        open_broker(node_config(redis_url, prefix, "a@t", linger=0.3)) as a,
        open_broker(node_config(redis_url, prefix, "b@t")) as b,
        MQTTTestClient.open(a.port()) as first,
        MQTTTestClient.open(b.port()) as second,
    ):
        await eventually(lambda: cluster(a).running("b@t") and cluster(b).running("a@t"))
        assert (await first.connect("twice")).reason_code == 0  # not waiting for its claim
        await trio.sleep(0.02)
        assert (await second.connect("twice")).reason_code == 0
        disconnect = await first.closed()  # a's claim is the older one: a's client goes
        assert disconnect is not None and disconnect.reason_code == 0x8E
        assert await second.nothing_received(0.5) and "twice" in b.sessions
        await eventually(lambda: "twice" not in a.sessions)
        async with redis_client(redis_url) as redis:
            assert await redis.hget(f"{prefix}:clients", "twice") == b"b@t"


async def test_a_later_claim_of_a_node_that_is_down_does_not_keep_a_client_out(redis_url: str, prefix: str) -> None:
    async with nodes(redis_url, prefix, "a@t") as (a,), redis_client(redis_url) as redis:
        # A node that is down (no heartbeat) whose clock ran ahead claimed the id "later".
        await redis.hset(f"{prefix}:clients", {"ahead": "ghost@t"})
        await redis.hset(f"{prefix}:claimed_at", {"ahead": repr(time.time() + 3600)})
        async with MQTTTestClient.open(a.port()) as client:
            assert (await client.connect("ahead")).reason_code == 0
            await eventually(lambda: _holder(redis, prefix, "ahead", b"a@t"), message="a holds it")
            assert await client.nothing_received(0.3)  # not disconnected as the older one


async def _holder(redis: coredis.Redis[bytes], prefix: str, client_id: str, node: bytes) -> bool:
    return await redis.hget(f"{prefix}:clients", client_id) == node


async def test_a_shared_group_with_members_on_two_nodes_gets_each_message_once(redis_url: str, prefix: str) -> None:
    async with nodes(redis_url, prefix, "a@t", "b@t", "c@t") as (a, b, c):
        async with (
            MQTTTestClient.open(a.port()) as m1,
            MQTTTestClient.open(b.port()) as m2,
            MQTTTestClient.open(b.port()) as m3,
            MQTTTestClient.open(c.port()) as publisher,
        ):
            for number, member in enumerate((m1, m2, m3)):
                await member.connect(f"m{number}")
                await member.subscribe("$share/g/sh/#", qos=1)
            await eventually(lambda: cluster(c).routes.targets("sh/x")[1].get(("g", "sh/#"), []) == ["a@t", "b@t"])
            await publisher.connect("p")
            for number in range(20):
                await publisher.publish("sh/x", b"%d" % number, qos=1)
            await a.service.publish("sh/y", b"from a", qos=1)  # a has a member: it may serve it or not
            got: list[list[bytes]] = [[], [], []]
            for payloads, member in zip(got, (m1, m2, m3), strict=True):
                while not await member.nothing_received(QUIET):
                    payloads.append((await member.receive()).payload)
            everything = [payload for payloads in got for payload in payloads]
            assert sorted(everything) == sorted([b"%d" % n for n in range(20)] + [b"from a"])  # each once
            on_a, on_b = len(got[0]), len(got[1]) + len(got[2])
            assert abs(on_a - on_b) <= 2  # the nodes take turns


async def test_session_show_lists_every_node_and_disconnect_reaches_the_node_holding_the_client(
    redis_url: str, prefix: str
) -> None:
    async with nodes(redis_url, prefix, "a@t", "b@t") as (a, b):
        async with MQTTTestClient.open(a.port()) as on_a, MQTTTestClient.open(b.port()) as on_b:
            await on_a.connect("client-a")
            await on_b.connect("client-b")
            table = await a.service.run_command(["session", "show", "--client_id", "--node"])
            assert isinstance(table, Table)
            assert [(row["client_id"], row["node"]) for row in table.rows] == [("client-a", "a@t"), ("client-b", "b@t")]
            await eventually(lambda: b.sessions["client-b"].connection is not None)
            assert await a.service.run_command(["session", "disconnect", "client-id=client-b"]) == Text("Done")
            disconnect = await on_b.closed()
            assert disconnect is not None and disconnect.reason_code == 0x98  # kicked on b, asked on a
            with pytest.raises(CommandError, match="no session with client id 'nobody'"):
                await a.service.run_command(["session", "disconnect", "client-id=nobody"])


async def test_plugin_show_lists_every_nodes_plugins_and_leaves_out_a_node_that_does_not_answer(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        nodes(redis_url, prefix, "a@t", "b@t") as (a, b),
        registered(b, object(), name="only-on-b"),
        redis_client(redis_url) as redis,
    ):
        table = await a.service.run_command(["plugin", "show"])
        assert isinstance(table, Table) and table.columns[0] == "Node"
        assert [(row["Node"], row["Plugin"]) for row in table.rows] == [
            ("a@t", "cluster"),
            ("a@t", "retainer"),
            ("b@t", "cluster"),
            ("b@t", "retainer"),
            ("b@t", "only-on-b"),
        ]
        on_b = next(row for row in table.rows if row["Node"] == "b@t" and row["Plugin"] == "cluster")
        assert "cluster_plugins" in on_b["Hook(s)"] and on_b["state"] == "running"
        retainers = await a.service.run_command(["plugin", "show", "--plugin=retainer"])
        assert [row["Node"] for row in retainers.rows] == ["a@t", "b@t"]
        # A node that runs (its heartbeat is fresh) but does not answer: left out, logged.
        await redis.hset(f"{prefix}:nodes", {"ghost@t": repr(time.time() + 3)})
        await eventually(lambda: cluster(a).running("ghost@t"), message="a sees the ghost")
        table = await a.service.run_command(["plugin", "show"])
        assert {row["Node"] for row in table.rows} == {"a@t", "b@t"}
        assert "cluster: ghost@t did not list its plugins in time" in caplog.text
        await redis.hdel(f"{prefix}:nodes", ["ghost@t"])


async def test_metrics_show_sums_the_nodes_and_shows_one_node_or_each(redis_url: str, prefix: str) -> None:
    async def shown(broker: Broker, *flags: str) -> dict[str, str]:
        text = await broker.service.run_command(["metrics", "show", *flags])
        assert isinstance(text, Text)
        return dict(line.split(" = ") for line in text.text.splitlines())

    async with (
        nodes(redis_url, prefix, "a@t", "b@t") as (a, b),
        connected(a, "pub-a") as on_a,
        connected(b, "pub-b") as on_b,
    ):
        for _ in range(3):
            assert await on_a.publish("m/a", b"x", qos=1)
        assert await on_b.publish("m/retained", b"kept", qos=1, retain=True)
        await eventually(lambda: a.service.retained("m/#"), message="retained on a too")
        summed = await shown(a)
        assert summed["counter.publish_received"] == "4"  # 3 on a, 1 on b
        assert summed["gauge.clients_online"] == "2"
        assert summed["gauge.retained_messages"] == "1"  # every node's copy of one message
        assert (await shown(b))["counter.publish_received"] == "4"  # the same sum, asked on b
        assert (await shown(b, "--node=a@t"))["counter.publish_received"] == "3"
        assert (await shown(a, "--node=b@t"))["counter.publish_received"] == "1"
        per_node = await shown(a, "--per-node")
        assert per_node['counter.publish_received{node="a@t"}'] == "3"
        assert per_node['counter.publish_received{node="b@t"}'] == "1"
        assert per_node['gauge.retained_messages{node="b@t"}'] == "1"
        assert "counter.publish_received" not in per_node
        apart = await shown(a, "--per-node", "--aggregate=false")
        assert apart['counter.packets_received{node="a@t",type="PUBLISH"}'] == "3"
        assert apart['counter.packets_received{node="b@t",type="PUBLISH"}'] == "1"
        assert (await shown(a, "--type=PUBLISH"))["counter.packets_received"] == "4"
        with pytest.raises(CommandError, match="no node c@t answered"):
            await shown(a, "--node=c@t")


async def test_a_node_that_joins_late_gets_the_retained_messages_it_has_none_of(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(questions, "RETAINED_PAGE_MESSAGES", 2)  # several pages
    topics = [f"r/{n}" for n in range(5)]
    async with nodes(redis_url, prefix, "a@t", "b@t") as (a, b):
        for topic in topics:
            await a.service.publish(topic, f"from a: {topic}".encode(), qos=1, retain=True)
        await a.service.publish("$mount/m1/r/x", b"in m1", qos=0, retain=True)
        await eventually(lambda: _count_retained(b, 5), message="retained on b")
        # c runs alone first (its own r/0), then joins: the cluster plugin loaded at run time.
        alone = test_config(plugins={"retainer": {}})
        async with open_broker(attrs.evolve(alone, broker=attrs.evolve(alone.broker, node_name="c@t"))) as c:
            await c.service.publish("r/0", b"c's own", qos=1, retain=True)
            await c.service.load_plugin("cluster", {"redis_url": redis_url, "prefix": prefix})
            await eventually(lambda: _count_retained(c, 5), message="the retained messages copied to c")
            await eventually(lambda: _count_retained(c, 1, "$mount/#"), message="the mounted one too (copied after)")
            got = {m.topic: m.payload for m in await c.service.retained("#")}
            assert got == {"r/0": b"c's own", **{t: f"from a: {t}".encode() for t in topics[1:]}}
            mounted = await c.service.retained("$mount/#")
            assert [(m.topic, m.payload) for m in mounted] == [("$mount/m1/r/x", b"in m1")]
            table = await c.service.run_command(["retain", "show"])
            assert isinstance(table, Table) and [row["topic"] for row in table.rows] == topics
            await eventually(lambda: "retained messages copied from a@t" in caplog.text)
            assert "cluster: 5 retained messages copied from a@t" in caplog.text  # 4 of r/ and the mounted one
        # d starts with [cluster] in its configuration: the cluster plugin joins before the
        # retainer loads, and the messages are copied once it has.
        async with open_broker(node_config(redis_url, prefix, "d@t")) as d:
            await eventually(lambda: _count_retained(d, 5), message="the retained messages copied to d")
            await eventually(lambda: _count_retained(d, 1, "$mount/#"), message="the mounted one too")
            assert {m.topic: m.payload for m in await d.service.retained("#")} == {
                t: f"from a: {t}".encode() for t in topics
            }
            assert [m.topic for m in await d.service.retained("$mount/#")] == ["$mount/m1/r/x"]


async def _count_retained(broker: Broker, count: int, topic_filter: str = "#") -> bool:
    return len(await broker.service.retained(topic_filter)) == count


async def test_emqx_clients_page_over_every_node_and_find_and_kick_a_client_anywhere(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    async with (
        nodes(redis_url, prefix, "a@t", "b@t") as (a, b),
        connected(a, "c-a1") as _,
        connected(b, "c-b1") as _,
        connected(a, "c-a2") as _,
        connected(b, "c-b2") as on_b,
    ):
        settings = {"port": 0, "keys_file": str(tmp_path / "keys.json"), "apps_file": str(tmp_path / "apps.json")}
        await a.service.load_plugin("api", settings)
        text = await a.service.run_command(["api-key", "create", "--emqx", "name=ops"])
        assert isinstance(text, Text)
        key, secret = (line.split(": ", 1)[1] for line in text.text.splitlines())
        url = f"http://127.0.0.1:{a.plugins.loaded['api'].plugin.port}/api/v5"
        async with httpx.AsyncClient(base_url=url, auth=(key, secret), timeout=10) as http:
            seen: dict[str, str] = {}
            for page in (1, 2):
                reply = await http.get(f"/clients?limit=3&page={page}")
                assert reply.status_code == 200, reply.text
                body = reply.json()
                assert body["meta"] == {"page": page, "limit": 3, "count": 4, "hasnext": page == 1}
                seen.update({client["clientid"]: client["node"] for client in body["data"]})
            assert seen == {"c-a1": "a@t", "c-a2": "a@t", "c-b1": "b@t", "c-b2": "b@t"}
            only_b = (await http.get("/clients?node=b@t")).json()["data"]
            assert sorted(client["clientid"] for client in only_b) == ["c-b1", "c-b2"]
            one = await http.get("/clients/c-b2")
            assert one.status_code == 200 and (one.json()["clientid"], one.json()["node"]) == ("c-b2", "b@t")
            assert (await http.get("/clients/nobody")).status_code == 404
            assert (await http.delete("/clients/c-b2")).status_code == 204  # kicked on b, asked on a
            disconnect = await on_b.closed()
            assert disconnect is not None and disconnect.reason_code == 0x98
            await eventually(lambda: "c-b2" not in b.sessions, message="its session ended on b")
            assert (await http.delete("/clients/c-b2")).status_code == 404


async def test_client_ids_of_gone_clients_are_given_back_at_the_next_sweep(redis_url: str, prefix: str) -> None:
    key = f"{prefix}:clients"
    async with (
        nodes(redis_url, prefix, "a@t", "b@t", claim_sweep_interval=0.2) as (a, b),
        redis_client(redis_url) as redis,
        MQTTTestClient.open(a.port()) as staying,
    ):
        await staying.connect("staying")
        async with MQTTTestClient.open(a.port()) as client:
            await client.connect("passing")
            await eventually(lambda: redis.hget(key, "passing"), message="claimed")
            assert await redis.hget(key, "passing") == b"a@t"
        await eventually(lambda: _absent(redis, key, "passing"), message="given back")
        await trio.sleep(0.5)  # more sweeps: a client still connected keeps its claim
        assert await redis.hget(key, "staying") == b"a@t"


async def _absent(redis: coredis.Redis[bytes], key: str, field: str) -> bool:
    return not await redis.hexists(key, field)


async def test_a_second_running_node_of_the_same_name_is_refused(redis_url: str, prefix: str) -> None:
    async with nodes(redis_url, prefix, "twin@t", heartbeat_interval=0.2, node_timeout=1.0):
        caught = await _start_fails(node_config(redis_url, prefix, "twin@t", heartbeat_interval=0.2, node_timeout=1.0))
        assert caught.group_contains(ConfigError, match="a running node is named twin@t already", depth=2)


async def test_a_session_moved_to_another_node_keeps_qos_flags_and_subscription_ids(
    redis_url: str, prefix: str
) -> None:
    persistent = {"session_expiry_interval": 300}
    async with nodes(redis_url, prefix, "a@t", "b@t") as (a, b):
        async with MQTTTestClient.open(a.port()) as old:
            await old.connect("keeper", clean_start=False, properties=persistent)
            await old.subscribe(SubscriptionRequest("k/#", 1), properties={"subscription_identifier": 7})
            await old.disconnect()
        await eventually(lambda: a.sessions["keeper"].connection is None)
        await a.service.publish("k/1", b"qos 2 published", qos=2, retain=True)
        async with MQTTTestClient.open(b.port(), auto_ack=False) as new:
            assert (await new.connect("keeper", clean_start=False, properties=persistent)).session_present
            got = await new.expect(Publish)
            assert (got.payload, got.qos, got.retain) == (b"qos 2 published", 1, False)  # no retain-as-published
            assert got.properties.get("subscription_identifier") == [7]


async def test_each_node_keeps_its_own_sys_tree(redis_url: str, prefix: str) -> None:
    async with nodes(redis_url, prefix, "a@t", "b@t") as (a, b), connected(b, "watcher") as watcher:
        await watcher.subscribe("$SYS/#", "plain/#", qos=0)
        await routed(a, "plain/x", "b@t")
        await a.service.publish("$SYS/broker/uptime", b"a's", qos=0)
        await a.service.publish("plain/x", b"forwarded", qos=0)
        assert await received_all(watcher, 1) == [("plain/x", b"forwarded", 0)]  # not a's $SYS


def _start_redis_on(port: int, folder: str) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    eventually_sync(lambda: answers_ping(port), 10, message="redis-server start")
    return process


class RestartableRedis:
    """A redis-server of the test's own (no persistence), to stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder = free_port(), str(folder)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = _start_redis_on(self.port, self.folder)

    async def restart(self, meanwhile: Callable[[], Awaitable[None]]) -> None:
        """Stop it, ``await meanwhile()``, start it again (empty)."""
        self.process.terminate()
        await trio.to_thread.run_sync(self.process.wait, 10)
        await meanwhile()
        self.process = await trio.to_thread.run_sync(_start_redis_on, self.port, self.folder)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


FLOOD = 300


async def flood_through_a_redis_restart(
    redis: RestartableRedis, publisher: MQTTTestClient, subscriber: MQTTTestClient
) -> list[int]:
    """FLOOD numbered QoS 1 messages to fl/x, each acknowledged, with Redis stopped from
    the first third to the half; what the subscriber received, in order, until it has
    every number (20 s at most)."""
    received: list[int] = []
    numbers = iter(range(FLOOD))

    async def publish(until: int) -> None:
        for number in numbers:
            assert (await publisher.publish("fl/x", b"%d" % number, qos=1)).reason_code == 0
            await trio.sleep(0.005)
            if number == until - 1:
                return

    async def receive_all() -> None:
        while len(set(received)) < FLOOD:
            received.append(int((await subscriber.receive()).payload))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_all)
            await publish(FLOOD // 3)
            await redis.restart(lambda: publish(FLOOD // 2))
            await publish(FLOOD)
    return received


def in_order_and_complete(received: list[int]) -> bool:
    """Every number once at least, and the first copy of each in the order published."""
    return list(dict.fromkeys(received)) == list(range(FLOOD))


async def test_a_redis_restart_in_a_publish_flood_loses_no_qos1_message_between_nodes_and_keeps_order(
    prefix: str, tmp_path: Path
) -> None:
    redis = RestartableRedis(tmp_path)
    try:
        async with (
            nodes(redis.url, prefix, "a@t", "b@t") as (a, b),
            connected(b, "sub-b") as subscriber,
            connected(a, "pub-a") as publisher,
        ):
            await a.service.run_command(["set", "allow_publish_during_netsplit=on"])
            await subscriber.subscribe("fl/#", qos=1)
            await routed(a, "fl/x", "b@t")
            assert in_order_and_complete(await flood_through_a_redis_restart(redis, publisher, subscriber))
            assert counter(a, "cluster_dropped") == 0
    finally:
        redis.stop()


async def test_three_processes_through_a_redis_restart_lose_no_qos1_message(prefix: str, tmp_path: Path) -> None:
    redis = RestartableRedis(tmp_path)
    try:
        with cluster_processes(redis.url, prefix) as (n1, n2, _):
            result = n1.admin("set", "allow_publish_during_netsplit=on")
            assert result.returncode == 0, result.stderr
            async with connected(n2.port, "p-sub") as subscriber, connected(n1.port, "p-pub") as publisher:
                await subscriber.subscribe("fl/#", qos=1)
                await until_forwarded(publisher, subscriber, "fl/probe")
                assert in_order_and_complete(await flood_through_a_redis_restart(redis, publisher, subscriber))
    finally:
        redis.stop()


async def test_a_lost_redis_puts_the_netsplit_switches_in_force_until_it_is_back(
    prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ternmq")
    redis = RestartableRedis(tmp_path)
    try:
        async with (
            nodes(redis.url, prefix, "a@t", "b@t") as (a, b),
            connected(b, "sub-b") as subscriber,
            connected(a, "pub-a") as publisher,
        ):
            await subscriber.subscribe("ns/#", qos=1)
            await routed(a, "ns/x", "b@t")

            async def while_it_is_down() -> None:
                await eventually(lambda: "cluster-netsplit" in a.plugins.loaded, message="the switches in force")
                refused = await publisher.publish("ns/x", b"refused", qos=1)
                assert refused.reason_code == 0x80  # VerneMQ's default: off
                async with MQTTTestClient.open(a.port()) as newcomer:
                    assert (await newcomer.connect("newcomer")).reason_code == 0x88  # server unavailable
                await a.service.run_command(["set", "allow_publish_during_netsplit=on"])
                assert (await publisher.publish("ns/x", b"local only", qos=1)).reason_code == 0  # allowed here

            await redis.restart(while_it_is_down)
            await eventually(lambda: "cluster-netsplit" not in a.plugins.loaded, timeout=10, message="lifted")
            await eventually(lambda: counter(a, "cluster_resyncs") >= 1, timeout=10)
            await routed(a, "ns/x", "b@t")

            # Forwarding works again; what was published meanwhile arrives too (sent again
            # until the other node acknowledges it).
            assert (await publisher.publish("ns/y", b"after", qos=1)).reason_code == 0
            with trio.fail_after(10):
                payloads = [(await subscriber.receive()).payload for _ in range(2)]
            assert payloads == [b"local only", b"after"]
    finally:
        redis.stop()
