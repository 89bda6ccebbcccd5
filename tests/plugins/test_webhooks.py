"""The webhooks plugin against a real HTTP receiver (hypercorn in the test's nursery),
with real MQTT clients: the bodies VerneMQ sends, the replies it reads, failure
policies, the cache, notifications that never hold a publisher, run-time registrations."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio
from webhook_receiver import Answer, Receiver, Request, running_receiver

from ternmq.kernel import Table, Text
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Connack, Connect, SubscriptionRequest
from ternmq.kernel.testing import MQTTTestClient, open_broker, test_config

from helpers import connected, eventually

WEBHOOKS = "webhooks"


def webhooks_config(tmp_path: Path, endpoints: list[dict[str, Any]], **settings: Any) -> Any:
    table = {"endpoints": endpoints, "registrations_file": str(tmp_path / "webhooks.json"), **settings}
    return test_config(plugins={"retainer": {}, WEBHOOKS: table})


@asynccontextmanager
async def hooked(
    tmp_path: Path, receiver: Receiver, hooks: list[str] | dict[str, dict[str, Any]], **settings: Any
) -> AsyncIterator[Broker]:
    """A broker whose webhooks plugin calls ``receiver`` for ``hooks`` (name -> endpoint options)."""
    options = hooks if isinstance(hooks, dict) else {hook: {} for hook in hooks}
    endpoints = [{"hook": hook, "endpoint": receiver.url(f"/{hook}"), **extra} for hook, extra in options.items()]
    async with open_broker(webhooks_config(tmp_path, endpoints, **settings)) as broker:
        yield broker


async def run(broker: Broker, *argv: str) -> Table | Text:
    return await broker.service.run_command(list(argv))


def plugin_of(broker: Broker) -> Any:
    return broker.plugins.loaded[WEBHOOKS].plugin


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def paho_publish(port: int, level: int, client_id: str, topic: str, payload: bytes, qos: int = 1) -> int:
    """Connect with paho (in a thread), publish once, wait for the acknowledgement; the
    return code of the publish."""

    def publish() -> int:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=level)
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            info = client.publish(topic, payload, qos)
            info.wait_for_publish(5)
            return int(info.rc)
        finally:
            client.disconnect()
            client.loop_stop()

    return await trio.to_thread.run_sync(publish)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


# -- the request: VerneMQ's bodies -------------------------------------------------------


async def test_hook_auth_on_register_body_for_a_v311_client(tmp_path: Path, receiver: Receiver) -> None:
    async with hooked(tmp_path, receiver, ["auth_on_register"]) as broker:
        async with MQTTTestClient.open(broker.port(), 4) as client:
            connack = await client.connect("reg-3", username="alice", password=b"secret", clean_start=False)
            assert isinstance(connack, Connack) and connack.reason_code == 0
            [session] = broker.service.sessions()
        [request] = receiver.requests
    assert request.hook == "auth_on_register" and request.content_type == "application/json"
    body = dict(request.body)
    assert body.pop("peer_port") == session.peer_port
    assert body == {
        "peer_addr": "127.0.0.1",
        "mountpoint": "",
        "client_id": "reg-3",
        "username": "alice",
        "password": "secret",
        "clean_session": False,
    }


async def test_hook_auth_on_register_m5_body_has_properties_and_nulls(tmp_path: Path, receiver: Receiver) -> None:
    async with hooked(tmp_path, receiver, ["auth_on_register", "auth_on_register_m5"]) as broker:
        async with MQTTTestClient.open(broker.port(), 5) as client:
            props = {"session_expiry_interval": 30, "user_property": [("k", "v")], "receive_maximum": 10}
            await client.send(Connect("reg-5", 5, True, 60, None, None, None, props))
            connack = await client.next_packet()
            assert isinstance(connack, Connack) and connack.reason_code == 0
    [request] = receiver.requests
    assert request.hook == "auth_on_register_m5"
    body = request.body
    assert (body["username"], body["password"], body["clean_start"]) == (None, None, True)
    assert "clean_session" not in body
    assert body["properties"] == {
        "p_session_expiry_interval": 30,
        "p_user_property": [{"key": b64(b"k"), "val": b64(b"v")}],
        "p_receive_max": 10,
    }


async def test_hook_auth_on_publish_bodies_v311_and_v5(tmp_path: Path, receiver: Receiver) -> None:
    async with hooked(tmp_path, receiver, ["auth_on_publish", "auth_on_publish_m5"]) as broker:
        async with connected(broker, "pub-4", 4, username="u4") as v4, connected(broker, "pub-5", 5) as v5:
            await v4.publish("a/b", b"\x00\xffbin", qos=1, retain=True)
            props = {
                "payload_format_indicator": 1,
                "content_type": "text/plain",
                "response_topic": "reply/here",
                "correlation_data": b"corr",
                "message_expiry_interval": 60,
                "user_property": [("name", "value")],
            }
            await v5.publish("c/d", b"text", qos=2, properties=props)
    v3_body, v5_body = receiver.bodies("auth_on_publish"), receiver.bodies("auth_on_publish_m5")
    assert v3_body == [
        {
            "username": "u4",
            "mountpoint": "",
            "client_id": "pub-4",
            "qos": 1,
            "topic": "a/b",
            "payload": b64(b"\x00\xffbin"),
            "retain": True,
        }
    ]
    assert v5_body == [
        {
            "username": None,
            "mountpoint": "",
            "client_id": "pub-5",
            "qos": 2,
            "topic": "c/d",
            "payload": b64(b"text"),
            "retain": False,
            "properties": {
                "p_payload_format_indicator": "utf8",
                "p_content_type": "text/plain",
                "p_response_topic": "reply/here",
                "p_correlation_data": "corr",
                "p_message_expiry_interval": 60,
                "p_user_property": [{"key": b64(b"name"), "val": b64(b"value")}],
            },
        }
    ]


async def test_payload_as_text_without_base64_and_left_out_with_no_payload(tmp_path: Path, receiver: Receiver) -> None:
    hooks = {"auth_on_publish": {"base64payload": False}, "on_publish": {"no_payload": True, "base64payload": False}}
    async with hooked(tmp_path, receiver, hooks) as broker:
        async with connected(broker, "p", 4) as client:
            await client.publish("t", b"plain text", qos=1)
            await eventually(lambda: len(receiver.bodies("on_publish")) == 1)
    assert receiver.bodies("auth_on_publish")[0]["payload"] == "plain text"
    # no_payload is for auth_on_publish only, as in VerneMQ
    assert receiver.bodies("on_publish")[0]["payload"] == "plain text"


async def test_no_payload_leaves_the_payload_out_of_auth_on_publish(tmp_path: Path, receiver: Receiver) -> None:
    async with hooked(tmp_path, receiver, {"auth_on_publish": {"no_payload": True}}) as broker:
        async with connected(broker, "p", 4) as client:
            await client.publish("t", b"secret", qos=1)
    [body] = receiver.bodies("auth_on_publish")
    assert "payload" not in body and body["topic"] == "t"


async def test_hook_auth_on_subscribe_bodies_v311_and_v5(tmp_path: Path, receiver: Receiver) -> None:
    async with hooked(tmp_path, receiver, ["auth_on_subscribe", "auth_on_subscribe_m5"]) as broker:
        async with connected(broker, "s4", 4) as v4, connected(broker, "s5", 5) as v5:
            await v4.subscribe("a/+", "b/#", qos=1)
            await v5.subscribe(
                SubscriptionRequest("x/y", 2, no_local=True, retain_as_published=True, retain_handling=2),
                properties={"subscription_identifier": [7], "user_property": [("a", "b")]},
            )
    assert receiver.bodies("auth_on_subscribe") == [
        {
            "username": None,
            "mountpoint": "",
            "client_id": "s4",
            "topics": [{"topic": "a/+", "qos": 1}, {"topic": "b/#", "qos": 1}],
        }
    ]
    assert receiver.bodies("auth_on_subscribe_m5") == [
        {
            "username": None,
            "mountpoint": "",
            "client_id": "s5",
            "topics": [{"topic": "x/y", "qos": 2, "no_local": True, "rap": True, "retain_handling": "dont_send"}],
            "properties": {"p_subscription_id": [7], "p_user_property": [{"key": b64(b"a"), "val": b64(b"b")}]},
        }
    ]


async def test_hook_on_unsubscribe_bodies_and_topics_rewrite(tmp_path: Path, receiver: Receiver) -> None:
    def respond(request: Request) -> Answer:
        if request.hook == "on_unsubscribe":
            return Answer({"result": "ok", "topics": ["keep/not"]})
        return Answer({"result": "ok", "modifiers": {"topics": ["b"]}})

    receiver.respond = respond
    async with hooked(tmp_path, receiver, ["on_unsubscribe", "on_unsubscribe_m5"]) as broker:
        async with connected(broker, "u4", 4) as v4, connected(broker, "u5", 5) as v5:
            await v4.subscribe("a", "keep/not", qos=0)
            await v5.subscribe("a", "b", qos=0)
            await v4.unsubscribe("a")
            await v5.unsubscribe("a")
            assert [s.topic_filter for s in broker.service.subscriptions("u4")] == ["a"]
            assert [s.topic_filter for s in broker.service.subscriptions("u5")] == ["a"]
    assert receiver.bodies("on_unsubscribe") == [
        {"username": None, "mountpoint": "", "client_id": "u4", "topics": ["a"]}
    ]
    assert receiver.bodies("on_unsubscribe_m5") == [
        {"username": None, "mountpoint": "", "client_id": "u5", "topics": ["a"], "properties": {}}
    ]


NOTIFICATIONS = [
    "on_register",
    "on_register_m5",
    "on_publish",
    "on_publish_m5",
    "on_subscribe",
    "on_subscribe_m5",
    "on_deliver",
    "on_deliver_m5",
    "on_offline_message",
    "on_client_wakeup",
    "on_client_offline",
    "on_client_gone",
    "on_session_expired",
]


async def test_notification_bodies_over_a_clients_life(tmp_path: Path, receiver: Receiver) -> None:
    """Every notification hook, for a v3.1.1 and a v5 client, with VerneMQ's fields."""
    receiver.respond = lambda request: Answer({})
    async with hooked(tmp_path, receiver, NOTIFICATIONS) as broker:
        async with connected(broker, "n4", 4, username="u") as v4, connected(broker, "n5", 5) as v5:
            await v4.subscribe("t/#", qos=1)
            await v5.subscribe("t/#", "$SYS/#", qos=1)
            await v4.publish("t/1", b"one", qos=1)
            await v4.receive()
            await v5.receive()
            await v5.publish("t/5", b"five", qos=0, properties={"content_type": "x"})
            await v4.receive()
            await v5.receive()
        async with connected(broker, "keeper", 4, clean_start=False) as keeper:
            await keeper.subscribe("k", qos=1)
        async with connected(broker, "sender", 4) as sender:
            await sender.publish("k", b"while away", qos=1)
        await eventually(lambda: "on_offline_message" in receiver.hooks())
        async with connected(broker, "short", 5, clean_start=False, expiry=1):
            pass
        await eventually(lambda: "on_session_expired" in receiver.hooks(), timeout=10)
        await eventually(lambda: len(receiver.bodies("on_client_gone")) >= 3)
    who4 = {"username": "u", "mountpoint": "", "client_id": "n4"}
    who5 = {"username": None, "mountpoint": "", "client_id": "n5"}
    [reg4] = [b for b in receiver.bodies("on_register") if b["client_id"] == "n4"]
    assert reg4 == {**who4, "peer_addr": "127.0.0.1", "peer_port": reg4["peer_port"]}
    [reg5] = [b for b in receiver.bodies("on_register_m5") if b["client_id"] == "n5"]
    assert reg5["peer_addr"] == "127.0.0.1" and reg5["properties"]["p_receive_max"] > 0
    assert receiver.bodies("on_subscribe") == [
        {**who4, "topics": [{"topic": "t/#", "qos": 1}]},
        {"username": None, "mountpoint": "", "client_id": "keeper", "topics": [{"topic": "k", "qos": 1}]},
    ]
    [sub5] = receiver.bodies("on_subscribe_m5")
    assert sub5 == {
        **who5,
        "topics": [
            {"topic": "t/#", "qos": 1, "no_local": False, "rap": False, "retain_handling": "send_retain"},
            {"topic": "$SYS/#", "qos": 1, "no_local": False, "rap": False, "retain_handling": "send_retain"},
        ],
        "properties": {},
    }
    assert {**who4, "qos": 1, "topic": "t/1", "payload": b64(b"one"), "retain": False} in receiver.bodies("on_publish")
    [pub5] = receiver.bodies("on_publish_m5")
    assert pub5 == {
        **who5,
        "qos": 0,
        "topic": "t/5",
        "payload": b64(b"five"),
        "retain": False,
        "properties": {"p_content_type": "x"},
    }
    assert {**who4, "qos": 0, "topic": "t/5", "payload": b64(b"five"), "retain": False} in receiver.bodies("on_deliver")
    assert {
        **who5,
        "qos": 1,
        "topic": "t/1",
        "payload": b64(b"one"),
        "retain": False,
        "properties": {},
    } in receiver.bodies("on_deliver_m5")
    assert receiver.bodies("on_offline_message") == [
        {
            "mountpoint": "",
            "client_id": "keeper",
            "qos": 1,
            "topic": "k",
            "payload": b64(b"while away"),
            "retain": False,
        }
    ]
    assert {"mountpoint": "", "client_id": "n4"} in receiver.bodies("on_client_wakeup")
    assert {"mountpoint": "", "client_id": "keeper"} in receiver.bodies("on_client_offline")
    assert {"mountpoint": "", "client_id": "n5"} in receiver.bodies("on_client_gone")
    assert receiver.bodies("on_session_expired") == [{"mountpoint": "", "client_id": "short"}]
    assert all(request.content_type == "application/json" for request in receiver.requests)
