"""The service face's subscribe/unsubscribe on a client's behalf (docs/plugins.md, "The
service face"), with real MQTT clients on both ends."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
import pytest

from ternmq.kernel import ClientInfo, TopicError, TopicSubscription, deny, hookimpl
from ternmq.kernel.testing import MQTTTestClient, registered

from helpers import PERSISTENT, connected, eventually, left_subscribed, wait_offline


class SubscriptionEvents:
    def __init__(self) -> None:
        self.subscribed: list[tuple[ClientInfo, tuple[TopicSubscription, ...]]] = []
        self.unsubscribed: list[tuple[str, tuple[str, ...]]] = []
        self.asked = 0

    @hookimpl
    def auth_on_subscribe(self) -> None:
        self.asked += 1

    @hookimpl
    def on_subscribe(self, client: ClientInfo, subscriptions: tuple[TopicSubscription, ...]) -> None:
        self.subscribed.append((client, subscriptions))

    @hookimpl
    def on_unsubscribe(self, client: ClientInfo, topic_filters: tuple[str, ...]) -> None:
        self.unsubscribed.append((client.client_id, topic_filters))


async def test_an_online_client_receives_what_it_was_subscribed_to(broker: Any, paho_client: Any) -> None:
    events = SubscriptionEvents()
    subscriber = paho_client("paho-sub", paho.MQTTv311)
    await subscriber.connect(broker.port())
    async with registered(broker, events):
        assert await broker.service.subscribe("paho-sub", [TopicSubscription("orders/+", 1)]) is True
        async with connected(broker, "pub", 5) as publisher:
            await publisher.publish("orders/7", b"one", qos=1)
        message = await subscriber.receive()
    assert (message.topic, message.payload, message.qos) == ("orders/7", b"one", 1)
    assert broker.service.subscriptions("paho-sub") == (TopicSubscription("orders/+", 1),)
    # As the broker: no authorization was asked, on_subscribe names the client.
    assert events.asked == 0
    [(client, subscriptions)] = events.subscribed
    assert client.client_id == "paho-sub" and client.peer_port > 0
    assert subscriptions == (TopicSubscription("orders/+", 1),)


async def test_retained_messages_follow_retain_handling(broker: Any) -> None:
    async with connected(broker, "pub", 5) as publisher:
        await publisher.publish("config/a", b"kept", qos=1, retain=True)
    async with connected(broker, "sub", 5) as subscriber:
        await broker.service.subscribe("sub", [TopicSubscription("config/#", 1)])
        retained = await subscriber.receive()
        assert (retained.topic, retained.payload, retained.retain) == ("config/a", b"kept", True)
        # 1 = only for a new subscription: the same filter again sends nothing.
        await broker.service.subscribe("sub", [TopicSubscription("config/#", 1, retain_handling=1)])
        assert await subscriber.nothing_received(0.2)
        # 2 = never.
        await broker.service.subscribe("sub", [TopicSubscription("config/+", 1, retain_handling=2)])
        assert await subscriber.nothing_received(0.2)


async def test_an_offline_session_queues_and_gets_it_all_on_return(broker: Any) -> None:
    events = SubscriptionEvents()
    await left_subscribed(broker, "away", "unrelated/topic")
    async with connected(broker, "pub", 5) as publisher:
        await publisher.publish("alerts/old", b"retained", qos=1, retain=True)
        async with registered(broker, events):
            assert await broker.service.subscribe("away", [TopicSubscription("alerts/#", 1)])
        await publisher.publish("alerts/new", b"live", qos=1)
    [(client, _)] = events.subscribed
    assert client.client_id == "away" and client.protocol_level == 5 and client.peer_port == 0
    async with MQTTTestClient.open(broker.port()) as back:
        connack = await back.connect("away", clean_start=False, properties=PERSISTENT)
        assert connack.session_present
        got = {(await back.receive()).payload, (await back.receive()).payload}
    assert got == {b"retained", b"live"}


class HideSecrets:
    @hookimpl
    def on_deliver(self, client: ClientInfo, message: Any) -> Any:
        return deny() if message.topic.startswith("secret/") else None


async def test_on_deliver_judges_an_offline_sessions_retained_messages_when_it_returns(broker: Any) -> None:
    await left_subscribed(broker, "away", "unrelated/topic")
    async with connected(broker, "pub", 5) as publisher:
        await publisher.publish("secret/plan", b"hidden", qos=1, retain=True)
        await publisher.publish("public/news", b"shown", qos=1, retain=True)
    async with registered(broker, HideSecrets()):
        assert await broker.service.subscribe("away", [TopicSubscription("#", 1)])
        async with MQTTTestClient.open(broker.port()) as back:
            await back.connect("away", clean_start=False, properties=PERSISTENT)
            assert (await back.receive()).payload == b"shown"
            assert await back.nothing_received(0.2)


async def test_unsubscribe_client_reports_per_filter_and_stops_delivery(broker: Any) -> None:
    events = SubscriptionEvents()
    async with connected(broker, "sub", 5) as subscriber:
        await subscriber.subscribe("news/#", qos=1)
        async with registered(broker, events):
            assert await broker.service.unsubscribe("sub", ["news/#", "never/subscribed"]) == [True, False]
        assert broker.service.subscriptions("sub") == ()
        async with connected(broker, "pub", 5) as publisher:
            await publisher.publish("news/today", b"x", qos=1)
        assert await subscriber.nothing_received(0.2)
    assert events.unsubscribed == [("sub", ("news/#", "never/subscribed"))]


async def test_unknown_clients_and_bad_subscriptions_change_nothing(broker: Any) -> None:
    assert await broker.service.subscribe("nobody", [TopicSubscription("a", 0)]) is False
    assert await broker.service.unsubscribe("nobody", ["a"]) is None
    async with connected(broker, "sub", 5):
        with pytest.raises(TopicError):
            await broker.service.subscribe("sub", [TopicSubscription("fine", 0), TopicSubscription("bad/#/x", 0)])
        with pytest.raises(ValueError, match="qos"):
            await broker.service.subscribe("sub", [TopicSubscription("fine", 3)])
        assert broker.service.subscriptions("sub") == ()


async def test_a_persistent_session_keeps_its_new_subscription_across_a_restart_of_the_client(broker: Any) -> None:
    async with connected(broker, "keeper", 5, clean_start=False):
        await broker.service.subscribe("keeper", [TopicSubscription("$share/g/jobs", 1)])
    await wait_offline(broker, "keeper", session_kept=True)
    async with connected(broker, "keeper", 5, clean_start=False) as back:
        assert back.connack.session_present
        async with connected(broker, "pub", 5) as publisher:
            await publisher.publish("jobs", b"job 1", qos=1)
        assert (await back.receive()).payload == b"job 1"
    await eventually(lambda: broker.service.subscriptions("keeper") == (TopicSubscription("$share/g/jobs", 1),))
