"""Decision hooks auth_on_subscribe, auth_on_unsubscribe, on_auth, on_deliver, with real clients.

Each test registers a small recording plugin (``registered(broker, obj)``), checks that
the hook fires at the moment VerneMQ fires it (docs/hooks.md, "When hooks fire") with
the right frozen arguments, and that its answer takes effect on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ternmq.kernel.codec import (
    Auth,
    Connack,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
)
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.values.types import ClientInfo, Message, TopicSubscription, allow, auth_continue, deny

from helpers import Gate, client_info, eventually

# ----------------------------------------------------------------- auth_on_subscribe


class SubscribeRecorder:
    def __init__(self, answer: Any = None, gate: Gate | None = None, broker: Any = None) -> None:
        self.answer = answer
        self.gate = gate
        self.broker = broker
        self.calls: list[tuple[ClientInfo, tuple[TopicSubscription, ...], dict[str, Any], int]] = []

    @hookimpl
    async def auth_on_subscribe(self, client: ClientInfo, subscriptions: Any, properties: Any) -> Any:
        existing = len(self.broker.sessions[client.client_id].subscriptions) if self.broker else -1
        self.calls.append((client, tuple(subscriptions), dict(properties), existing))
        if self.gate:
            await self.gate.hold()
        return self.answer


async def test_hook_auth_on_subscribe(broker: Any) -> None:
    """Fires once per SUBSCRIBE with all its filters, before anything is subscribed."""
    gate = Gate()
    plugin = SubscribeRecorder(allow(), gate, broker)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("subber", username="su")
        requests = [SubscriptionRequest("a/+", 1, True, True, 2), SubscriptionRequest("b/#", 2)]
        props = {"subscription_identifier": [7], "user_property": [("k", "v")]}
        await client.send(Subscribe(client.packet_id(), requests, props))
        await gate.entered.wait()
        assert await client.nothing_received(0.1)
        assert broker.sessions["subber"].subscriptions == {}
        gate.release.set()
        assert (await client.expect(Suback)).reason_codes == [1, 2]
        [(who, subs, properties, existing)] = plugin.calls
        assert who == client_info(broker, client, "subber", "su")
        assert subs == (TopicSubscription("a/+", 1, True, True, 2, 7), TopicSubscription("b/#", 2, False, False, 0, 7))
        assert properties == props and existing == 0


async def test_auth_on_subscribe_per_topic_codes_and_rewrites(broker: Any) -> None:
    topics = [TopicSubscription("granted/rewritten", 0), ("refused/#", 0x87), ("downgraded", 0)]
    async with (
        registered(broker, SubscribeRecorder(allow(topics=topics))),
        MQTTTestClient.open(broker.port()) as client,
    ):
        await client.connect("per-topic")
        suback = await client.subscribe("granted/#", "refused/#", "downgraded", qos=2)
        assert suback.reason_codes == [0, 0x87, 0]
        assert set(broker.sessions["per-topic"].subscriptions) == {"granted/rewritten", "downgraded"}
        await broker.service.publish("granted/rewritten", b"r", qos=1)
        await broker.service.publish("refused/x", b"no", qos=1)
        got = await client.receive()
        assert (got.topic, got.qos) == ("granted/rewritten", 0)
        assert await client.nothing_received(0.1)


async def test_auth_on_subscribe_per_topic_refusal_is_0x80_for_v311(broker: Any) -> None:
    topics = [("ok", 1), ("no", 0x87)]
    async with (
        registered(broker, SubscribeRecorder(allow(topics=topics))),
        MQTTTestClient.open(broker.port(), 4) as client,
    ):
        await client.connect("v3-sub")
        assert (await client.subscribe("ok", "no", qos=1)).reason_codes == [1, 0x80]


async def test_auth_on_subscribe_deny_refuses_every_filter_and_keeps_the_client(broker: Any) -> None:
    async with registered(broker, SubscribeRecorder(deny(0x87))), MQTTTestClient.open(broker.port()) as client:
        await client.connect("denied-sub")
        assert (await client.subscribe("a", "b", qos=1)).reason_codes == [0x87, 0x87]
        assert broker.sessions["denied-sub"].subscriptions == {}
        await client.ping()
        assert type(await client.next_packet()).__name__ == "Pingresp"


# --------------------------------------------------------------- auth_on_unsubscribe


class UnsubscribeRecorder:
    def __init__(self, answer: Any = None, broker: Any = None) -> None:
        self.answer = answer
        self.broker = broker
        self.calls: list[tuple[ClientInfo, tuple[str, ...], dict[str, Any], set[str]]] = []

    @hookimpl
    def auth_on_unsubscribe(self, client: ClientInfo, topic_filters: Any, properties: Any) -> Any:
        current = set(self.broker.sessions[client.client_id].subscriptions) if self.broker else set()
        self.calls.append((client, tuple(topic_filters), dict(properties), current))
        return self.answer


async def test_hook_auth_on_unsubscribe(broker: Any) -> None:
    """Fires once per UNSUBSCRIBE, before anything is unsubscribed."""
    plugin = UnsubscribeRecorder(None, broker)
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        await client.connect("unsubber")
        await client.subscribe("a", "b")
        await client.send(Unsubscribe(client.packet_id(), ["a", "zzz"], {"user_property": [("k", "v")]}))
        assert (await client.expect(Unsuback)).reason_codes == [0, 0x11]
        [(who, filters, properties, before)] = plugin.calls
        assert who == client_info(broker, client, "unsubber")
        assert filters == ("a", "zzz") and properties == {"user_property": [("k", "v")]}
        assert before == {"a", "b"}
        assert set(broker.sessions["unsubber"].subscriptions) == {"b"}


async def test_auth_on_unsubscribe_deny_keeps_subscriptions(broker: Any) -> None:
    async with registered(broker, UnsubscribeRecorder(deny(0x87))), MQTTTestClient.open(broker.port()) as client:
        await client.connect("keeper")
        await client.subscribe("k1", "k2")
        assert (await client.unsubscribe("k1", "k2")).reason_codes == [0x87, 0x87]
        await broker.service.publish("k1", b"still")
        assert (await client.receive()).payload == b"still"


async def test_auth_on_unsubscribe_rewrite_replaces_the_filters(broker: Any) -> None:
    async with (
        registered(broker, UnsubscribeRecorder(allow(topics=["other"]))),
        MQTTTestClient.open(broker.port()) as client,
    ):
        await client.connect("rewriter")
        await client.subscribe("asked", "other")
        await client.unsubscribe("asked")
        assert set(broker.sessions["rewriter"].subscriptions) == {"asked"}


# ------------------------------------------------------------------------- on_auth


class ChallengeResponse:
    """A toy enhanced authentication: the server sends a nonce, the client echoes it reversed."""

    METHOD = "REVERSE"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes | None, bool]] = []
        self.order: list[str] = []

    @hookimpl
    def on_auth(self, client: ClientInfo, method: str, data: bytes | None, reauthenticate: bool) -> Any:
        self.calls.append((client.client_id, method, data, reauthenticate))
        self.order.append("on_auth")
        if method != self.METHOD:
            return None
        if data in (b"hello", b"again"):
            return auth_continue(b"nonce42")
        if data == b"24ecnon":
            return allow(authentication_data=b"welcome")
        return deny(0x87, "wrong answer")

    @hookimpl
    def auth_on_register(self) -> None:
        self.order.append("auth_on_register")


async def test_hook_on_auth(broker: Any) -> None:
    plugin = ChallengeResponse()
    async with registered(broker, plugin), MQTTTestClient.open(broker.port()) as client:
        method = {"authentication_method": "REVERSE"}
        first = await client.connect("scram", properties={**method, "authentication_data": b"hello"})
        assert isinstance(first, Auth) and first.reason_code == 0x18
        assert first.properties == {**method, "authentication_data": b"nonce42"}
        await client.auth(0x18, {**method, "authentication_data": b"24ecnon"})
        connack = await client.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0
        assert connack.properties["authentication_method"] == "REVERSE"
        assert connack.properties["authentication_data"] == b"welcome"
        assert plugin.calls == [("scram", "REVERSE", b"hello", False), ("scram", "REVERSE", b"24ecnon", False)]
        assert plugin.order == ["on_auth", "on_auth", "auth_on_register"]  # enhanced auth first
        # Re-authentication later in the connection uses the same hook.
        await client.auth(0x19, {**method, "authentication_data": b"again"})
        challenge = await client.next_packet()
        assert (challenge.reason_code, challenge.properties["authentication_data"]) == (0x18, b"nonce42")
        await client.auth(0x18, {**method, "authentication_data": b"24ecnon"})
        done = await client.next_packet()
        assert isinstance(done, Auth) and done.reason_code == 0
        assert plugin.calls[-2:] == [("scram", "REVERSE", b"again", True), ("scram", "REVERSE", b"24ecnon", True)]


async def test_on_auth_wrong_response_refuses_the_connect(broker: Any) -> None:
    async with registered(broker, ChallengeResponse()), MQTTTestClient.open(broker.port()) as client:
        method = {"authentication_method": "REVERSE"}
        await client.connect("scram", properties={**method, "authentication_data": b"hello"})
        await client.auth(0x18, {**method, "authentication_data": b"wrong"})
        connack = await client.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0x87
    assert "scram" not in broker.sessions


async def test_on_auth_unknown_method_is_refused_with_0x8c(broker: Any) -> None:
    async with registered(broker, ChallengeResponse()), MQTTTestClient.open(broker.port()) as client:
        connack = await client.connect("x", properties={"authentication_method": "OTHER"})
        assert connack.reason_code == 0x8C


# ----------------------------------------------------------------------- on_deliver


class DeliverRecorder:
    def __init__(self, answer: Callable[[ClientInfo, Message], Any]) -> None:
        self.answer = answer
        self.calls: list[tuple[ClientInfo, Message]] = []

    @hookimpl
    async def on_deliver(self, client: ClientInfo, message: Message) -> Any:
        self.calls.append((client, message))
        return self.answer(client, message)


async def test_hook_on_deliver(broker: Any) -> None:
    """Fires once per delivery with the receiving client and the downgraded message."""
    plugin = DeliverRecorder(lambda client, message: None)
    async with (
        registered(broker, plugin),
        MQTTTestClient.open(broker.port()) as s0,
        MQTTTestClient.open(broker.port()) as s1,
        MQTTTestClient.open(broker.port()) as pub,
    ):
        await s0.connect("s0", username="zero")
        await s0.subscribe("d/#", qos=0)
        await s1.connect("s1")
        await s1.subscribe("d/#", qos=1)
        await pub.connect("pub")
        await pub.publish("d/x", b"m", qos=1)
        assert (await s0.receive()).payload == b"m"
        assert (await s1.receive()).payload == b"m"
        seen = {client.client_id: (client, message) for client, message in plugin.calls}
        assert len(plugin.calls) == 2
        assert seen["s0"][0] == client_info(broker, s0, "s0", "zero")
        assert (seen["s0"][1].topic, seen["s0"][1].payload, seen["s0"][1].qos) == ("d/x", b"m", 0)
        assert seen["s1"][1].qos == 1


async def test_on_deliver_rewrites_topic_and_payload_per_subscriber(broker: Any) -> None:
    def rewrite(client: ClientInfo, message: Message) -> Any:
        return allow(topic="r/" + message.topic, payload=message.payload.upper()) if client.client_id == "b" else None

    async with (
        registered(broker, DeliverRecorder(rewrite)),
        MQTTTestClient.open(broker.port()) as a,
        MQTTTestClient.open(broker.port()) as b,
    ):
        for c, cid in ((a, "a"), (b, "b")):
            await c.connect(cid)
            await c.subscribe("t/#", qos=1)
        await broker.service.publish("t/1", b"abc", qos=1)
        got_a, got_b = await a.receive(), await b.receive()
        assert (got_a.topic, got_a.payload) == ("t/1", b"abc")
        assert (got_b.topic, got_b.payload) == ("r/t/1", b"ABC")


async def test_on_deliver_unknown_modifier_is_a_counted_error_and_the_message_goes_out_unchanged(
    broker: Any,
) -> None:
    plugin = DeliverRecorder(lambda client, message: allow(payload=b"half", colour="red"))
    async with registered(broker, plugin, name="rewriter"), MQTTTestClient.open(broker.port()) as sub:
        await sub.connect("sub")
        await sub.subscribe("t/#", qos=1)
        await broker.service.publish("t/1", b"original", qos=1)
        assert (await sub.receive()).payload == b"original"
        stats = broker.dispatcher.stats[("rewriter", "on_deliver")]
        assert (stats.errors, stats.last_error) == (1, "unknown modifiers ['colour']")


async def test_on_deliver_deny_drops_for_that_subscriber_only(broker: Any) -> None:
    drops: list[tuple[str, str]] = []

    class DropWatcher:
        @hookimpl
        def on_message_drop(self, client_id: str, reason: str) -> None:
            drops.append((client_id, reason))

    async with (
        registered(broker, DeliverRecorder(lambda c, m: deny() if c.client_id == "a" else None)),
        registered(broker, DropWatcher()),
        MQTTTestClient.open(broker.port()) as a,
        MQTTTestClient.open(broker.port()) as b,
    ):
        for c, cid in ((a, "a"), (b, "b")):
            await c.connect(cid)
            await c.subscribe("t/#")
        await broker.service.publish("t/1", b"abc")
        assert (await b.receive()).payload == b"abc"
        assert await a.nothing_received(0.2)
        assert drops == [("a", "denied")]


async def test_on_deliver_error_delivers_unchanged(broker: Any) -> None:
    def broken(client: ClientInfo, message: Message) -> Any:
        raise RuntimeError("plugin bug")

    async with (
        registered(broker, DeliverRecorder(broken), name="broken-deliver"),
        MQTTTestClient.open(broker.port()) as a,
    ):
        await a.connect("a")
        await a.subscribe("t")
        await broker.service.publish("t", b"safe")
        assert (await a.receive()).payload == b"safe"
        assert broker.dispatcher.stats[("broken-deliver", "on_deliver")].errors == 1


async def test_on_deliver_applies_to_retained_messages(broker: Any) -> None:
    async with (
        registered(broker, DeliverRecorder(lambda c, m: allow(payload=b"R:" + m.payload))),
        MQTTTestClient.open(broker.port()) as a,
    ):
        await broker.service.publish("ret", b"kept", retain=True)
        await a.connect("a")
        await a.subscribe("ret")
        got = await a.receive()
        assert (got.payload, got.retain) == (b"R:kept", True)


async def test_on_deliver_applies_to_queued_messages_when_they_are_sent(broker: Any) -> None:
    async with MQTTTestClient.open(broker.port()) as a:
        await a.connect("offline", clean_start=False, properties={"session_expiry_interval": 60})
        await a.subscribe("q", qos=1)
        await a.disconnect()
        await a.closed()
    await eventually(lambda: broker.sessions["offline"].connection is None)
    await broker.service.publish("q", b"queued", qos=1)
    async with (
        registered(broker, DeliverRecorder(lambda c, m: allow(payload=b"rewritten"))),
        MQTTTestClient.open(broker.port()) as a,
    ):
        await a.connect("offline", clean_start=False, properties={"session_expiry_interval": 60})
        assert (await a.receive()).payload == b"rewritten"
