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

import pytest
import trio

from ternmq.kernel.admin import CommandError
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Publish, SubscriptionRequest
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.manager import PluginError
from ternmq.kernel.routing.topics import topic_matches
from ternmq.kernel.testing import MQTTTestClient, registered, serving, test_config
from ternmq.kernel.values.output import Text
from ternmq.kernel.values.types import ClientInfo, Message, SessionSnapshot, TopicSubscription

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
        assert store.of("delete") == []
        async with MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("forget-me", clean_start=True)
            assert not connack.session_present
        assert store.of("delete") == ["forget-me"]
        assert "forget-me" not in store.sessions


async def test_session_store_delete_on_expiry(broker: Any) -> None:
    store = DictStore()
    async with registered(broker, store), MQTTTestClient.open(broker.port()) as client:
        await client.connect("expires", clean_start=False, properties={"session_expiry_interval": 1})
        await client.disconnect()
        await eventually(lambda: store.of("delete"), timeout=3)
        assert store.of("delete") == ["expires"]


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


# ------------------------------------------------------------------- cluster_forward


class Forwarder:
    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.calls: list[tuple[Message, ClientInfo, int]] = []

    @hookimpl
    async def cluster_forward(self, message: Message, origin: ClientInfo) -> None:
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
