"""Decision hooks auth_on_register and auth_on_publish in a running broker, with real clients.

Each test registers a small recording plugin (``registered(broker, obj)``), checks that
the hook fires at the moment VerneMQ fires it (docs/hooks.md, "When hooks fire") with
the right frozen arguments, and that its answer takes effect on the wire.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
import pytest
import trio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ternmq.kernel.codec import (
    Connack,
    Connect,
    Puback,
    Publish,
    Pubrec,
    Will,
)
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.values.types import ClientInfo, Message, allow, deny

from helpers import Gate, client_info, eventually

# ------------------------------------------------------------------ auth_on_register


class RegisterRecorder:
    def __init__(self, answer: Any = None, gate: Gate | None = None, broker: Any = None) -> None:
        self.answer = answer
        self.gate = gate
        self.broker = broker
        self.calls: list[dict[str, Any]] = []

    @hookimpl
    async def auth_on_register(
        self, client: ClientInfo, password: bytes | None, clean_start: bool, properties: Any
    ) -> Any:
        attached = self.broker is not None and client.client_id in self.broker.sessions
        self.calls.append(
            {
                "client": client,
                "password": password,
                "clean_start": clean_start,
                "properties": dict(properties),
                "session_attached": attached,
            }
        )
        if self.gate:
            await self.gate.hold()
        return self.answer


async def test_hook_auth_on_register(broker: Any) -> None:
    """Fires once per CONNECT, before the session is attached and before CONNACK."""
    gate = Gate()
    plugin = RegisterRecorder(allow(), gate, broker)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        props = {"session_expiry_interval": 30, "user_property": [("k", "v")]}
        await client.send(Connect("reg-1", 5, False, 60, "alice", b"secret", None, props))
        await gate.entered.wait()
        assert await client.nothing_received(0.2)  # no CONNACK while the hook decides
        assert "reg-1" not in broker.sessions
        gate.release.set()
        connack = await client.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0
        assert plugin.calls == [
            {
                "client": client_info(broker, client, "reg-1", "alice"),
                "password": b"secret",
                "clean_start": False,
                "properties": props,
                "session_attached": False,
            }
        ]


async def test_hook_auth_on_register_v311_client_has_empty_properties(broker: Any, paho_client: Any) -> None:
    plugin = RegisterRecorder(allow())
    async with registered(broker, plugin):
        c = paho_client("paho-reg", paho.MQTTv311)
        c.client.username_pw_set("bob", "pw")
        _, reason, _ = await c.connect(broker.port(), keepalive=30)
        assert reason == 0
        [call] = plugin.calls
        assert call["client"].client_id == "paho-reg" and call["client"].username == "bob"
        assert call["client"].protocol_level == 4
        assert (call["password"], call["clean_start"], call["properties"]) == (b"pw", True, {})


class WaitsUntilCancelled:
    """auth_on_register that never answers; records whether it was cancelled."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.cancelled = trio.Event()

    @hookimpl
    async def auth_on_register(self) -> Any:
        self.entered.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()


async def test_auth_on_register_is_cancelled_when_the_client_leaves(broker: Any) -> None:
    """A client that closes its socket while auth_on_register runs cancels the call
    (VerneMQ 2.2 cancels its auth webhooks so); the broker stays healthy."""
    plugin = WaitsUntilCancelled()
    async with registered(broker, plugin, hook_timeout=60):
        async with MQTTTestClient.open(broker.port()) as client:
            await client.send(Connect("leaver", 5, True, 60, None, None, None, {}))
            await plugin.entered.wait()
        with trio.fail_after(5):
            await plugin.cancelled.wait()
        assert "leaver" not in broker.sessions
        await eventually(lambda: all(info.active_connections == 0 for info in broker.service.listeners()))


async def test_packets_sent_while_auth_on_register_runs_are_kept(broker: Any) -> None:
    """The broker reads the socket while the hook decides (to see the client leave);
    what it reads is handled after the CONNACK, in order."""
    gate = Gate()
    async with registered(broker, RegisterRecorder(allow(), gate)), MQTTTestClient.open(broker.port()) as client:
        await client.send(Connect("pipeliner", 5, True, 60, None, None, None, {}))
        await gate.entered.wait()
        await client.send(Publish("p/1", b"early", 1, False, False, 7, {}))
        await trio.sleep(0.1)  # the publish is read while the hook still holds
        gate.release.set()
        connack = await client.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0
        puback = await client.next_packet()
        assert isinstance(puback, Puback) and puback.packet_id == 7


@pytest.mark.parametrize("code", [0x86, 0x87, 0x8A, 0x9F])
async def test_auth_on_register_deny_v5_connack_carries_the_plugins_code(broker: Any, code: int) -> None:
    async with (
        registered(broker, RegisterRecorder(deny(code, "go away"))),
        MQTTTestClient.open(broker.port()) as client,
    ):
        connack = await client.connect("denied")
        assert connack.reason_code == code
        assert connack.properties.get("reason_string") == "go away"
        assert await client.closed() is None
    assert "denied" not in broker.sessions


async def test_auth_on_register_deny_seen_by_paho_v5(broker: Any, paho_client: Any) -> None:
    async with registered(broker, RegisterRecorder(deny(0x8A, "banned"))):
        c = paho_client("paho-v5", paho.MQTTv5)
        _, reason, properties = await c.connect(broker.port())
        assert reason == ReasonCode(PacketTypes.CONNACK, "Banned") and reason.value == 0x8A
        assert properties.ReasonString == "banned"


@pytest.mark.parametrize(
    ("code", "v3_name"),
    [
        (0x86, "Bad user name or password"),
        (0x87, "Not authorized"),
        (0x80, "Not authorized"),
    ],
)
async def test_auth_on_register_deny_v311_return_code(broker: Any, paho_client: Any, code: int, v3_name: str) -> None:
    async with registered(broker, RegisterRecorder(deny(code))):
        c = paho_client("denied-v3", paho.MQTTv311)
        _, reason, _ = await c.connect(broker.port())
        assert reason == ReasonCode(PacketTypes.CONNACK, v3_name)
        # The raw 3.1.1 return code: 0x86 -> 4, others -> 5.
        async with MQTTTestClient.open(broker.port(), 4) as raw:
            await raw.send(Connect("denied-raw", 4))
            with trio.fail_after(5):
                data = await raw.stream.receive_some(4)
            assert data == bytes((0x20, 2, 0, 4 if code == 0x86 else 5))


async def test_auth_on_register_nobody_answering_uses_default_policy(broker_factory: Any) -> None:
    async with broker_factory(allow_anonymous=False) as broker, registered(broker, RegisterRecorder(None)):
        async with MQTTTestClient.open(broker.port()) as client:
            assert (await client.connect("anon")).reason_code == 0x86
        async with MQTTTestClient.open(broker.port(), 4) as client:
            assert (await client.connect("anon")).reason_code == 0x87  # decoded from return code 5


async def test_auth_on_register_client_id_and_username_modifiers(broker: Any) -> None:
    seen: list[ClientInfo] = []

    class Watcher:
        @hookimpl
        def auth_on_publish(self, client: ClientInfo) -> None:
            seen.append(client)

    plugin = RegisterRecorder(allow(client_id="renamed", username="carol"))
    async with registered(broker, plugin), registered(broker, Watcher()), MQTTTestClient.open(broker.port()) as client:
        assert (await client.connect("original", username="dave")).reason_code == 0
        assert "renamed" in broker.sessions and "original" not in broker.sessions
        assert broker.sessions["renamed"].username == "carol"
        await client.publish("t", b"x", qos=1)
        assert [(c.client_id, c.username) for c in seen] == [("renamed", "carol")]


async def test_auth_on_register_session_expiry_modifier_makes_session_persistent(broker: Any) -> None:
    async with registered(broker, RegisterRecorder(allow(session_expiry_interval=120))):
        async with MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("keep-me", properties={"session_expiry_interval": 0})
            assert connack.properties["session_expiry_interval"] == 120
            await client.subscribe("keep/#", qos=1)
            await client.disconnect()
            await client.closed()
        await eventually(
            lambda: broker.sessions.get("keep-me") is not None and broker.sessions["keep-me"].connection is None
        )
        assert broker.sessions["keep-me"].expiry_interval == 120
        async with MQTTTestClient.open(broker.port()) as client:
            connack = await client.connect("keep-me", clean_start=False)
            assert connack.session_present


async def test_auth_on_register_max_inflight_messages_modifier_limits_the_window(broker: Any) -> None:
    async with registered(broker, RegisterRecorder(allow(max_inflight_messages=2))):
        async with MQTTTestClient.open(broker.port(), auto_ack=False) as sub, MQTTTestClient.open(broker.port()) as pub:
            await sub.connect("slow-sub")
            await sub.subscribe("w", qos=1)
            await pub.connect("pub")
            for i in range(4):
                await pub.publish("w", b"%d" % i, qos=1)
            first = [await sub.receive(), await sub.receive()]
            assert await sub.nothing_received(0.3)  # window of 2 is full
            await sub.send(Puback(first[0].packet_id))
            third = await sub.receive()
            assert [p.payload for p in first + [third]] == [b"0", b"1", b"2"]


async def test_auth_on_register_max_message_size_modifier_limits_inbound_packets(broker: Any) -> None:
    async with (
        registered(broker, RegisterRecorder(allow(max_message_size=100))),
        MQTTTestClient.open(broker.port()) as client,
    ):
        connack = await client.connect("small")
        assert connack.properties["maximum_packet_size"] == 100
        assert (await client.publish("t", b"x" * 20, qos=1)).reason_code in (0, 0x10)
        await client.send(Publish("t", b"x" * 200, 1, False, False, 7, {}))
        disconnect = await client.closed()
        assert disconnect is not None and disconnect.reason_code == 0x95


# ------------------------------------------------------------------ auth_on_publish


class PublishRecorder:
    def __init__(self, answer: Any = None, gate: Gate | None = None) -> None:
        self.answer = answer
        self.gate = gate
        self.calls: list[tuple[ClientInfo, Message, bool]] = []

    @hookimpl
    async def auth_on_publish(self, client: ClientInfo, message: Message, is_will: bool) -> Any:
        self.calls.append((client, message, is_will))
        if self.gate:
            await self.gate.hold()
        return self.answer(message) if callable(self.answer) else self.answer


async def test_hook_auth_on_publish(broker: Any) -> None:
    """Fires for every PUBLISH before routing; the subscriber sees nothing until it answers."""
    gate = Gate()
    plugin = PublishRecorder(allow(), gate)
    async with (
        registered(broker, plugin),
        MQTTTestClient.open(broker.port()) as sub,
        MQTTTestClient.open(broker.port()) as pub,
    ):
        await sub.connect("sub")
        await sub.subscribe("a/#", qos=1)
        await pub.connect("pub", username="pat")
        props = {"content_type": "text/plain", "user_property": [("k", "v")]}
        await pub.send(Publish("a/b", b"hello", 1, False, False, 1, dict(props)))
        await gate.entered.wait()
        assert await sub.nothing_received(0.2)
        assert await pub.nothing_received(0.01)
        gate.release.set()
        assert (await pub.expect(Puback)).reason_code == 0
        assert (await sub.receive()).payload == b"hello"
        [(client, message, is_will)] = plugin.calls
        assert client == client_info(broker, pub, "pub", "pat")
        assert (message.topic, message.payload, message.qos, message.retain, is_will) == (
            "a/b",
            b"hello",
            1,
            False,
            False,
        )
        assert dict(message.properties) == props


async def test_auth_on_publish_sees_topic_resolved_from_alias(broker: Any) -> None:
    plugin = PublishRecorder(allow())
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as pub:
        await pub.connect("alias")
        await pub.publish("x/y", b"1", qos=1, properties={"topic_alias": 3})
        await pub.publish("", b"2", qos=1, properties={"topic_alias": 3})
        assert [(m.topic, m.payload) for _, m, _ in plugin.calls] == [("x/y", b"1"), ("x/y", b"2")]
        assert all("topic_alias" not in m.properties for _, m, _ in plugin.calls)


@pytest.mark.parametrize(("qos", "ack"), [(1, Puback), (2, Pubrec)])
async def test_auth_on_publish_deny_v5_acknowledges_with_the_plugins_code(broker: Any, qos: int, ack: type) -> None:
    async with (
        registered(broker, PublishRecorder(deny(0x97, "quota"))),
        MQTTTestClient.open(broker.port()) as sub,
        MQTTTestClient.open(broker.port()) as pub,
    ):
        await sub.connect("sub")
        await sub.subscribe("d", qos=2)
        await pub.connect("pub")
        reply = await pub.publish("d", b"no", qos=qos)
        assert isinstance(reply, ack) and reply.reason_code == 0x97
        assert await sub.nothing_received(0.2)
        assert broker.sessions["pub"].connection is not None  # still connected


async def test_auth_on_publish_deny_v5_qos0_is_dropped_silently(broker: Any) -> None:
    async with (
        registered(broker, PublishRecorder(deny())),
        MQTTTestClient.open(broker.port()) as sub,
        MQTTTestClient.open(broker.port()) as pub,
    ):
        await sub.connect("sub")
        await sub.subscribe("d")
        await pub.connect("pub")
        await pub.publish("d", b"no")
        await pub.ping()
        assert type(await pub.next_packet()).__name__ == "Pingresp"
        assert await sub.nothing_received(0.2)


async def test_auth_on_publish_deny_disconnects_a_v311_publisher(broker: Any, paho_client: Any) -> None:
    async with registered(broker, PublishRecorder(deny())):
        async with MQTTTestClient.open(broker.port(), 4) as pub:
            await pub.connect("v311")
            await pub.send(Publish("d", b"no", 1, False, False, 1, {}))
            assert await pub.next_packet() is None  # closed, no PUBACK
        c = paho_client("paho-v311", paho.MQTTv311)
        await c.connect(broker.port())
        await c.call(c.client.publish, "d", b"no", 1)
        assert await trio.to_thread.run_sync(c.disconnected.wait, 5)


async def test_auth_on_publish_deny_acks_and_drops_for_mqtt31(broker: Any) -> None:
    async with (
        registered(broker, PublishRecorder(deny())),
        MQTTTestClient.open(broker.port()) as sub,
        MQTTTestClient.open(broker.port(), 3) as pub,
    ):
        await sub.connect("sub")
        await sub.subscribe("d")
        await pub.connect("v31")
        assert isinstance(await pub.publish("d", b"no", qos=1), Puback)
        assert await sub.nothing_received(0.2)


async def test_auth_on_publish_modifiers_rewrite_topic_qos_payload_retain(broker: Any) -> None:
    answer = allow(topic="new/topic", qos=2, payload=b"rewritten", retain=True, properties={"content_type": "x/y"})
    async with (
        registered(broker, PublishRecorder(answer)),
        MQTTTestClient.open(broker.port()) as sub,
        MQTTTestClient.open(broker.port()) as pub,
    ):
        await sub.connect("sub")
        await sub.subscribe("new/#", "old/#", qos=2)
        await pub.connect("pub")
        await pub.publish("old/topic", b"original", qos=0)
        got = await sub.receive()
        assert (got.topic, got.payload, got.qos) == ("new/topic", b"rewritten", 2)
        assert got.properties.get("content_type") == "x/y"
        assert await sub.nothing_received(0.1)
    async with MQTTTestClient.open(broker.port()) as late:  # retain=True took effect
        await late.connect("late")
        await late.subscribe("new/topic")
        retained = await late.receive()
        assert (retained.payload, retained.retain) == (b"rewritten", True)


async def test_auth_on_publish_is_called_for_the_will_at_connect(broker: Any) -> None:
    gate = Gate()
    plugin = PublishRecorder(allow(), gate)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        will = Will("wills/x", b"bye", 1, False, {"content_type": "text/plain"})
        await client.send(Connect("willer", 5, True, 60, "wu", None, will, {}))
        await gate.entered.wait()
        assert await client.nothing_received(0.1)  # before CONNACK
        gate.release.set()
        assert (await client.next_packet()).reason_code == 0
        [(who, message, is_will)] = plugin.calls
        assert is_will is True
        assert who.client_id == "willer" and who.username == "wu"
        assert (message.topic, message.payload, message.qos, message.retain) == ("wills/x", b"bye", 1, False)
        assert message.properties["content_type"] == "text/plain"


@pytest.mark.parametrize(("level", "expected"), [(5, 0x99), (4, 0x87)])
async def test_auth_on_publish_denied_will_refuses_the_connect(broker: Any, level: int, expected: int) -> None:
    def only_wills(message: Message) -> Any:
        return deny(0x99) if message.topic.startswith("wills/") else None

    async with registered(broker, PublishRecorder(only_wills)), MQTTTestClient.open(broker.port(), level) as client:
        connack = await client.connect("bad-will", will=Will("wills/x", b"bye"))
        assert connack.reason_code == expected  # 3.1.1: return code 5
    assert "bad-will" not in broker.sessions


async def test_auth_on_publish_will_modifiers_apply_when_the_will_is_published(broker: Any) -> None:
    def rewrite(message: Message) -> Any:
        return allow(topic="wills/rewritten", payload=b"gone") if message.topic == "wills/x" else None

    async with registered(broker, PublishRecorder(rewrite)), MQTTTestClient.open(broker.port()) as sub:
        await sub.connect("watcher")
        await sub.subscribe("wills/#")
        async with MQTTTestClient.open(broker.port()) as client:
            await client.connect("dies", will=Will("wills/x", b"bye"))
        got = await sub.receive()
        assert (got.topic, got.payload) == ("wills/rewritten", b"gone")
