"""Notification hooks on_offline_message, on_session_expired, on_message_drop, on_plugin_*.

Each test registers a small recording plugin, drives the broker with real clients
until the hook must fire (docs/hooks.md, "When hooks fire in a client's life") and
checks the frozen arguments it gets.
"""

from __future__ import annotations

from typing import Any

import trio

from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.values.types import Message

from helpers import PERSISTENT, Recorder, eventually, left_subscribed, wait_offline

# ------------------------------------------------------------------ on_offline_message


class OfflineWatcher(Recorder):
    @hookimpl
    async def on_offline_message(self, client_id: str, message: Message) -> None:
        await self._record(
            "on_offline_message",
            client_id=client_id,
            message=message,
            queued=len(self.broker.sessions[client_id].queue),
        )


async def test_hook_on_offline_message(broker: Any) -> None:
    plugin = OfflineWatcher(broker)
    await left_subscribed(broker, "away", "o/#")
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as pub:
        await pub.connect("pub")
        await pub.publish("o/1", b"qos2", qos=2, properties={"user_property": [("k", "v")]})
        await pub.publish("o/0", b"qos0", qos=0)  # QoS 0 is not queued for offline sessions
        await pub.publish("o/2", b"second", qos=1)
        await eventually(lambda: len(plugin.calls) == 2)
        first, second = plugin.of("on_offline_message")
        assert first["client_id"] == "away" and first["queued"] == 1
        assert (first["message"].topic, first["message"].payload, first["message"].qos) == ("o/1", b"qos2", 1)
        assert dict(first["message"].properties) == {"user_property": [("k", "v")]}
        assert (second["message"].payload, second["queued"]) == (b"second", 2)


# ------------------------------------------------------------------ on_session_expired


class ExpiryWatcher(Recorder):
    @hookimpl
    async def on_session_expired(self, client_id: str) -> None:
        await self._record("on_session_expired", client_id=client_id, still_there=client_id in self.broker.sessions)


async def test_hook_on_session_expired(broker: Any) -> None:
    plugin = ExpiryWatcher(broker)
    async with registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("short", clean_start=False, properties={"session_expiry_interval": 1})
            await client.subscribe("x", qos=1)
            await client.disconnect()
        await wait_offline(broker, "short", session_kept=True)
        assert plugin.calls == []
        await eventually(lambda: plugin.calls, timeout=3)
        assert plugin.calls == [("on_session_expired", {"client_id": "short", "still_there": False})]
        assert broker.router.trie.match("x") == ([], {})


async def test_on_session_expired_not_fired_when_the_client_returns_in_time(broker: Any) -> None:
    plugin = ExpiryWatcher(broker)
    async with registered(broker, plugin):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("back", clean_start=False, properties={"session_expiry_interval": 1})
            await client.disconnect()
        await wait_offline(broker, "back", session_kept=True)
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("back", clean_start=False, properties={"session_expiry_interval": 1})
            await trio.sleep(1.2)
            assert plugin.calls == []


# --------------------------------------------------------------------- on_message_drop


class DropWatcher(Recorder):
    @hookimpl
    async def on_message_drop(self, client_id: str, message: Message, reason: str) -> None:
        await self._record("on_message_drop", client_id=client_id, message=message, reason=reason)


async def test_hook_on_message_drop(broker_factory: Any) -> None:
    """reason "queue_full": an offline session's queue is at max_queued_messages."""
    async with broker_factory(max_queued_messages=1) as broker:
        plugin = DropWatcher(broker)
        await left_subscribed(broker, "full", "f")
        async with registered(broker, plugin):
            await broker.service.publish("f", b"kept", qos=1)
            await broker.service.publish("f", b"dropped", qos=1)
            [call] = plugin.of("on_message_drop")
            assert (call["client_id"], call["reason"], call["message"].payload) == ("full", "queue_full", b"dropped")


async def test_on_message_drop_max_packet_size_exceeded(broker: Any) -> None:
    plugin = DropWatcher(broker)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("tiny", properties={"maximum_packet_size": 64})
        await client.subscribe("big", qos=1)
        await broker.service.publish("big", b"x" * 100, qos=1)
        await broker.service.publish("big", b"fits", qos=1)
        assert (await client.receive()).payload == b"fits"
        [call] = plugin.of("on_message_drop")
        assert (call["client_id"], call["reason"], call["message"].payload) == (
            "tiny",
            "max_packet_size_exceeded",
            b"x" * 100,
        )


async def test_on_message_drop_expired_in_the_offline_queue(broker: Any) -> None:
    plugin = DropWatcher(broker)
    await left_subscribed(broker, "late", "e")
    await broker.service.publish("e", b"stale", qos=1, properties={"message_expiry_interval": 1})
    await broker.service.publish("e", b"fresh", qos=1)
    await trio.sleep(1.05)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("late", clean_start=False, properties=PERSISTENT)
        assert (await client.receive()).payload == b"fresh"
        await eventually(lambda: plugin.calls)
        [call] = plugin.of("on_message_drop")
        assert (call["client_id"], call["reason"], call["message"].payload) == ("late", "expired", b"stale")


# ------------------------------------------------------- on_plugin_loaded / on_plugin_unloaded


class PluginWatcher(Recorder):
    @hookimpl
    async def on_plugin_loaded(self, name: str) -> None:
        await self._record("on_plugin_loaded", name=name, listed=name in self.broker.plugins.loaded)

    @hookimpl
    async def on_plugin_unloaded(self, name: str) -> None:
        await self._record("on_plugin_unloaded", name=name, listed=name in self.broker.plugins.loaded)


class Empty:
    @hookimpl
    def on_publish(self) -> None:
        pass


async def test_hook_on_plugin_loaded(broker: Any) -> None:
    watcher = PluginWatcher(broker)
    async with registered(broker, watcher, name="watcher"):
        async with registered(broker, Empty(), name="other"):
            pass
        await broker.plugins.load("retainer-two", path="ternmq.plugins.retainer")
        loaded = [(c["name"], c["listed"]) for c in watcher.of("on_plugin_loaded")]
        assert loaded == [("watcher", True), ("other", True), ("retainer-two", True)]  # itself included
        await broker.plugins.unload("retainer-two")


async def test_hook_on_plugin_unloaded(broker: Any) -> None:
    watcher = PluginWatcher(broker)
    async with registered(broker, watcher, name="watcher"):
        async with registered(broker, Empty(), name="other"):
            pass
        await broker.plugins.unload("retainer")
        assert [(c["name"], c["listed"]) for c in watcher.of("on_plugin_unloaded")] == [
            ("other", False),
            ("retainer", False),
        ]
    # Once unloaded itself, the watcher's hooks are gone: it does not see its own unload.
    assert [c["name"] for c in watcher.of("on_plugin_unloaded")] == ["other", "retainer"]
