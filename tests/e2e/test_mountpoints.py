"""Mountpoints: topic namespaces from a listener or from auth_on_register, with real clients.

Clients of one mountpoint see only each other's messages and retained messages; hooks
see topics as the client sends them; ``$mount/`` is closed to clients; the service
face reaches into a mountpoint by its internal topics.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel import (
    ClientInfo,
    CommandError,
    ConfigError,
    Message,
    SessionSnapshot,
    Text,
    TopicSubscription,
    allow,
    hookimpl,
    topic_matches,
)
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Will
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, serving, test_config
from ternmq.kernel.values.config import ListenerConfig, load_config

from helpers import connected

LISTENERS = (
    ListenerConfig(name="plain", port=0),
    ListenerConfig(name="a", port=0, mountpoint="tenant-a"),
    ListenerConfig(name="b", port=0, mountpoint="tenant-b"),
)


@asynccontextmanager
async def mounted_broker(**limits: Any) -> AsyncIterator[Broker]:
    async with open_broker(test_config(listeners=LISTENERS, **limits)) as broker:
        yield broker


async def test_clients_of_a_mountpoint_see_only_each_other() -> None:
    async with mounted_broker() as broker:
        async with (
            connected(broker.port("a"), "a1") as a1,
            connected(broker.port("a"), "a2", 4) as a2,
            connected(broker.port("b"), "b1") as b1,
            connected(broker.port("plain"), "p1") as p1,
        ):
            for client in (a1, a2, b1, p1):
                await client.subscribe("#", qos=1)
            await a2.publish("s/1", b"from a", qos=1)
            for client in (a1, a2):
                message = await client.receive()
                assert (message.topic, message.payload) == ("s/1", b"from a")
            await b1.publish("s/1", b"from b", qos=1)
            assert (await b1.receive()).payload == b"from b"
            await p1.publish("s/1", b"from plain", qos=1)
            assert (await p1.receive()).payload == b"from plain"
            for client in (a1, a2, b1, p1):
                assert await client.nothing_received(0.1)


async def test_retained_messages_stay_in_their_mountpoint() -> None:
    async with mounted_broker() as broker:
        async with connected(broker.port("a"), "a1") as a1:
            await a1.publish("r/state", b"on", qos=1, retain=True)
        assert [m.topic for m in await broker.service.retained("#")] == []  # a $ topic
        assert [m.topic for m in await broker.service.retained("$mount/tenant-a/#")] == ["$mount/tenant-a/r/state"]
        async with connected(broker.port("a"), "a2") as a2:
            await a2.subscribe("r/#")
            message = await a2.receive()
            assert (message.topic, message.payload, message.retain) == ("r/state", b"on", True)
        for listener in ("b", "plain"):
            async with connected(broker.port(listener), f"other-{listener}") as other:
                await other.subscribe("r/#")
                assert await other.nothing_received(0.1)


async def test_mount_topics_are_closed_to_clients() -> None:
    async with mounted_broker() as broker:
        async with connected(broker.port("a"), "a1") as a1, connected(broker.port("plain"), "p1") as p1:
            await a1.subscribe("#", qos=1)
            ack = await p1.publish("$mount/tenant-a/x", b"sneaky", qos=1)
            assert ack.reason_code == 0x87
            suback = await p1.subscribe("$mount/#", "$share/g/$mount/tenant-a/#", "$mount", qos=1)
            assert suback.reason_codes == [0x87, 0x87, 0x87]
            assert await a1.nothing_received(0.1)
            # the service face reaches into a mountpoint by its internal topic
            assert await broker.service.publish("$mount/tenant-a/notice", b"from the broker", qos=1) == 1
            message = await a1.receive()
            assert (message.topic, message.payload) == ("notice", b"from the broker")


async def test_shared_subscriptions_and_wills_in_a_mountpoint() -> None:
    async with mounted_broker() as broker:
        async with (
            connected(broker.port("a"), "worker") as worker,
            connected(broker.port("b"), "other-worker") as other,
        ):
            await worker.subscribe("$share/g/jobs/#", "gone/#", qos=1)
            await other.subscribe("$share/g/jobs/#", "gone/#", qos=1)
            async with connected(broker.port("a"), "boss") as boss:
                await boss.publish("jobs/1", b"do it", qos=1)
            assert (await worker.receive()).topic == "jobs/1"
            will = Will("gone/dying", b"bye", 1, False, {})
            async with MQTTTestClient.open(broker.port("a")) as dying:
                assert (await dying.connect("dying", will=will)).reason_code == 0
            message = await worker.receive()
            assert (message.topic, message.payload) == ("gone/dying", b"bye")
            assert await other.nothing_received(0.1)


class Tenancy:
    """auth_on_register puts users in their own mountpoint; records what later hooks see."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    @hookimpl
    def auth_on_register(self, client: ClientInfo) -> Any:
        return allow(mountpoint=f"tenant-{client.username}") if client.username else None

    @hookimpl
    def auth_on_publish(self, client: ClientInfo, message: Message) -> Any:
        self.seen.append(("auth_on_publish", client.mountpoint, message.topic))
        return None

    @hookimpl
    def on_publish(self, client: ClientInfo, message: Message) -> None:
        self.seen.append(("on_publish", client.mountpoint, message.topic))

    @hookimpl
    def on_deliver(self, client: ClientInfo, message: Message) -> Any:
        self.seen.append(("on_deliver", client.mountpoint, message.topic))
        return None

    @hookimpl
    def auth_on_subscribe(self, client: ClientInfo, subscriptions: Any) -> Any:
        self.seen.extend(("auth_on_subscribe", client.mountpoint, s.topic_filter) for s in subscriptions)
        return None


async def test_auth_on_register_sets_the_mountpoint_and_hooks_see_client_topics() -> None:
    tenancy = Tenancy()
    async with mounted_broker() as broker, registered(broker, tenancy):
        async with (
            connected(broker.port("plain"), "x1", username="x") as x1,
            connected(broker.port("a"), "x2", 4, username="x") as x2,  # the plugin overrides the listener's
            connected(broker.port("plain"), "y1", username="y") as y1,
        ):
            await x1.subscribe("t", qos=1)
            await y1.subscribe("t", qos=1)
            await x2.publish("t", b"for x", qos=1)
            assert (await x1.receive()).topic == "t"
            assert await y1.nothing_received(0.1)
            assert [row.client_id for row in broker.service.sessions() if row.client_id.startswith("x")] == ["x1", "x2"]
            assert [s.topic_filter for s in broker.service.subscriptions("x1")] == ["t"]
    assert ("auth_on_subscribe", "tenant-x", "t") in tenancy.seen
    assert ("auth_on_publish", "tenant-x", "t") in tenancy.seen
    assert ("on_publish", "tenant-x", "t") in tenancy.seen
    assert ("on_deliver", "tenant-x", "t") in tenancy.seen


async def test_a_client_coming_back_in_another_mountpoint_starts_a_new_session() -> None:
    async with mounted_broker() as broker:
        async with connected(broker.port("a"), "roamer", clean_start=False) as roamer:
            await roamer.subscribe("keep", qos=1)
        async with connected(broker.port("b"), "roamer", clean_start=False) as roamer:
            assert roamer.connack.session_present is False
            assert broker.service.subscriptions("roamer") == ()
        async with connected(broker.port("b"), "roamer", clean_start=False) as roamer:
            assert roamer.connack.session_present is True


class OneStoredSession:
    def __init__(self, snapshot: SessionSnapshot) -> None:
        self.snapshot = snapshot

    @hookimpl
    def session_store_load_all(self) -> list[SessionSnapshot]:
        return [self.snapshot]

    @hookimpl
    def session_store_save(self, session: SessionSnapshot) -> None:
        self.snapshot = session


async def test_a_stored_session_keeps_its_mountpoint() -> None:
    snapshot = SessionSnapshot("kept", None, 5, 300, (TopicSubscription("news", 1),), (), 0.0, mountpoint="tenant-a")
    broker = Broker(test_config(listeners=LISTENERS))
    await broker.plugins.register("store", OneStoredSession(snapshot))
    async with serving(broker):
        async with connected(broker.port("a"), "sender") as sender:
            await sender.publish("news", b"in a", qos=1)
        await broker.service.publish("news", b"outside", qos=1)
        async with connected(broker.port("a"), "kept", clean_start=False) as kept:
            assert kept.connack.session_present
            message = await kept.receive()
            assert (message.topic, message.payload) == ("news", b"in a")
            assert await kept.nothing_received(0.1)
            assert broker.service.session("kept").mountpoint == "tenant-a"  # type: ignore[union-attr]


def test_a_mountpoint_that_cannot_be_told_apart_is_a_configuration_error(tmp_path: Any) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[listeners]]\nname = "x"\nmountpoint = "a/b"\n')
    with pytest.raises(ConfigError, match=r"\[listeners\.x\] mountpoint: a mountpoint may not contain"):
        load_config(path)


async def test_paho_clients_in_two_mountpoints() -> None:
    async with mounted_broker() as broker:
        received: list[tuple[str, bytes]] = []
        subscribed = threading.Event()
        got = threading.Event()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            received.append((msg.topic, msg.payload))
            got.set()

        def run() -> None:
            subscriber = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="paho-a", protocol=paho.MQTTv311)
            subscriber.on_message = on_message
            subscriber.on_subscribe = lambda *args: subscribed.set()
            subscriber.connect("127.0.0.1", broker.port("a"))
            subscriber.subscribe("p/#", qos=1)
            subscriber.loop_start()
            try:
                assert subscribed.wait(5)
                for port, payload in ((broker.port("b"), b"b"), (broker.port("a"), b"a")):
                    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
                    publisher.connect("127.0.0.1", port)
                    publisher.loop_start()
                    publisher.publish("p/x", payload, qos=1).wait_for_publish(5)
                    publisher.disconnect()
                    publisher.loop_stop()
                assert got.wait(5)
            finally:
                subscriber.disconnect()
                subscriber.loop_stop()

        await trio.to_thread.run_sync(run)
        assert received == [("p/x", b"a")]


async def test_session_show_has_a_mountpoint_column() -> None:
    async with mounted_broker() as broker, connected(broker.port("a"), "in-a"), connected(broker.port("plain"), "out"):
        table = await broker.service.run_command(["session", "show", "--client_id", "--mountpoint"])
    assert sorted((row["client_id"], row["mountpoint"]) for row in table.rows) == [("in-a", "tenant-a"), ("out", "")]  # type: ignore[union-attr]


async def test_a_topic_name_that_looks_shared_stays_in_its_mountpoint() -> None:
    async with mounted_broker() as broker:
        async with connected(broker.port("plain"), "spy") as spy, connected(broker.port("a"), "a1") as a1:
            suback = await spy.subscribe("$share/grp/$share/g/#", "$share/g/#", qos=1)
            assert suback.reason_codes == [1, 1]
            await a1.publish("$share/g/secret", b"tenant-a data", qos=1, retain=True)
            assert await spy.nothing_received(0.1)
        retained = [m.topic for m in await broker.service.retained("$mount/tenant-a/$share/#")]
        assert retained == ["$mount/tenant-a/$share/g/secret"]


async def test_dollar_topics_inside_a_mountpoint_are_not_matched_by_its_leading_wildcards() -> None:
    async with mounted_broker() as broker:
        async with connected(broker.port("a"), "all") as everything, connected(broker.port("a"), "dollar") as dollar:
            await everything.subscribe("#", "+/bar", qos=1)
            await dollar.subscribe("$foo/#", qos=1)
            await everything.publish("$foo/bar", b"x", qos=1, retain=True)
            message = await dollar.receive()
            assert message.topic == "$foo/bar"
            assert await everything.nothing_received(0.1)
        async with connected(broker.port("a"), "late") as late:
            await late.subscribe("#", qos=1)
            assert await late.nothing_received(0.1)  # nor is the retained one


def test_topic_matches_treats_a_mountpoints_dollar_topics_as_dollar_topics() -> None:
    assert not topic_matches("$mount/a/#", "$mount/a/$foo/bar")
    assert not topic_matches("$mount/a/+/bar", "$mount/a/$foo/bar")
    assert topic_matches("$mount/a/$foo/#", "$mount/a/$foo/bar")
    assert topic_matches("$mount/a/#", "$mount/a/foo/bar")


async def test_a_delayed_will_is_sent_when_its_client_comes_back_in_another_mountpoint() -> None:
    async with mounted_broker() as broker, connected(broker.port("a"), "watcher") as watcher:
        await watcher.subscribe("gone/#", qos=1)
        will = Will("gone/roamer", b"bye", 1, False, {"will_delay_interval": 30})
        async with MQTTTestClient.open(broker.port("a")) as roamer:
            props = {"session_expiry_interval": 300}
            assert (await roamer.connect("roamer", will=will, clean_start=False, properties=props)).reason_code == 0
        assert await watcher.nothing_received(0.1)  # delayed
        async with connected(broker.port("b"), "roamer", clean_start=False) as back:
            assert back.connack.session_present is False
            message = await watcher.receive()
            assert (message.topic, message.payload) == ("gone/roamer", b"bye")


async def test_the_service_names_an_offline_sessions_mountpoint_to_hooks() -> None:
    class Subscribed:
        def __init__(self) -> None:
            self.seen: list[tuple[str, str]] = []

        @hookimpl
        def on_subscribe(self, client: ClientInfo, subscriptions: Any) -> None:
            self.seen.append((client.client_id, client.mountpoint))

    recorder = Subscribed()
    async with mounted_broker() as broker, registered(broker, recorder):
        async with connected(broker.port("a"), "offline", clean_start=False):
            pass
        assert await broker.service.subscribe("offline", [TopicSubscription("x", 1)])
    assert recorder.seen == [("offline", "tenant-a")]


async def test_a_mountpoint_modifier_of_the_wrong_type_refuses_the_connect() -> None:
    class Wrong:
        @hookimpl
        def auth_on_register(self) -> Any:
            return allow(mountpoint=None)

    async with mounted_broker() as broker, registered(broker, Wrong()):
        async with MQTTTestClient.open(broker.port("plain")) as client:
            assert (await client.connect("c")).reason_code == 0x80


async def test_listener_start_with_a_mountpoint_and_listener_show() -> None:
    async with mounted_broker() as broker:
        done = await broker.service.run_command(["listener", "start", "name=c", "port=0", "--mountpoint=tenant-c"])
        assert isinstance(done, Text) and done.text.startswith("Done: c on 127.0.0.1:")
        table = await broker.service.run_command(["listener", "show"])
        shown = {row["name"]: row["mountpoint"] for row in table.rows}  # type: ignore[union-attr]
        assert shown == {"plain": "", "a": "tenant-a", "b": "tenant-b", "c": "tenant-c"}
        async with connected(broker.port("c"), "in-c") as client:
            [session] = [s for s in broker.service.sessions() if s.client_id == "in-c"]
            assert session.mountpoint == "tenant-c"
            await client.ping()
        with pytest.raises(CommandError, match="mountpoint"):
            await broker.service.run_command(["listener", "start", "name=d", "port=0", "--mountpoint=a/b"])
