"""Provider hooks (retained store, session store, cluster seam) and registration hooks.

Provider hooks are answered by the first implementation only; with none loaded the
feature is off and the broker says so. The session store test restarts the broker with
the same store object registered before the second broker's listeners start.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from ternmq.kernel.admin import CommandError
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Puback, Pubcomp, Publish, Pubrec, Pubrel, SubscriptionRequest, Will
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.manager import PluginError
from ternmq.kernel.routing.topics import topic_matches
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, serving, test_config
from ternmq.kernel.values.info import MetricReading, NodeInfo, NodeMetrics, NodePlugins, PluginInfo, SessionInfo
from ternmq.kernel.values.output import Text
from ternmq.kernel.values.types import ClientInfo, Message, SessionSnapshot, StoredMessage, TopicSubscription

from helpers import eventually

PERSISTENT = {"session_expiry_interval": 300}


# ----------------------------------------------------------------- retained messages


class DictRetainer:
    """A custom retained store replacing the built-in retainer."""

    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def retain_store(self, message: Message) -> None:
        self.calls.append(("store", message))
        self.messages[message.topic] = message

    @hookimpl
    async def retain_lookup(self, topic_filter: str) -> list[Message]:
        self.calls.append(("lookup", topic_filter))
        return [m for topic, m in self.messages.items() if topic_matches(topic_filter, topic)]

    @hookimpl
    def retain_delete(self, topic: str) -> None:
        self.calls.append(("delete", topic))
        self.messages.pop(topic, None)


async def test_without_a_retainer_retain_is_unavailable(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker, MQTTTestClient.open(broker.port()) as client:
        connack = await client.connect("no-retain")
        assert connack.properties["retain_available"] == 0
        await client.send(Publish("t", b"ab", 0, True, False, None, {}))
        disconnect = await client.closed()
        assert disconnect is not None and disconnect.reason_code == 0x9A


async def test_hook_retain_store(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker:
        retainer = DictRetainer()
        async with registered(broker, retainer), MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("retains")
            assert "retain_available" not in connack.properties  # the custom store provides it
            await client.publish("r/1", b"kept", qos=1, retain=True, properties={"content_type": "c"})
            await client.publish("r/2", b"not retained", qos=1)
            [(kind, message)] = retainer.calls
            assert kind == "store"
            assert (message.topic, message.payload, message.qos, message.retain) == ("r/1", b"kept", 1, True)
            assert message.properties["content_type"] == "c"


async def test_hook_retain_lookup(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker:
        retainer = DictRetainer()
        retainer.messages = {
            "r/a": Message("r/a", b"A", 1, True),
            "r/b": Message("r/b", b"B", 0, True),
            "other": Message("other", b"O", 0, True),
        }
        async with registered(broker, retainer), MQTTTestClient.open(broker.port()) as client:
            await client.connect("looker")
            await client.subscribe("r/+", qos=1)
            got = sorted([await client.receive(), await client.receive()], key=lambda p: p.topic)
            assert [(p.topic, p.payload, p.qos, p.retain) for p in got] == [
                ("r/a", b"A", 1, True),
                ("r/b", b"B", 0, True),
            ]
            assert await client.nothing_received(0.1)
            assert retainer.calls == [("lookup", "r/+")]
            # No lookup for shared subscriptions or retain_handling=2.
            await client.subscribe("$share/g/r/+", SubscriptionRequest("other", 0, retain_handling=2))
            assert retainer.calls == [("lookup", "r/+")]
            assert await client.nothing_received(0.1)


async def test_retain_lookup_skips_expired_messages(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker:
        retainer = DictRetainer()
        retainer.messages = {
            "x/old": Message("x/old", b"old", 0, True, {"message_expiry_interval": 5}, created_at=0.0),
            "x/new": Message("x/new", b"new", 0, True),
        }
        async with registered(broker, retainer), MQTTTestClient.open(broker.port()) as client:
            await client.connect("exp")
            await client.subscribe("x/#")
            assert (await client.receive()).payload == b"new"
            assert await client.nothing_received(0.1)


async def test_hook_retain_delete(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker:
        retainer = DictRetainer()
        async with registered(broker, retainer), MQTTTestClient.open(broker.port()) as client:
            await client.connect("deleter")
            await client.publish("d/1", b"kept", qos=1, retain=True)
            await client.publish("d/1", b"", qos=1, retain=True)
            assert [kind for kind, _ in retainer.calls] == ["store", "delete"]
            assert retainer.calls[1] == ("delete", "d/1")
            await client.subscribe("d/#")
            assert await client.nothing_received(0.1)


async def test_only_the_first_retainer_is_called(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker:
        first, second = DictRetainer(), DictRetainer()
        async with registered(broker, first), registered(broker, second):  # first registered, first asked
            await broker.service.publish("t", b"x", retain=True)
            assert [k for k, _ in first.calls] == ["store"] and second.calls == []


# -------------------------------------------------------------------- session store


class DictStore:
    """A dict-backed session store; the same object can serve two brokers in a row."""

    def __init__(self) -> None:
        self.sessions: dict[str, SessionSnapshot] = {}
        self.calls: list[tuple[str, Any]] = []
        self.listeners_at_load: list[int] = []
        self.broker: Broker | None = None

    @hookimpl
    async def session_store_load_all(self) -> list[SessionSnapshot]:
        self.calls.append(("load_all", None))
        if self.broker is not None:
            self.listeners_at_load.append(len(self.broker.listeners))
        return list(self.sessions.values())

    @hookimpl
    def session_store_save(self, session: SessionSnapshot) -> None:
        self.calls.append(("save", session))
        self.sessions[session.client_id] = session

    @hookimpl
    def session_store_delete(self, client_id: str) -> None:
        self.calls.append(("delete", client_id))
        self.sessions.pop(client_id, None)

    def of(self, kind: str) -> list[Any]:
        return [value for name, value in self.calls if name == kind]


@asynccontextmanager
async def broker_with_store(store: DictStore) -> AsyncIterator[Broker]:
    """A broker whose store plugin is registered before ``serve`` starts the listeners."""
    broker = Broker(test_config())
    store.broker = broker
    await broker.plugins.register("store", store)
    async with serving(broker):
        yield broker


async def test_hook_session_store_load_all(broker: Any) -> None:
    store = DictStore()
    store.sessions["restored"] = SessionSnapshot(
        "restored", "ru", 5, 300, (TopicSubscription("l/#", 1),), (Message("l/1", b"queued", 1),), disconnected_at=0.0
    )
    async with broker_with_store(store) as broker, MQTTTestClient.open(broker.port()) as client:
        assert store.of("load_all") == [None]
        assert store.listeners_at_load == [0]  # before the listeners start
        connack = await client.connect("restored", clean_start=False, properties=PERSISTENT)
        assert connack.session_present
        assert (await client.receive()).payload == b"queued"
        await broker.service.publish("l/2", b"live", qos=1)
        assert (await client.receive()).payload == b"live"


async def test_hook_session_store_save(broker: Any) -> None:
    store = DictStore()
    async with registered(broker, store):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("saver", username="sv", clean_start=False, properties=PERSISTENT)
            await client.subscribe("s/#", qos=1)
            [on_subscribe] = store.of("save")
            assert (
                on_subscribe.client_id,
                on_subscribe.username,
                on_subscribe.protocol_level,
                on_subscribe.expiry_interval,
            ) == ("saver", "sv", 5, 300)
            assert on_subscribe.subscriptions == (TopicSubscription("s/#", 1),)
            await client.unsubscribe("s/#")
            assert store.of("save")[-1].subscriptions == ()
            await client.subscribe("s/#", qos=1)
            await client.disconnect()
        await eventually(lambda: len(store.of("save")) == 4)
        assert store.of("save")[-1].disconnected_at > 0  # saved when it went offline
        async with MQTTTestClient.open(broker.port()) as clean:  # non-persistent: never saved
            await clean.connect("clean")
            await clean.subscribe("c")
            await clean.disconnect()
        await trio.sleep(0.05)
        assert all(snapshot.client_id == "saver" for snapshot in store.of("save"))


async def test_hook_session_store_delete(broker: Any) -> None:
    store = DictStore()
    async with registered(broker, store):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("forget-me", clean_start=False, properties=PERSISTENT)
            await client.subscribe("x", qos=1)
            await client.disconnect()
        await eventually(lambda: "forget-me" in store.sessions and broker.sessions["forget-me"].connection is None)
        # Once, before its first save: a new session replaces what the store had.
        assert store.calls[0] == ("delete", "forget-me") and store.calls[1][0] == "save"
        assert store.of("delete") == ["forget-me"]
        async with MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("forget-me", clean_start=True)
            assert not connack.session_present
        assert store.of("delete") == ["forget-me"] * 2
        assert "forget-me" not in store.sessions


async def test_session_store_delete_on_expiry(broker: Any) -> None:
    store = DictStore()
    async with registered(broker, store), MQTTTestClient.open(broker.port()) as client:
        await client.connect("expires", clean_start=False, properties={"session_expiry_interval": 1})
        await client.disconnect()
        # The first is the one before its first save; the second comes with its expiry.
        await eventually(lambda: len(store.of("delete")) == 2, timeout=3)
        assert store.of("delete") == ["expires"] * 2 and "expires" not in store.sessions


class SharedStore(DictStore):
    """A store several nodes share: it keeps sessions a node that is down left, to take."""

    def __init__(self) -> None:
        super().__init__()
        self.elsewhere: dict[str, SessionSnapshot] = {}

    @hookimpl
    async def session_store_take(self, client_id: str, forget: bool) -> SessionSnapshot | None:
        self.calls.append(("take", client_id))
        taken = self.elsewhere.pop(client_id, None)
        if taken is not None and not forget:
            self.sessions[client_id] = taken
            return taken
        return None


class TakingNode:
    """A cluster plugin's part that takes a client's stored session when it connects."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @hookimpl
    async def cluster_register(self, client: ClientInfo, clean_start: bool) -> SessionSnapshot | None:
        return await self.broker.service.take_stored_session(client.client_id, clean_start=clean_start)


async def test_hook_session_store_take(broker: Any) -> None:
    store = SharedStore()
    queued = StoredMessage(7, "queued", Message("tk/1", b"left on the dead node", 1), 1, False, (), None)
    subscriptions = (TopicSubscription("tk/#", 1),)
    store.elsewhere["taken"] = SessionSnapshot("taken", None, 5, 300, subscriptions, messages=(queued,))
    store.elsewhere["forgotten"] = SessionSnapshot("forgotten", None, 5, 300, subscriptions)
    async with registered(broker, store), registered(broker, TakingNode(broker), name="node"):
        async with MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("taken", clean_start=False, properties=PERSISTENT)
            assert connack.session_present
            packet = await client.receive()
            assert (packet.topic, packet.payload, packet.qos) == ("tk/1", b"left on the dead node", 1)
            # Given to this node's store at once, not only when it goes offline.
            assert store.of("take") == ["taken"] and [s.client_id for s in store.of("save")] == ["taken"]
        async with MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("forgotten", clean_start=True)
            assert not connack.session_present
        assert "forgotten" not in store.elsewhere and "forgotten" not in store.sessions
        assert "forgotten" not in broker.sessions  # clean start: a new, clean session, gone


async def test_sessions_and_subscriptions_survive_a_restart_with_a_session_store() -> None:
    store = DictStore()
    async with broker_with_store(store) as first:
        async with MQTTTestClient.open(first.port()) as client:
            await client.connect("durable", clean_start=False, properties=PERSISTENT)
            await client.subscribe("dur/#", qos=1)
            await client.disconnect()
        await eventually(lambda: first.sessions["durable"].connection is None)
        await first.service.publish("dur/queued", b"while down", qos=1)
    assert [m.payload for m in store.sessions["durable"].queued] == [b"while down"]  # saved at shutdown
    async with broker_with_store(store) as second, MQTTTestClient.open(second.port()) as client:
        assert second is not first
        connack = await client.connect("durable", clean_start=False, properties=PERSISTENT)
        assert connack.session_present
        assert (await client.receive()).payload == b"while down"
        await second.service.publish("dur/after", b"no resubscribe needed", qos=1)
        got = await client.receive()
        assert (got.topic, got.payload, got.qos) == ("dur/after", b"no resubscribe needed", 1)


# ------------------------------------------------- per-message store hooks and records


class JournalStore(DictStore):
    """DictStore with the per-message hooks, records, and a commit a test can hold."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, int], StoredMessage] = {}
        self.records: dict[tuple[str, str], bytes] = {}
        self.hold: trio.Event | None = None

    @hookimpl
    def session_store_delete(self, client_id: str) -> None:
        super().session_store_delete(client_id)
        self.entries = {key: entry for key, entry in self.entries.items() if key[0] != client_id}

    @hookimpl
    def message_store_save(self, client_id: str, entry: StoredMessage) -> None:
        self.calls.append(("message_save", (client_id, entry)))
        self.entries[client_id, entry.entry_id] = entry

    @hookimpl
    def message_store_delete(self, client_id: str, entry_id: int) -> None:
        self.calls.append(("message_delete", (client_id, entry_id)))
        self.entries.pop((client_id, entry_id), None)

    @hookimpl
    async def store_commit(self) -> None:
        self.calls.append(("commit", None))
        if self.hold is not None:
            await self.hold.wait()

    @hookimpl
    async def record_load(self, namespace: str) -> dict[str, bytes]:
        self.calls.append(("record_load", namespace))
        return {key: value for (space, key), value in self.records.items() if space == namespace}

    @hookimpl
    def record_save(self, namespace: str, key: str, value: bytes) -> None:
        self.calls.append(("record_save", (namespace, key)))
        self.records[namespace, key] = value

    @hookimpl
    def record_delete(self, namespace: str, key: str) -> None:
        self.calls.append(("record_delete", (namespace, key)))
        self.records.pop((namespace, key), None)

    def states(self, client_id: str) -> list[tuple[str, int | None, bytes | None]]:
        """(state, packet id, payload) of the client's entries, in entry order."""
        return [
            (entry.state, entry.packet_id, entry.message.payload if entry.message else None)
            for (owner, _), entry in sorted(self.entries.items())
            if owner == client_id
        ]


async def stored_subscriber(broker: Broker, client_id: str, topic_filter: str, qos: int) -> None:
    """A persistent session subscribed to ``topic_filter``, now offline (and so stored)."""
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect(client_id, clean_start=False, properties=PERSISTENT)
        await client.subscribe(topic_filter, qos=qos)
        await client.disconnect()
    await eventually(lambda: broker.sessions[client_id].connection is None)


async def test_hook_message_store_save(broker: Any) -> None:
    store = JournalStore()
    async with registered(broker, store):
        await stored_subscriber(broker, "keeper", "m/#", 2)
        await broker.service.publish("m/1", b"one", qos=1)
        await broker.service.publish("m/2", b"two", qos=2)
        await broker.service.publish("m/0", b"qos 0 is not kept", qos=0)
        assert store.states("keeper") == [("queued", None, b"one"), ("queued", None, b"two")]
        async with MQTTTestClient.open(broker.port(), auto_ack=False) as client:
            await client.connect("keeper", clean_start=False, properties=PERSISTENT)
            first, second = await client.receive(), await client.receive()
            assert store.states("keeper") == [
                ("inflight", first.packet_id, b"one"),
                ("inflight", second.packet_id, b"two"),
            ]
            await client.send(Pubrec(second.packet_id))
            await client.expect(Pubrel)
            assert store.states("keeper")[1] == ("released", second.packet_id, b"two")
            await client.send(Puback(first.packet_id))
            await client.send(Pubcomp(second.packet_id))
            await eventually(lambda: store.states("keeper") == [])
        deletes = [entry_id for client_id, entry_id in store.of("message_delete") if client_id == "keeper"]
        assert len(deletes) == 2  # one per message, when it was acknowledged


async def test_hook_message_store_delete(broker: Any) -> None:
    store = JournalStore()
    async with registered(broker, store):
        # A QoS 2 PUBLISH of a stored client is kept until its PUBREL.
        async with MQTTTestClient.open(broker.port()) as publisher:
            await publisher.connect("q2-publisher", clean_start=False, properties=PERSISTENT)
            await publisher.subscribe("unrelated", qos=1)  # stored from here on
            await publisher.send(Publish("d/1", b"exactly once", 2, False, False, 41))
            pubrec = await publisher.expect(Pubrec)
            assert store.states("q2-publisher") == [("received", 41, None)]
            await publisher.send(Pubrel(pubrec.packet_id))
            await publisher.expect(Pubcomp)
            assert store.states("q2-publisher") == []
        # An expired message is dropped, and forgotten by the store.
        await stored_subscriber(broker, "expiring", "e/#", 1)
        await broker.service.publish("e/1", b"short-lived", qos=1, properties={"message_expiry_interval": 1})
        assert store.states("expiring") == [("queued", None, b"short-lived")]
        await trio.sleep(1.1)
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("expiring", clean_start=False, properties=PERSISTENT)
            assert await client.nothing_received(0.2)
        assert store.states("expiring") == []
        # A clean start ends the session: the store's session_store_delete drops the rest.
        await stored_subscriber(broker, "cleaned", "c/#", 1)
        await broker.service.publish("c/1", b"never read", qos=1)
        assert store.states("cleaned") != []
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("cleaned", clean_start=True)
        assert "cleaned" in store.of("delete") and store.states("cleaned") == []


async def test_hook_store_commit(broker: Any) -> None:
    store = JournalStore()
    async with (
        registered(broker, store),
        MQTTTestClient.open(broker.port()) as publisher,
    ):
        await stored_subscriber(broker, "offline", "k/#", 1)
        await publisher.connect("committer")
        store.hold = trio.Event()
        commits = len(store.of("commit"))  # the retainer commits once when a store loads
        await publisher.send(Publish("k/1", b"kept", 1, False, False, 7))
        assert await publisher.nothing_received(0.3)  # no PUBACK before the commit
        assert len(store.of("commit")) == commits + 1
        store.hold.set()
        assert (await publisher.expect(Puback)).packet_id == 7
        # Nothing kept for a message nobody stored subscribes to: no wait.
        store.hold = trio.Event()
        assert (await publisher.publish("elsewhere", b"x", qos=1)).reason_code == 0x10
        # A retained QoS 1 message is kept (by the retainer's store): its PUBACK waits.
        await publisher.send(Publish("r/1", b"retained", 1, True, False, 8))
        assert await publisher.nothing_received(0.3)
        store.hold.set()
        assert (await publisher.expect(Puback)).packet_id == 8


async def test_stored_messages_come_back_where_they_were() -> None:
    store = JournalStore()
    store.sessions["back"] = SessionSnapshot(
        "back", None, 5, 300, (TopicSubscription("b/#", 2),), disconnected_at=time.time()
    )
    for entry in (
        StoredMessage(10, "inflight", Message("b/1", b"in flight", 1), 1, False, (), 7),
        StoredMessage(11, "released", Message("b/2", b"released", 2), 2, False, (), 8),
        StoredMessage(12, "queued", Message("b/3", b"queued", 2), 2),
        StoredMessage(13, "received", None, 2, False, (), 9),
    ):
        store.entries["back", entry.entry_id] = entry
    store.sessions["back"] = attrs.evolve(
        store.sessions["back"], messages=tuple(entry for (_, _), entry in sorted(store.entries.items()))
    )
    async with broker_with_store(store) as broker, MQTTTestClient.open(broker.port(), auto_ack=False) as client:
        connack = await client.connect("back", clean_start=False, properties=PERSISTENT)
        assert connack.session_present
        resent = await client.expect(Publish)
        assert (resent.payload, resent.packet_id, resent.dup) == (b"in flight", 7, True)
        assert (await client.expect(Pubrel)).packet_id == 8  # not the PUBLISH again
        queued = await client.expect(Publish)
        assert queued.payload == b"queued" and queued.packet_id not in (7, 8) and not queued.dup
        await client.send(Pubrel(9))  # the QoS 2 PUBLISH it sent before the restart
        pubcomp = await client.expect(Pubcomp)
        assert (pubcomp.packet_id, pubcomp.reason_code) == (9, 0)
        assert ("inflight", queued.packet_id, b"queued") in store.states("back")  # same entry, new state
        await broker.service.publish("b/4", b"new", qos=1)
        assert (await client.expect(Publish)).payload == b"new"
        [new_entry] = [
            entry for _, entry in store.of("message_save") if entry.message and entry.message.payload == b"new"
        ]
        assert new_entry.entry_id > 13  # after every restored one


async def test_a_will_owed_when_the_broker_died_is_published_after_the_restart() -> None:
    store = JournalStore()
    async with broker_with_store(store) as first:
        await stored_subscriber(first, "watcher", "wills/#", 1)
        async with MQTTTestClient.open(first.port()) as client:
            will = Will("wills/gone", b"the broker died", 1, False, {})
            await client.connect("mortal", clean_start=False, will=will, properties=PERSISTENT)
            await eventually(lambda: store.sessions.get("mortal"))
            owed = store.sessions["mortal"].will
            assert owed is not None and (owed.topic, owed.payload, owed.qos) == ("wills/gone", b"the broker died", 1)
            # The broker "dies" here: what the store holds now is all a restart finds
            # (a clean shutdown would publish the will itself).
            crashed = dict(store.sessions), dict(store.entries)
    store.sessions, store.entries = crashed
    async with broker_with_store(store) as second, MQTTTestClient.open(second.port()) as watcher:
        await watcher.connect("watcher", clean_start=False, properties=PERSISTENT)
        got = await watcher.receive()
        assert (got.topic, got.payload) == ("wills/gone", b"the broker died")
        await eventually(lambda: store.sessions["mortal"].will is None)  # no longer owed


async def test_a_normal_disconnect_leaves_no_will_in_the_store(broker: Any) -> None:
    store = JournalStore()
    async with registered(broker, store), MQTTTestClient.open(broker.port()) as client:
        await client.connect("polite", clean_start=False, will=Will("w", b"x", 0, False, {}), properties=PERSISTENT)
        await eventually(lambda: "polite" in store.sessions)
        await client.disconnect()
        await eventually(
            lambda: store.sessions["polite"].disconnected_at > 0 and broker.sessions["polite"].connection is None
        )
        assert store.sessions["polite"].will is None


async def test_a_delayed_will_is_kept_until_a_reconnect_cancels_it(broker: Any) -> None:
    store = JournalStore()
    delayed = Will("w/late", b"after a minute", 0, False, {"will_delay_interval": 60})
    async with registered(broker, store):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("delayed", clean_start=False, will=delayed, properties=PERSISTENT)
            await eventually(lambda: "delayed" in store.sessions)
        # Gone without DISCONNECT: the will waits for its delay, and the store keeps it.
        await eventually(lambda: broker.sessions["delayed"].connection is None)
        await eventually(lambda: store.sessions["delayed"].disconnected_at > 0)
        assert store.sessions["delayed"].will is not None
        async with MQTTTestClient.open(broker.port()) as client:  # back in time: no will owed
            await client.connect("delayed", clean_start=False, properties=PERSISTENT)
            await client.disconnect()
        await eventually(lambda: broker.sessions["delayed"].connection is None)
        await eventually(lambda: len(store.of("save")) >= 3)
        assert store.sessions["delayed"].will is None


class FailingCommit(JournalStore):
    @hookimpl
    async def store_commit(self) -> None:
        raise OSError("disk full")


async def test_a_message_the_store_failed_to_write_is_not_acknowledged_as_written(broker: Any) -> None:
    store = FailingCommit()
    async with registered(broker, store):
        await stored_subscriber(broker, "offline", "f/#", 2)
        async with MQTTTestClient.open(broker.port()) as v5:
            await v5.connect("v5-publisher")
            assert (await v5.publish("f/1", b"x", qos=1)).reason_code == 0x80
            assert (await v5.publish("f/2", b"x", qos=2)).reason_code == 0x80  # the refusing PUBREC
        async with MQTTTestClient.open(broker.port(), protocol_level=4) as v311:
            await v311.connect("v311-publisher")
            await v311.send(Publish("f/3", b"x", 1, False, False, 5))
            assert await v311.closed() is None  # no PUBACK: closed, it will send it again
        assert broker.metrics.publish_not_stored == 3


async def test_a_store_loaded_or_unloaded_at_run_time_takes_or_leaves_the_sessions(broker: Any) -> None:
    await stored_subscriber(broker, "before", "b/#", 1)  # no store yet: in memory only
    await broker.service.publish("b/1", b"queued before the store", qos=1)
    store = JournalStore()
    async with registered(broker, store):
        assert "before" in store.sessions  # given to the store at its load, with its message
        assert store.states("before") == [("queued", None, b"queued before the store")]
        assert broker.sessions["before"].journal is not None
    assert broker.sessions["before"].journal is None and not broker.sessions["before"].stored
    await broker.service.publish("b/2", b"no store to write to", qos=1)
    assert store.states("before") == [("queued", None, b"queued before the store")]


async def test_a_session_new_to_the_store_replaces_what_it_kept_under_the_client_id(broker: Any) -> None:
    store = JournalStore()
    # Left by a session the store could not read at start: not the new session's.
    store.entries["reborn", 1] = StoredMessage(1, "queued", Message("old/1", b"stale", 1), 1)
    async with registered(broker, store):
        await stored_subscriber(broker, "reborn", "new/#", 1)
        assert store.of("delete") == ["reborn"]  # before the first save
        assert store.states("reborn") == []


async def test_hook_record_save(broker: Any) -> None:
    service = broker.service
    assert not service.records_available
    service.save_record("ns", "k", b"nowhere")  # no store: nothing, no error
    assert await service.load_records("ns") == {}
    store = JournalStore()
    async with registered(broker, store):
        assert service.records_available
        service.save_record("ns", "k", b"v1")
        service.save_record("ns", "k", b"v2")
        assert store.records == {("ns", "k"): b"v2"}
        assert store.of("record_save") == [("ns", "k"), ("ns", "k")]


async def test_hook_record_load(broker: Any) -> None:
    store = JournalStore()
    store.records = {("a", "1"): b"one", ("b", "2"): b"two"}
    async with registered(broker, store):
        asked = len(store.of("record_load"))  # the retainer reads its own when a store loads
        assert await broker.service.load_records("a") == {"1": b"one"}
        assert store.of("record_load")[asked:] == ["a"]


async def test_hook_record_delete(broker: Any) -> None:
    store = JournalStore()
    store.records = {("a", "1"): b"one"}
    async with registered(broker, store):
        commits = len(store.of("commit"))
        broker.service.delete_record("a", "1")
        assert await broker.service.commit_store()
        assert store.records == {} and store.of("record_delete") == [("a", "1")]
        assert len(store.of("commit")) == commits + 1


async def test_an_async_synchronous_store_hook_fails_the_load(broker: Any) -> None:
    class AsyncSave:
        @hookimpl
        async def message_store_save(self, client_id: str, entry: StoredMessage) -> None:
            pass

    with pytest.raises(PluginError, match="must be synchronous"):
        await broker.plugins.register("async-save", AsyncSave())


# ------------------------------------------------------------------- cluster_forward


class Forwarder:
    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.calls: list[tuple[Message, ClientInfo, int]] = []

    @hookimpl
    def cluster_forward(self, message: Message, origin: ClientInfo) -> None:
        self.calls.append((message, origin, self.broker.router.messages_routed))


async def test_hook_cluster_forward(broker: Any) -> None:
    first, second = Forwarder(broker), Forwarder(broker)
    async with (
        registered(broker, first),
        registered(broker, second),
        MQTTTestClient.open(broker.port()) as sub,
        MQTTTestClient.open(broker.port()) as pub,
    ):
        await sub.connect("sub")
        await sub.subscribe("c/#")
        await pub.connect("pub", username="pu")
        routed_before = broker.router.messages_routed
        await pub.publish("c/1", b"over there", qos=1)
        assert (await sub.receive()).payload == b"over there"
        [(message, origin, routed)] = first.calls
        assert (message.topic, message.payload, message.qos) == ("c/1", b"over there", 1)
        assert (origin.client_id, origin.username, origin.protocol_level) == ("pub", "pu", 5)
        assert routed == routed_before + 1  # offered after local routing
        assert second.calls == []  # only the first implementation provides
        await broker.service.publish("c/2", b"service")
        assert first.calls[-1][1] == broker.publisher.broker_client


class HandingOver:
    """Another node held "mover": it hands over a session with a subscription and a message."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    @hookimpl
    async def cluster_register(self, client: ClientInfo, clean_start: bool) -> SessionSnapshot | None:
        self.calls.append((client.client_id, clean_start))
        if client.client_id != "mover":
            return None
        return SessionSnapshot(
            "mover", None, 5, 300, (TopicSubscription("mv/#", 1),), (Message("mv/1", b"waited elsewhere", 1),)
        )


async def test_hook_cluster_register(broker: Any) -> None:
    plugin = HandingOver()
    async with registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("mover", clean_start=False, properties=PERSISTENT)
            assert connack.session_present  # resumed here
            assert (await client.receive()).payload == b"waited elsewhere"
            await broker.service.publish("mv/2", b"routed here now", qos=1)
            assert (await client.receive()).payload == b"routed here now"
        async with MQTTTestClient.open(broker.port()) as client:
            assert not (await client.connect("fresh", clean_start=True)).session_present
        assert plugin.calls == [("mover", False), ("fresh", True)]


class ClaimingAtOnce(HandingOver):
    """A cluster plugin that claims clean-start CONNECTs without being awaited."""

    @hookimpl
    def cluster_claim(self, client: ClientInfo) -> None:
        self.calls.append((client.client_id, True))
        self.claimed_by = client.node


async def test_hook_cluster_claim(broker: Any) -> None:
    plugin = ClaimingAtOnce()
    async with registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:  # no session here: the lean path
            assert not (await client.connect("fresh", clean_start=True)).session_present
        async with MQTTTestClient.open(broker.port()) as client:
            assert (await client.connect("mover", clean_start=False, properties=PERSISTENT)).session_present
        async with MQTTTestClient.open(broker.port()) as client:  # a session here: the awaiting path
            assert not (await client.connect("mover", clean_start=True)).session_present
        # Clean starts go to cluster_claim (on both paths), the others to cluster_register.
        assert plugin.calls == [("fresh", True), ("mover", False), ("mover", True)]
        assert plugin.claimed_by == broker.node_name


async def test_an_async_cluster_claim_is_refused_at_load(broker: Any) -> None:
    class Awaiting:
        @hookimpl
        async def cluster_claim(self, client: ClientInfo) -> None:
            pass

    with pytest.raises(PluginError, match="cluster_claim"):
        async with registered(broker, Awaiting()):
            pass


async def test_a_session_handed_over_is_not_resumed_with_clean_start(broker: Any) -> None:
    async with registered(broker, HandingOver()), MQTTTestClient.open(broker.port()) as client:
        assert not (await client.connect("mover", clean_start=True)).session_present
        assert broker.service.subscriptions("mover") == ()


class ServesGroupA:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []

    @hookimpl
    def cluster_shared_here(self, group: str, topic_filter: str, message: Message) -> bool:
        self.asked.append((group, topic_filter, message.topic))
        return group == "a"


async def test_hook_cluster_shared_here(broker: Any) -> None:
    plugin = ServesGroupA()
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as member:
        await member.connect("member")
        await member.subscribe("$share/a/sh/#", "$share/b/sh/#", "sh/plain", qos=1)
        await broker.service.publish("sh/plain", b"x", qos=1)
        got = sorted([(await member.receive()).payload for _ in range(2)])
        assert got == [b"x", b"x"]  # group a and the plain subscription; group b elsewhere
        assert await member.nothing_received(0.1)
        assert sorted(plugin.asked) == [("a", "sh/#", "sh/plain"), ("b", "sh/#", "sh/plain")]
        # A message another node forwarded serves the groups it names, without asking.
        await broker.service.route_forwarded(Message("sh/plain", b"fwd", 1), None, frozenset({("b", "sh/#")}))
        got = sorted([(await member.receive()).payload for _ in range(2)])
        assert got == [b"fwd", b"fwd"]  # group b and the plain subscription
        assert await member.nothing_received(0.1) and len(plugin.asked) == 2


class OtherNodeSessions:
    def __init__(self) -> None:
        self.disconnects: list[tuple[str, bool]] = []

    @hookimpl
    async def cluster_sessions(self) -> list[SessionInfo]:
        return [SessionInfo("remote", False, None, None, None, 4, False, None, 1, 0, 2, "b@x")]

    @hookimpl
    async def cluster_disconnect(self, client_id: str, cleanup: bool) -> bool:
        self.disconnects.append((client_id, cleanup))
        return client_id == "remote"


async def test_hook_cluster_sessions(broker: Any) -> None:
    async with registered(broker, OtherNodeSessions()), MQTTTestClient.open(broker.port()) as client:
        await client.connect("local")
        listed = await broker.service.all_sessions()
        assert [(info.client_id, info.node) for info in listed] == [("local", broker.node_name), ("remote", "b@x")]
    assert [info.client_id for info in await broker.service.all_sessions()] == []  # single node again


async def test_hook_cluster_disconnect(broker: Any) -> None:
    plugin = OtherNodeSessions()
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("local")
        assert await broker.service.disconnect_anywhere("local")  # here: the hook is not asked
        assert await broker.service.disconnect_anywhere("remote", cleanup=True)
        assert not await broker.service.disconnect_anywhere("nobody")
        assert plugin.disconnects == [("remote", True), ("nobody", False)]


class TwoNodes:
    @hookimpl
    async def cluster_nodes(self) -> list[NodeInfo]:
        return [NodeInfo("a@x", True), NodeInfo("b@x", False)]


class BrokenNodes:
    @hookimpl
    def cluster_nodes(self) -> list[NodeInfo]:
        raise RuntimeError("no redis")


async def test_hook_cluster_nodes(broker: Any) -> None:
    assert await broker.service.nodes() == (NodeInfo(broker.node_name, True),)  # a single node
    async with registered(broker, TwoNodes()):
        assert await broker.service.nodes() == (NodeInfo("a@x", True), NodeInfo("b@x", False))
        table = await broker.service.run_command(["cluster", "show"])
        assert [(row["Node"], row["Running"]) for row in table.rows] == [("a@x", True), ("b@x", False)]
    async with registered(broker, BrokenNodes()):
        assert await broker.service.nodes() == (NodeInfo(broker.node_name, True),)  # failed: this node alone


class OtherNodePlugins:
    def __init__(self) -> None:
        self.asked: list[bool] = []

    @hookimpl
    async def cluster_plugins(self, internal: bool) -> list[NodePlugins]:
        self.asked.append(internal)
        info = PluginInfo("far", "module", "object", "", "running", None, (), (), 0, 0)
        return [NodePlugins("b@x", (info,))]


class BrokenPlugins:
    @hookimpl
    def cluster_plugins(self) -> list[NodePlugins]:
        raise RuntimeError("no redis")


async def test_hook_cluster_plugins(broker: Any) -> None:
    alone = await broker.service.all_plugins()
    assert [(n.node, [p.name for p in n.plugins]) for n in alone] == [(broker.node_name, ["retainer"])]
    plugin = OtherNodePlugins()
    async with registered(broker, plugin, name="near"):
        listed = await broker.service.all_plugins(internal=True)
        assert [(n.node, [p.name for p in n.plugins]) for n in listed] == [
            (broker.node_name, ["admin", "retainer", "near"]),
            ("b@x", ["far"]),
        ]
        table = await broker.service.run_command(["plugin", "show"])
        assert [(row["Node"], row["Plugin"]) for row in table.rows][-1] == ("b@x", "far")
        assert plugin.asked == [True, False]
    async with registered(broker, BrokenPlugins(), name="broken"):
        assert [n.node for n in await broker.service.all_plugins()] == [broker.node_name]  # failed: this node


class OtherNodeMetrics:
    @hookimpl
    async def cluster_metrics(self) -> list[NodeMetrics]:
        return [
            NodeMetrics(
                "b@x",
                (
                    MetricReading("counter", "publish_received", "", (), {(): 5}),
                    MetricReading("gauge", "retained_messages", "", (), {(): 3}),
                    MetricReading("counter", "packets_received", "", ("type",), {("PUBLISH",): 5}),
                    MetricReading("gauge", "far_only", "", (), None),  # its reader failed
                ),
            )
        ]


async def test_hook_cluster_metrics(broker: Any) -> None:
    async def shown(*flags: str) -> dict[str, str]:
        text = (await broker.service.run_command(["metrics", "show", *flags])).render()
        return dict(line.split(" = ") for line in text.splitlines())

    [alone] = await broker.service.all_metrics()
    assert alone.node == broker.node_name and {m.name for m in alone.metrics} >= {"publish_received", "sessions"}
    await broker.service.publish("r", b"kept", retain=True)
    async with registered(broker, OtherNodeMetrics()):
        here, there = await broker.service.all_metrics()
        assert (here.node, there.node) == (broker.node_name, "b@x")
        summed = await shown()
        assert summed["counter.publish_received"] == "5"  # 0 here
        assert summed["gauge.retained_messages"] == "3"  # each node's copy: the largest, not 1 + 3
        assert summed["gauge.far_only"] == "-1"
        assert (await shown("--aggregate=false"))['counter.packets_received{type="PUBLISH"}'] == "5"
        per_node = await shown("--per-node")
        assert per_node[f'gauge.retained_messages{{node="{broker.node_name}"}}'] == "1"
        assert per_node['gauge.retained_messages{node="b@x"}'] == "3"
        assert (await shown("--node=b@x"))["counter.publish_received"] == "5"
        with pytest.raises(CommandError, match="no node nowhere@x"):
            await shown("--node=nowhere@x")


# -------------------------------------------------------------------- registration


class AdminPlugin:
    def __init__(self) -> None:
        self.registries: list[Any] = []

    @hookimpl
    def register_admin_commands(self, registry: Any) -> None:
        self.registries.append(registry)
        registry.add("hooktest ping", lambda service, args: Text("pong"), help="answer pong")


async def test_hook_register_admin_commands(broker: Any) -> None:
    plugin = AdminPlugin()
    async with registered(broker, plugin, name="admin-plugin"):
        assert len(plugin.registries) == 1  # called once, at load
        result = await broker.admin.run(broker.service, ["hooktest", "ping"])
        assert result == Text("pong")
    assert ("hooktest", "ping") not in broker.admin.commands  # removed at unload


async def test_hook_register_api_routes(broker: Any) -> None:
    """Called once at load with the route registry; the routes go at unload (served by
    the api plugin: tests/api/test_api.py)."""

    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    class Routes:
        @hookimpl
        def register_api_routes(self, routes: Any) -> None:
            routes.add("/hello", hello, methods=("GET", "POST"), scope="status")
            with pytest.raises(ValueError, match="not the API's own"):
                routes.add("/api/v1/hello", hello)
            with pytest.raises(ValueError, match="scope"):
                routes.add("/other", hello, scope="everyone")

    async with registered(broker, Routes()):
        route = broker.service.api_route("POST", "/hello")
        assert route is not None and (route.handler, route.scope) == (hello, "status")
        assert broker.service.api_route("GET", "/other") is None
    assert broker.service.api_route("GET", "/hello") is None


async def test_hook_register_metrics(broker: Any) -> None:
    class Metrics:
        handled = 0

        @hookimpl
        def register_metrics(self, registry: Any) -> None:
            registry.counter("test_handled", lambda: self.handled, "things handled")

    plugin = Metrics()
    async with registered(broker, plugin, name="metrics-test"):
        plugin.handled = 7
        shown = (await broker.admin.run(broker.service, ["metrics", "show"])).render()
        assert "counter.test_handled = 7" in shown
    shown = (await broker.admin.run(broker.service, ["metrics", "show"])).render()
    assert "test_handled" not in shown  # removed with the plugin


async def test_hook_register_config(broker: Any) -> None:
    class Settings:
        level = 1

        @hookimpl
        def register_config(self, settings: Any) -> None:
            def write(value: Any) -> None:
                if not isinstance(value, int):
                    raise ValueError("must be an integer")
                self.level = value

            settings.add("test.level", lambda: self.level, write, "a test setting")

    plugin = Settings()
    async with registered(broker, plugin, name="settings-test"):
        assert (await broker.admin.run(broker.service, ["set", "test.level=3"])).text == "Done"
        assert plugin.level == 3
        shown = await broker.admin.run(broker.service, ["show", "--test.level"])
        assert shown.rows[0]["test.level"] == 3
        with pytest.raises(CommandError):
            await broker.admin.run(broker.service, ["set", "test.level=abc"])
        assert plugin.level == 3
    with pytest.raises(CommandError):
        await broker.admin.run(broker.service, ["show", "--test.level"])  # gone with the plugin


async def test_async_registration_hook_is_refused_at_load(broker: Any) -> None:
    class AsyncRegistration:
        @hookimpl
        async def register_metrics(self, registry: Any) -> None:
            pass

    with pytest.raises(PluginError, match="must be synchronous"):
        async with registered(broker, AsyncRegistration()):
            pass


async def test_a_restored_session_keeps_when_it_began(broker: Any) -> None:
    store = DictStore()
    began = time.time() - 86400
    store.sessions["old"] = SessionSnapshot("old", None, 5, None, disconnected_at=began + 60, created_at=began)
    store.sessions["unknown"] = SessionSnapshot("unknown", None, 5, None, disconnected_at=began)  # an older entry
    async with broker_with_store(store) as broker:
        old, unknown = broker.service.session_info("old"), broker.service.session_info("unknown")
        assert old is not None and unknown is not None
        assert old.created_at == began and old.disconnected_at == began + 60
        assert unknown.created_at > time.time() - 60  # not known: the restore
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("old", clean_start=False, properties=PERSISTENT)
            await client.disconnect()
        await eventually(lambda: store.sessions["old"].disconnected_at > began + 60)
        assert store.sessions["old"].created_at == began  # saved again as it was


async def test_a_hand_over_past_its_deadline_keeps_the_session_here(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as client:
        await client.connect("slow", clean_start=False, properties=PERSISTENT)
        await client.subscribe("sl/#", qos=1)
        # The other node stopped waiting already: the session is not ended for nobody.
        assert await broker.service.hand_over("slow", deadline=trio.current_time() - 1) is None
        assert await client.closed() is not None  # its connection went all the same (0x8E)
    assert broker.sessions["slow"].subscriptions.keys() == {"sl/#"}
    snapshot = await broker.service.hand_over("slow")  # in time: handed over, ended here
    assert snapshot is not None and snapshot.subscriptions == (TopicSubscription("sl/#", 1),)
    assert "slow" not in broker.sessions


async def test_restore_session_gives_a_handed_over_session_to_the_store(broker: Any) -> None:
    store = DictStore()
    async with registered(broker, store):
        snapshot = SessionSnapshot("came", None, 5, 300, (TopicSubscription("c/#", 1),))
        assert await broker.service.restore_session(snapshot, in_store=False)
        assert [s.client_id for s in store.of("save")] == ["came"]  # saved, as new here
        assert not await broker.service.restore_session(snapshot)  # one session per client id
        assert broker.sessions["came"].connection is None


async def test_route_forwarded_all_delivers_a_frame_in_order_and_retains_what_is_retained() -> None:
    async with open_broker(test_config(plugins={"retainer": {}})) as broker:
        async with MQTTTestClient.open(broker.port()) as subscriber:
            await subscriber.connect("fw-sub")
            await subscriber.subscribe("fw/#", qos=1)
            frame = [
                (Message("fw/1", b"one", 1), None, frozenset()),
                (Message("fw/2", b"two", 1, retain=True), "elsewhere", frozenset()),
                (Message("fw/3", b"three", 0), None, frozenset()),
            ]
            assert await broker.service.route_forwarded_all(frame) == 3
            assert [(await subscriber.receive()).payload for _ in range(3)] == [b"one", b"two", b"three"]
        assert [m.topic for m in await broker.service.retained("fw/#")] == ["fw/2"]
