"""The Redis store (``redis_store``): sessions, their messages and records kept in the
cluster's Redis, so that a node that dies loses no acknowledged QoS 1/2 message and its
clients resume on another node.

A ``redis-server`` of the test module's own serves every test (a key prefix each); the
last tests run ``ternmq`` processes and kill one with SIGKILL.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import coredis
import pytest
import trio

from ternmq.kernel import (
    CommandError,
    ConfigError,
    Message,
    SessionSnapshot,
    StoredMessage,
    Table,
    Text,
    TopicSubscription,
    session_to_json,
)
from ternmq.kernel.broker import Broker
from ternmq.kernel.testing import MQTTTestClient, open_broker, test_config
from ternmq.kernel.values.config import Config, PluginEntry
from ternmq.plugins.cluster.store import Config as StoreConfig
from ternmq.plugins.cluster.store import Plugin as RedisStore

from helpers import ClusterNode, cluster_processes, eventually, free_port, redis_client

PERSISTENT = {"session_expiry_interval": 3600}

pytestmark = pytest.mark.usefixtures("no_tracebacks")


def node_config(redis_url: str, prefix: str, name: str, *, cluster: bool = True) -> Config:
    """Node ``name``: ``[cluster]`` (unless not), then the Redis store, then the retainer."""
    config = test_config(plugins={"redis_store": {"redis_url": redis_url, "prefix": prefix}, "retainer": {}})
    config = attrs.evolve(config, broker=attrs.evolve(config.broker, node_name=name))
    if cluster:
        entry = PluginEntry("cluster", True, {"redis_url": redis_url, "prefix": prefix})
        config = attrs.evolve(config, plugins=(entry, *config.plugins))
    return config


@asynccontextmanager
async def nodes(redis_url: str, prefix: str, *names: str) -> AsyncIterator[tuple[Broker, ...]]:
    async with AsyncExitStack() as stack:
        brokers = [await stack.enter_async_context(open_broker(node_config(redis_url, prefix, n))) for n in names]
        yield tuple(brokers)


def store_of(broker: Broker) -> RedisStore:
    plugin = broker.plugins.loaded["redis_store"].plugin
    assert isinstance(plugin, RedisStore)
    return plugin


async def kept(redis: coredis.Redis[bytes], prefix: str, client_id: str) -> tuple[str | None, int]:
    """(the node keeping ``client_id``'s session, how many of its messages are stored)."""
    owner = await redis.hget(f"{prefix}:store:owners", client_id)
    count = await redis.hlen(f"{prefix}:store:messages:{client_id}")
    return (owner.decode() if owner else None), count


async def offline_subscriber(port: int, client_id: str, topic_filter: str) -> None:
    async with MQTTTestClient.open(port) as client:
        await client.connect(client_id, clean_start=False, properties=PERSISTENT)
        await client.subscribe(topic_filter, qos=1)
        await client.disconnect()


async def published(port: int, topic: str, count: int) -> None:
    """``count`` QoS 1 messages, each acknowledged (PUBACK 0) before the next."""
    async with MQTTTestClient.open(port) as publisher:
        await publisher.connect(f"pub-{uuid.uuid4().hex[:6]}")
        for number in range(count):
            ack = await publisher.publish(topic, f"m{number}".encode(), qos=1)
            assert ack is not None and ack.reason_code == 0


async def resumed(port: int, client_id: str, count: int) -> list[bytes]:
    """Connect ``client_id`` (not clean), check the session is present and read ``count``."""
    async with MQTTTestClient.open(port) as client:
        connack = await client.connect(client_id, clean_start=False, properties=PERSISTENT)
        assert connack.session_present
        payloads = []
        with trio.fail_after(10):
            for _ in range(count):
                packet = await client.receive()
                payloads.append(packet.payload)
        assert await client.nothing_received(0.2), "a copy too many"
        return payloads


# -- one node ------------------------------------------------------------------------------


async def test_a_session_and_its_queued_messages_come_back_after_a_restart(redis_url: str, prefix: str) -> None:
    config = node_config(redis_url, prefix, "a@t", cluster=False)
    async with open_broker(config) as broker:
        await offline_subscriber(broker.port(), "keeper", "k/#")
        await published(broker.port(), "k/1", 3)
        async with redis_client(redis_url) as redis:
            assert await kept(redis, prefix, "keeper") == ("a@t", 3)  # written before each PUBACK
    async with open_broker(config) as broker:
        assert await resumed(broker.port(), "keeper", 3) == [b"m0", b"m1", b"m2"]
        async with redis_client(redis_url) as redis:
            await eventually(lambda: _count(redis, prefix, "keeper", 0), message="acknowledged ones deleted")


async def _count(redis: coredis.Redis[bytes], prefix: str, client_id: str, expected: int) -> bool:
    return (await kept(redis, prefix, client_id))[1] == expected


async def test_records_are_kept_in_redis_and_a_late_node_has_every_retained_message(
    redis_url: str, prefix: str
) -> None:
    async with nodes(redis_url, prefix, "a@t") as (a,):
        await a.service.publish("r/1", b"kept", qos=1, retain=True)
        assert await a.service.commit_store()
        async with redis_client(redis_url) as redis:
            assert await redis.hkeys(f"{prefix}:store:records:retainer")
        async with open_broker(node_config(redis_url, prefix, "late@t")) as late:
            [message] = await late.service.retained("r/#")
            assert (message.topic, message.payload) == ("r/1", b"kept")


# -- the store's writes across nodes --------------------------------------------------------


async def test_a_node_that_no_longer_keeps_a_session_cannot_erase_or_change_it(redis_url: str, prefix: str) -> None:
    a, b = RedisStore(StoreConfig(redis_url, prefix)), RedisStore(StoreConfig(redis_url, prefix))
    message = Message("t", b"p", 1, False, None, 1.0)
    async with trio.open_nursery() as nursery:
        for plugin, name in ((a, "a@t"), (b, "b@t")):
            await nursery.start(plugin.serve, _Node(name))
        session = SessionSnapshot("moved", None, 5, 3600, (TopicSubscription("t", 1),))
        a.session_store_delete("moved")  # as the broker does before a first save
        a.session_store_save(session)
        a.message_store_save("moved", StoredMessage(1, "queued", message, 1, False, (), None))
        await a.store_commit()
        taken = await b.session_store_take("moved", False)
        assert taken is not None and [entry.entry_id for entry in taken.messages] == [1]
        assert await b.session_store_take("moved", False) is None  # b's now: nothing left to take
        # a writes late (it thought it still kept the session: the hand-over's last save,
        # its end): nothing of it lands.
        a.session_store_save(session)
        a.message_store_save("moved", StoredMessage(2, "queued", message, 1, False, (), None))
        a.message_store_delete("moved", 1)
        a.session_store_delete("moved")
        await a.store_commit()
        async with redis_client(redis_url) as redis:
            assert await kept(redis, prefix, "moved") == ("b@t", 1)
            assert await redis.exists([f"{prefix}:store:session:moved"]) == 1
        assert await a.session_store_load_all() == []
        [loaded] = await b.session_store_load_all()
        assert loaded.client_id == "moved" and [entry.entry_id for entry in loaded.messages] == [1]
        # b saves it as new (it replaces what the other node left) and forgets it.
        b.session_store_delete("moved")
        b.session_store_save(session)
        await b.store_commit()
        [loaded] = await b.session_store_load_all()
        assert loaded.messages == ()
        # Forgetting at a clean start: a node never forgets its own that way; another
        # node (its client came there, b being down, say) forgets it in one step.
        assert await b.session_store_take("moved", True) is None
        assert len(await b.session_store_load_all()) == 1
        assert await a.session_store_take("moved", True) is None
        async with redis_client(redis_url) as redis:
            assert await kept(redis, prefix, "moved") == (None, 0)
        nursery.cancel_scope.cancel()


async def test_a_redis_that_lost_the_store_is_written_again_before_the_next_puback(redis_url: str, prefix: str) -> None:
    async with open_broker(node_config(redis_url, prefix, "a@t", cluster=False)) as broker:
        await offline_subscriber(broker.port(), "kept", "lost/#")
        await published(broker.port(), "lost/1", 1)
        async with redis_client(redis_url) as redis:
            assert await kept(redis, prefix, "kept") == ("a@t", 1)
            for key in await redis.keys(f"{prefix}:*"):  # as a Redis restarted empty
                await redis.delete([key])
            await published(broker.port(), "lost/2", 1)
            # Its PUBACK waited for the session, and both its messages, written again.
            assert await kept(redis, prefix, "kept") == ("a@t", 2)
            assert await redis.exists([f"{prefix}:store:session:kept"]) == 1
        assert store_of(broker).resets == 1
    async with open_broker(node_config(redis_url, prefix, "a@t", cluster=False)) as broker:
        assert await resumed(broker.port(), "kept", 2) == [b"m0", b"m0"]


@attrs.frozen
class _Node:
    """What the store's ``serve`` reads of the service face."""

    node_name: str


async def test_a_value_that_does_not_read_is_skipped_and_logged_not_fatal(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with redis_client(redis_url) as redis:
        await redis.hset(f"{prefix}:store:owners", {"broken": "a@t", "fine": "a@t"})
        await redis.set(f"{prefix}:store:session:broken", b"{not json")
        await redis.set(f"{prefix}:store:session:fine", json.dumps(_session_json()).encode())
        await redis.hset(f"{prefix}:store:messages:fine", {"7": b"[]"})
    store = RedisStore(StoreConfig(redis_url, prefix))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve, _Node("a@t"))
        [fine] = await store.session_store_load_all()
        assert fine.client_id == "fine" and fine.messages == ()
        nursery.cancel_scope.cancel()
    assert "session 'broken' does not read" in caplog.text and "message b'7' of session 'fine'" in caplog.text


def _session_json() -> dict[str, Any]:
    return session_to_json(SessionSnapshot("fine", None, 5, 3600))


async def test_a_missing_redis_url_and_an_unreachable_redis_fail_the_start_naming_the_table(prefix: str) -> None:
    bad = test_config(plugins={"redis_store": {"prefix": prefix}})
    with pytest.raises(ExceptionGroup) as missing:
        async with open_broker(bad):
            pass
    assert missing.group_contains(ConfigError, match=r"redis_store.*redis_url", depth=2)
    down = test_config(plugins={"redis_store": {"redis_url": f"redis://127.0.0.1:{free_port()}"}})
    with pytest.raises(ExceptionGroup) as refused:
        async with open_broker(down):
            pass
    assert refused.group_contains(ConfigError, match=r"\[plugins.redis_store\].*cannot reach Redis", depth=2)


# -- across nodes ----------------------------------------------------------------------------


async def test_a_session_of_a_stopped_node_is_taken_with_its_messages_by_the_node_its_client_joins(
    redis_url: str, prefix: str
) -> None:
    async with open_broker(node_config(redis_url, prefix, "a@t")) as a:
        await offline_subscriber(a.port(), "wanderer", "w/#")
        await published(a.port(), "w/1", 2)
    # a is gone (its claim of the client id stays in Redis); the client comes to b.
    async with nodes(redis_url, prefix, "b@t") as (b,):
        assert await resumed(b.port(), "wanderer", 2) == [b"m0", b"m1"]
        assert b.sessions["wanderer"].subscriptions.keys() == {"w/#"}
        async with redis_client(redis_url) as redis:
            assert (await kept(redis, prefix, "wanderer"))[0] == "b@t"
    # a, back, does not restore what b keeps now.
    async with open_broker(node_config(redis_url, prefix, "a@t")) as a:
        assert "wanderer" not in a.sessions


async def test_a_clean_start_on_another_node_forgets_the_stopped_nodes_session(redis_url: str, prefix: str) -> None:
    async with open_broker(node_config(redis_url, prefix, "a@t")) as a:
        await offline_subscriber(a.port(), "fresh", "f/#")
    async with nodes(redis_url, prefix, "b@t") as (b,):
        async with MQTTTestClient.open(b.port()) as client:
            connack = await client.connect("fresh", clean_start=True)
            assert not connack.session_present
        async with redis_client(redis_url) as redis:
            await eventually(lambda: _forgotten(redis, prefix, "fresh"), message="the old session is forgotten")
    async with open_broker(node_config(redis_url, prefix, "a@t")) as a:
        assert "fresh" not in a.sessions


async def _forgotten(redis: coredis.Redis[bytes], prefix: str, client_id: str) -> bool:
    return await kept(redis, prefix, client_id) == (None, 0) and not await redis.exists(
        [f"{prefix}:store:session:{client_id}"]
    )


# -- SIGKILL ---------------------------------------------------------------------------------


@pytest.fixture
def store_nodes(redis_url: str, prefix: str) -> Iterator[list[ClusterNode]]:
    """Three nodes as processes, each with the Redis store (then the retainer)."""
    plugins = f'[plugins.redis_store]\nredis_url = "{redis_url}"\nprefix = "{prefix}"\n\n[plugins.retainer]\n'
    with cluster_processes(redis_url, prefix, plugins=plugins) as started:
        yield started


async def test_a_node_killed_with_sigkill_loses_no_acknowledged_message_its_client_resumes_elsewhere(
    store_nodes: list[ClusterNode], redis_url: str, prefix: str
) -> None:
    n1, n2, n3 = store_nodes
    await offline_subscriber(n2.port, "survivor", "s/#")
    # Published on n2, the node keeping the session: each PUBACK means "in Redis".
    await published(n2.port, "s/1", 25)
    await trio.to_thread.run_sync(n2.kill)  # right after the last PUBACK
    async with redis_client(redis_url) as redis:
        assert await kept(redis, prefix, "survivor") == ("n2@127.0.0.1", 25)
    # At once, before n2 counts as down: n3 asks n2 for the session, gets no answer and
    # takes it from the store.
    payloads = await resumed(n3.port, "survivor", 25)
    assert payloads == [f"m{number}".encode() for number in range(25)]
    # Now n3's: a message published on n1 reaches it through n3.
    async with redis_client(redis_url) as redis:
        assert (await kept(redis, prefix, "survivor"))[0] == "n3@127.0.0.1"
    await trio.sleep(0.5)  # its route, announced when n3 took the session, reaches n1
    await published(n1.port, "s/2", 1)
    assert await resumed(n3.port, "survivor", 1) == [b"m0"]


# -- cluster leave ---------------------------------------------------------------------------


async def test_hook_cluster_leave(redis_url: str, prefix: str) -> None:
    """``cluster leave`` of a node that is down: this node takes its sessions, which
    keep queueing here until their clients come back."""
    async with open_broker(node_config(redis_url, prefix, "a@t")) as a:
        await offline_subscriber(a.port(), "orphan", "o/#")
        await published(a.port(), "o/1", 2)
    async with nodes(redis_url, prefix, "b@t") as (b,), redis_client(redis_url) as redis:
        # a stopped without a word (as a killed node does): its heartbeat stays, too old.
        await redis.hset(f"{prefix}:nodes", {"a@t": repr(time.time() - 60)})
        await eventually(lambda: _listed(b, "a@t"), message="b sees a, down")
        for node, why in (
            ("b@t", "is this node"),
            ("z@t", "no node z@t in the cluster"),
        ):
            with pytest.raises(CommandError, match=why):
                await b.service.run_command(["cluster", "leave", f"node={node}"])
        done = await b.service.run_command(["cluster", "leave", "node=a@t"])
        assert done == Text("Done: a@t removed; 1 of its sessions are b@t's now")
        assert "orphan" in b.sessions and b.sessions["orphan"].connection is None
        assert not await _listed(b, "a@t") and await redis.hget(f"{prefix}:nodes", "a@t") is None
        await b.service.publish("o/2", b"m2", qos=1)  # queued here now, for its client
        assert await resumed(b.port(), "orphan", 3) == [b"m0", b"m1", b"m2"]
        assert await redis.hget(f"{prefix}:clients", "orphan") == b"b@t"


async def _listed(broker: Broker, node: str) -> bool:
    table = await broker.service.run_command(["cluster", "show"])
    assert isinstance(table, Table)
    return any(row["Node"] == node and row["Running"] is False for row in table.rows)


async def test_cluster_leave_of_a_running_node_is_refused_and_a_single_node_says_why(
    redis_url: str, prefix: str
) -> None:
    async with nodes(redis_url, prefix, "a@t", "b@t") as (a, b):
        with pytest.raises(CommandError, match="b@t is running: stop it"):
            await a.service.run_command(["cluster", "leave", "node=b@t"])
        with pytest.raises(CommandError, match="node=NAME"):
            await a.service.run_command(["cluster", "leave"])
        with pytest.raises(CommandError, match=r"through its \[cluster\] table"):
            await a.service.run_command(["cluster", "join", "discovery-node=b@t"])
    async with open_broker() as single:
        with pytest.raises(CommandError, match="runs as a single node"):
            await single.service.run_command(["cluster", "leave", "node=b@t"])
