"""Notification hooks of the client lifecycle in a running broker, with real clients.

Each test registers a small recording plugin, checks the moment the hook fires
(docs/hooks.md, "When hooks fire in a client's life": on_register after the session is attached and before
CONNACK, on_publish after routing, on_subscribe after the registry update, ...) and the
frozen arguments it gets.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel.codec import Connack, Connect, Puback, Publish
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.values.types import ClientInfo, Message, TopicSubscription, allow, deny

from helpers import PERSISTENT, Gate, Recorder, client_info, eventually, left_subscribed

# ------------------------------------------------------------------------ on_register


class RegisterWatcher(Recorder):
    @hookimpl
    async def on_register(self, client: ClientInfo, properties: Any) -> None:
        session = self.broker.sessions.get(client.client_id)
        await self._record(
            "on_register",
            client=client,
            properties=dict(properties),
            attached=session is not None and session.connection is not None,
        )


async def test_hook_on_register(broker: Any) -> None:
    """After the session is attached, before CONNACK; properties are the CONNACK's."""
    gate = Gate()
    plugin = RegisterWatcher(broker, gate)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.send(Connect("", 5, True, 60, "ru", None, None, {"request_response_information": 1}))
        await gate.entered.wait()
        assert await client.nothing_received(0.2)
        gate.release.set()
        connack = await client.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0
        [call] = plugin.of("on_register")
        assigned = connack.properties["assigned_client_identifier"]
        assert call["client"] == client_info(broker, client, assigned, "ru")
        assert call["attached"] is True
        assert call["properties"] == connack.properties
        assert call["properties"]["response_information"] == f"response/{assigned}"


async def test_on_register_sees_auth_on_register_modifiers_and_v311_has_no_properties(
    broker: Any, paho_client: Any
) -> None:
    class Renamer:
        @hookimpl
        def auth_on_register(self, client: ClientInfo) -> Any:
            return allow(client_id=client.client_id + "-x", username="modified")

    plugin = RegisterWatcher(broker)
    async with registered(broker, Renamer()), registered(broker, plugin):
        c = paho_client("v3", paho.MQTTv311)
        await c.connect(broker.port())
        await eventually(lambda: plugin.of("on_register"))
        [call] = plugin.of("on_register")
        assert (call["client"].client_id, call["client"].username, call["client"].protocol_level) == (
            "v3-x",
            "modified",
            4,
        )
        assert call["properties"] == {}


async def test_on_register_not_fired_for_a_refused_connect(broker: Any) -> None:
    class Refuser:
        @hookimpl
        def auth_on_register(self) -> Any:
            return deny(0x87)

    plugin = RegisterWatcher(broker)
    async with registered(broker, Refuser()), registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        assert (await client.connect("nope")).reason_code == 0x87
        assert plugin.calls == []


# ------------------------------------------------------------------------- on_publish


class PublishWatcher(Recorder):
    @hookimpl
    async def on_publish(self, client: ClientInfo, message: Message) -> None:
        await self._record("on_publish", client=client, message=message)


async def test_hook_on_publish(broker: Any) -> None:
    """After routing (the subscriber already has it), before the publisher's PUBACK."""
    gate = Gate()
    plugin = PublishWatcher(broker, gate)
    async with (
        registered(broker, plugin),
        MQTTTestClient.open(broker.port()) as sub,
        MQTTTestClient.open(broker.port()) as pub,
    ):
        await sub.connect("sub")
        await sub.subscribe("p/#", qos=1)
        await pub.connect("pub", username="pu")
        await pub.send(Publish("p/1", b"routed", 1, False, False, 9, {"content_type": "a/b"}))
        await gate.entered.wait()
        assert (await sub.receive()).payload == b"routed"
        assert await pub.nothing_received(0.1)  # PUBACK waits for the hook
        gate.release.set()
        assert (await pub.expect(Puback)).reason_code == 0
        [call] = plugin.of("on_publish")
        assert call["client"] == client_info(broker, pub, "pub", "pu")
        message = call["message"]
        assert (message.topic, message.payload, message.qos, message.retain) == ("p/1", b"routed", 1, False)
        assert dict(message.properties) == {"content_type": "a/b"}


async def test_on_publish_gets_the_message_as_routed_and_not_denied_ones(broker: Any) -> None:
    class Auth:
        @hookimpl
        def auth_on_publish(self, message: Message) -> Any:
            return deny() if message.topic == "denied" else allow(payload=b"modified", qos=0)

    plugin = PublishWatcher(broker)
    async with registered(broker, Auth()), registered(broker, plugin), MQTTTestClient.open(broker.port()) as pub:
        await pub.connect("pub")
        assert (await pub.publish("denied", b"x", qos=1)).reason_code == 0x87
        await pub.publish("allowed", b"x", qos=1)
        await eventually(lambda: plugin.of("on_publish"))
        [call] = plugin.of("on_publish")
        assert (call["message"].topic, call["message"].payload, call["message"].qos) == ("allowed", b"modified", 0)


async def test_on_publish_for_service_publishes_names_the_broker(broker: Any) -> None:
    plugin = PublishWatcher(broker)
    async with registered(broker, plugin):
        await broker.service.publish("svc", b"from broker")
        [call] = plugin.of("on_publish")
        assert call["client"] == ClientInfo(f"$broker/{broker.node_name}", node=broker.node_name)
        assert call["message"].payload == b"from broker"


# ----------------------------------------------------------------------- on_subscribe


class SubscribeWatcher(Recorder):
    @hookimpl
    async def on_subscribe(self, client: ClientInfo, subscriptions: Any) -> None:
        await self._record(
            "on_subscribe",
            client=client,
            subscriptions=tuple(subscriptions),
            registered=set(self.broker.sessions[client.client_id].subscriptions),
        )


async def test_hook_on_subscribe(broker: Any) -> None:
    """After the registry update; refused filters carry their reason code as qos."""

    class Auth:
        @hookimpl
        def auth_on_subscribe(self, subscriptions: Any) -> Any:
            return allow(topics=[s if s.topic_filter != "secret" else ("secret", 0x87) for s in subscriptions])

    plugin = SubscribeWatcher(broker)
    async with registered(broker, Auth()), registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("subber", username="su")
        suback = await client.subscribe("ok/+", "secret", "bad/#/filter", qos=1)
        assert suback.reason_codes == [1, 0x87, 0x8F]
        await eventually(lambda: plugin.of("on_subscribe"))
        [call] = plugin.of("on_subscribe")
        assert call["client"] == client_info(broker, client, "subber", "su")
        assert call["subscriptions"] == (
            TopicSubscription("ok/+", 1),
            TopicSubscription("secret", 0x87),
            TopicSubscription("bad/#/filter", 0x8F),
        )
        assert call["registered"] == {"ok/+"}


# --------------------------------------------------------------------- on_unsubscribe


class UnsubscribeWatcher(Recorder):
    @hookimpl
    async def on_unsubscribe(self, client: ClientInfo, topic_filters: Any) -> None:
        await self._record(
            "on_unsubscribe",
            client=client,
            topic_filters=tuple(topic_filters),
            registered=set(self.broker.sessions[client.client_id].subscriptions),
        )


async def test_hook_on_unsubscribe(broker: Any) -> None:
    plugin = UnsubscribeWatcher(broker)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("unsubber")
        await client.subscribe("a", "b", "c")
        await client.unsubscribe("a", "b")
        await eventually(lambda: plugin.of("on_unsubscribe"))
        [call] = plugin.of("on_unsubscribe")
        assert call["client"] == client_info(broker, client, "unsubber")
        assert call["topic_filters"] == ("a", "b")
        assert call["registered"] == {"c"}  # fired after the registry update


async def test_on_unsubscribe_gets_the_rewritten_filters(broker: Any) -> None:
    class Rewriter:
        @hookimpl
        def auth_on_unsubscribe(self) -> Any:
            return allow(topics=["c"])

    plugin = UnsubscribeWatcher(broker)
    async with registered(broker, Rewriter()), registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("unsubber")
        await client.subscribe("a", "c")
        await client.unsubscribe("a")
        await eventually(lambda: plugin.of("on_unsubscribe"))
        assert plugin.of("on_unsubscribe")[0]["topic_filters"] == ("c",)
        assert plugin.of("on_unsubscribe")[0]["registered"] == {"a"}


# -------------------------------------------------------------------- on_client_wakeup


class WakeupWatcher(Recorder):
    @hookimpl
    async def on_client_wakeup(self, client: ClientInfo) -> None:
        session = self.broker.sessions[client.client_id]
        await self._record("on_client_wakeup", client=client, queued=len(session.queue))


async def test_hook_on_client_wakeup(broker: Any) -> None:
    """After CONNACK, once the offline queue has been drained to the client."""
    await left_subscribed(broker, "sleeper", "q")
    await broker.service.publish("q", b"while away", qos=1)
    gate = Gate()
    plugin = WakeupWatcher(broker, gate)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.send(Connect("sleeper", 5, False, 60, None, None, None, PERSISTENT))
        await gate.entered.wait()
        connack = await client.next_packet()
        assert isinstance(connack, Connack) and connack.session_present
        assert (await client.receive()).payload == b"while away"  # drained before wakeup
        gate.release.set()
        [call] = plugin.of("on_client_wakeup")
        assert call["client"] == client_info(broker, client, "sleeper")
        assert call["queued"] == 0


# ------------------------------------------------------- on_client_offline / on_client_gone


class DisconnectWatcher(Recorder):
    @hookimpl
    async def on_client_offline(self, client: ClientInfo, reason: str) -> None:
        await self._record(
            "on_client_offline", client=client, reason=reason, session_kept=client.client_id in self.broker.sessions
        )

    @hookimpl
    async def on_client_gone(self, client: ClientInfo, reason: str) -> None:
        await self._record(
            "on_client_gone", client=client, reason=reason, session_kept=client.client_id in self.broker.sessions
        )


async def leave(broker: Any, how: str, client: MQTTTestClient, client_id: str) -> None:
    if how == "normal":
        await client.disconnect()
    elif how == "connection_lost":
        await client.stream.aclose()
    elif how == "kicked":
        assert broker.service.disconnect(client_id, 0x98)
    elif how == "protocol_error":
        await client.send(Connect(client_id, 5))  # a second CONNECT
    elif how == "taken_over":
        async with MQTTTestClient.open(broker.port()) as other:
            await other.connect(client_id, clean_start=False, properties=PERSISTENT)


@pytest.mark.parametrize("how", ["normal", "connection_lost", "kicked", "protocol_error", "taken_over"])
async def test_hook_on_client_offline(broker: Any, how: str) -> None:
    plugin = DisconnectWatcher(broker)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("persistent", clean_start=False, properties=PERSISTENT)
        info = client_info(broker, client, "persistent")
        await leave(broker, how, client, "persistent")
        await eventually(lambda: plugin.calls)
        assert plugin.calls[0] == ("on_client_offline", {"client": info, "reason": how, "session_kept": True})
        assert plugin.of("on_client_gone") == []


async def test_on_client_offline_reason_keep_alive(broker: Any) -> None:
    plugin = DisconnectWatcher(broker)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port(), 4) as client:
        await client.connect("silent", clean_start=False, keep_alive=1)
        await eventually(lambda: plugin.calls, timeout=4)
        [call] = plugin.of("on_client_offline")
        assert call["reason"] == "keep_alive" and call["client"].protocol_level == 4


async def test_on_client_offline_reason_shutdown(broker_factory: Any) -> None:
    plugin = DisconnectWatcher()
    async with broker_factory() as broker:
        plugin.broker = broker
        await broker.plugins.register("watcher", plugin)
        client = MQTTTestClient(await trio.open_tcp_stream("127.0.0.1", broker.port()))
        await client.connect("stays", clean_start=False, properties=PERSISTENT)
    disconnect = await client.closed()
    await client.stream.aclose()
    assert disconnect is not None and disconnect.reason_code == 0x8B  # server shutting down
    assert [(c["client"].client_id, c["reason"]) for c in plugin.of("on_client_offline")] == [("stays", "shutdown")]


@pytest.mark.parametrize("how", ["normal", "connection_lost", "kicked"])
async def test_hook_on_client_gone(broker: Any, how: str) -> None:
    plugin = DisconnectWatcher(broker)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("clean")
        info = client_info(broker, client, "clean")
        await leave(broker, how, client, "clean")
        await eventually(lambda: plugin.calls)
        assert plugin.calls == [("on_client_gone", {"client": info, "reason": how, "session_kept": False})]


async def test_on_client_gone_for_v311_clean_session_and_offline_for_persistent(broker: Any, paho_client: Any) -> None:
    plugin = DisconnectWatcher(broker)
    async with registered(broker, plugin):
        for client_id, clean in (("paho-clean", True), ("paho-persistent", False)):
            c = paho_client(client_id, paho.MQTTv311, clean_session=clean)
            await c.connect(broker.port())
            await c.call(c.client.disconnect)
            assert await trio.to_thread.run_sync(c.disconnected.wait, 5)
        await eventually(lambda: len(plugin.calls) == 2)
        assert sorted((name, kw["client"].client_id, kw["reason"]) for name, kw in plugin.calls) == [
            ("on_client_gone", "paho-clean", "normal"),
            ("on_client_offline", "paho-persistent", "normal"),
        ]
