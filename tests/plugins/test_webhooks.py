"""The webhooks plugin against a real HTTP receiver (hypercorn in the test's nursery),
with real MQTT clients: the bodies VerneMQ sends, the replies it reads, failure
policies, the cache, notifications that never hold a publisher, run-time registrations."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import shutil
import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel import CommandError, ConfigError, Table, Text, allow, hookimpl
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Auth, Connack, Connect, Puback, Publish, SubscriptionRequest
from ternmq.kernel.manager import KernelSettings
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered, serving, test_config
from ternmq.kernel.values.config import PluginEntry
from ternmq.plugins.webhooks.calls import AnswerCache

from helpers import StoreThatCannotCommit, connected, eventually
from webhook_receiver import Answer, Receiver, Request, running_receiver

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
    # on_deliver carries properties for MQTT 3 clients too (VerneMQ's hook has them)
    on_deliver = {**who4, "qos": 0, "topic": "t/5", "payload": b64(b"five"), "retain": False}
    assert {**on_deliver, "properties": {"p_content_type": "x"}} in receiver.bodies("on_deliver")
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


# -- replies: answers and modifiers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "error", "code"),
    # The test client reads a 3.1.1 return code as the MQTT 5 code it stands for: 5 as 0x87.
    [(4, "not_allowed", 0x87), (5, "not_allowed", 0x87), (5, "bad_username_or_password", 0x86), (4, "banned", 0x87)],
)
async def test_an_error_result_refuses_the_connect(
    tmp_path: Path, receiver: Receiver, level: int, error: str, code: int
) -> None:
    receiver.respond = lambda request: Answer({"result": {"error": error}})
    async with hooked(tmp_path, receiver, ["auth_on_register", "auth_on_register_m5"]) as broker:
        async with MQTTTestClient.open(broker.port(), level) as client:
            connack = await client.connect("refused")
            assert connack.reason_code == code
    assert "refused" not in broker.sessions


async def test_register_modifiers_take_effect(tmp_path: Path, receiver: Receiver) -> None:
    """client_id alone (VerneMQ wants mountpoint with it), username, clean_session and
    session limits; VerneMQ-only keys are accepted and left alone."""
    modifiers = {
        "client_id": "renamed",
        "username": "from-webhook",
        "max_message_size": 100,
        "max_inflight_messages": 5,
        "max_message_rate": 10,
        "upgrade_qos": False,
    }
    receiver.respond = lambda request: Answer({"result": "ok", "modifiers": modifiers})
    async with hooked(tmp_path, receiver, ["auth_on_register"]) as broker:
        async with connected(broker, "original", 4, username="someone") as client:
            [session] = broker.service.sessions()
            assert (session.client_id, session.user) == ("renamed", "from-webhook")
            await client.send(Publish("t", b"x" * 200, 1, False, False, 1, {}))
            assert await client.closed() is None  # over max_message_size: closed


async def test_register_m5_modifiers_set_the_session_expiry(tmp_path: Path, receiver: Receiver) -> None:
    answer = {"result": "ok", "modifiers": {"properties": {"p_session_expiry_interval": 77}, "mountpoint": ""}}
    receiver.respond = lambda request: Answer(answer)
    async with hooked(tmp_path, receiver, ["auth_on_register_m5"]) as broker:
        async with connected(broker, "exp", 5) as client:
            assert client.connack.properties["session_expiry_interval"] == 77


async def test_publish_modifiers_rewrite_the_message(tmp_path: Path, receiver: Receiver) -> None:
    def respond(request: Request) -> Answer:
        if request.body["topic"] != "in":
            return Answer()
        modifiers = {"topic": "out", "payload": b64(b"rewritten"), "qos": 0, "retain": True, "throttle": 10}
        if request.hook.endswith("_m5"):
            modifiers["properties"] = {"p_user_property": [{"key": b64(b"by"), "val": b64(b"hook")}]}
        return Answer({"result": "ok", "modifiers": modifiers})

    receiver.respond = respond
    async with hooked(tmp_path, receiver, ["auth_on_publish", "auth_on_publish_m5"]) as broker:
        async with connected(broker, "watcher", 5) as watcher:
            await watcher.subscribe("out", qos=1)
            for level in (4, 5):
                async with connected(broker, f"p{level}", level) as publisher:
                    await publisher.publish("in", b"original", qos=1)
                message = await watcher.receive()
                assert (message.topic, message.payload, message.qos) == ("out", b"rewritten", 0)
                assert message.properties.get("user_property", []) == ([("by", "hook")] if level == 5 else [])
        assert [m.topic for m in await broker.service.retained("#")] == ["out"]


async def test_a_refused_publish_gets_0x87_for_v5_and_closes_v311(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = lambda request: Answer({"result": {"error": "not_allowed"}})
    async with hooked(tmp_path, receiver, ["auth_on_publish", "auth_on_publish_m5"]) as broker:
        async with connected(broker, "p5", 5) as v5:
            ack = await v5.publish("t", b"x", qos=1)
            assert isinstance(ack, Puback) and ack.reason_code == 0x87
        async with connected(broker, "p4", 4) as v4:
            await v4.send(Publish("t", b"x", 1, False, False, 1, {}))
            assert await v4.closed() is None


async def test_subscribe_answers_per_topic_v311_and_v5(tmp_path: Path, receiver: Receiver) -> None:
    def respond(request: Request) -> Answer:
        if request.hook == "auth_on_subscribe":
            return Answer({"result": "ok", "topics": [{"topic": "a", "qos": 0}, {"topic": "b", "qos": 128}]})
        topics = [{"topic": "a", "qos": 1, "no_local": True}, {"topic": "b", "qos": 135}]
        return Answer({"result": "ok", "modifiers": {"topics": topics}})

    receiver.respond = respond
    async with hooked(tmp_path, receiver, ["auth_on_subscribe", "auth_on_subscribe_m5"]) as broker:
        async with connected(broker, "s4", 4) as v4, connected(broker, "s5", 5) as v5:
            assert (await v4.subscribe("a", "b", qos=2)).reason_codes == [0, 0x80]
            assert (await v5.subscribe("a", "b", qos=2)).reason_codes == [1, 0x87]
            [granted] = broker.service.subscriptions("s5")
            assert (granted.topic_filter, granted.qos, granted.no_local) == ("a", 1, True)


async def test_an_error_result_refuses_every_filter(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = lambda request: Answer({"result": {"error": "not_allowed"}})
    async with hooked(tmp_path, receiver, ["auth_on_subscribe_m5"]) as broker:
        async with connected(broker, "s5", 5) as client:
            assert (await client.subscribe("a", "b")).reason_codes == [0x87, 0x87]
            await client.ping()  # still connected


class Fallback:
    """The next plugin in the chain: allows every CONNECT and publish, counting them."""

    def __init__(self) -> None:
        self.asked = 0

    @hookimpl
    def auth_on_register(self) -> Any:
        self.asked += 1
        return allow()

    @hookimpl
    def auth_on_publish(self) -> Any:
        self.asked += 1
        return allow()


async def test_next_asks_the_next_endpoint_then_the_next_plugin(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = lambda request: Answer({"result": "next"})
    endpoints = [
        {"hook": "auth_on_register", "endpoint": receiver.url("/first")},
        {"hook": "auth_on_register", "endpoint": receiver.url("/second")},
    ]
    config = webhooks_config(tmp_path, endpoints)
    config = attrs_evolve_broker(config, allow_anonymous=False)
    async with open_broker(config) as broker:
        async with MQTTTestClient.open(broker.port(), 4) as client:
            assert (await client.connect("c")).reason_code == 0x87  # nobody allowed it: return code 5
        fallback = Fallback()
        async with registered(broker, fallback), connected(broker, "c2", 4):
            assert fallback.asked == 1
    assert [r.path for r in receiver.requests] == ["/first", "/second", "/first", "/second"]


def attrs_evolve_broker(config: Any, **settings: Any) -> Any:
    return attrs.evolve(config, broker=attrs.evolve(config.broker, **settings))


BAD_REPLIES = {
    "status 500": Answer({"result": "ok"}, status=500),
    "not JSON": Answer(raw=b"<html>oops</html>"),
    "JSON but not an object": Answer(["ok"]),
    "no result": Answer({}),
    "result error": Answer({"result": "error"}),
    "unknown modifier": Answer({"result": "ok", "modifiers": {"bogus": 1}}),
    "bad mountpoint": Answer({"result": "ok", "modifiers": {"mountpoint": "a/b", "client_id": "x"}}),
    "bad qos": Answer({"result": "ok", "modifiers": {"max_inflight_messages": "many"}}),
}


@pytest.mark.parametrize("reply", list(BAD_REPLIES), ids=list(BAD_REPLIES))
async def test_a_bad_reply_is_a_failure_under_the_deny_policy(tmp_path: Path, receiver: Receiver, reply: str) -> None:
    receiver.respond = lambda request: BAD_REPLIES[reply]
    async with hooked(tmp_path, receiver, ["auth_on_register", "auth_on_register_m5"]) as broker:
        for level in (4, 5):  # server unavailable (return code 3): come back later
            code = 0x88
            async with MQTTTestClient.open(broker.port(), level) as client:
                assert (await client.connect(f"bad{level}")).reason_code == code
        [errors] = [
            v
            for k, v in broker.service.metrics().items()
            if k.startswith('counter.webhooks_errors{hook="auth_on_register"')
        ]
        assert errors == 1
        await broker_still_serves(broker)


@pytest.mark.parametrize("reply", list(BAD_REPLIES), ids=list(BAD_REPLIES))
async def test_a_bad_reply_falls_through_under_the_next_policy(tmp_path: Path, receiver: Receiver, reply: str) -> None:
    receiver.respond = lambda request: BAD_REPLIES[reply]
    async with hooked(tmp_path, receiver, {"auth_on_register": {"on_failure": "next"}}) as broker:
        fallback = Fallback()
        async with registered(broker, fallback), connected(broker, "falls-through", 4):
            assert fallback.asked == 1


async def broker_still_serves(broker: Broker) -> None:
    plugin = plugin_of(broker)
    plugin.registrations = type(plugin.registrations)()  # no endpoints: plain broker
    async with connected(broker, "after", 5) as client:
        await client.subscribe("h", qos=1)
        await client.publish("h", b"ok", qos=1)
        assert (await client.receive()).payload == b"ok"


def dead_url() -> str:
    """A URL nothing listens on (a port that was just free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("policy", ["deny", "next"])
async def test_a_dead_endpoint_is_handled_by_its_policy(tmp_path: Path, policy: str) -> None:
    endpoints = [{"hook": "auth_on_publish_m5", "endpoint": dead_url(), "on_failure": policy}]
    async with open_broker(webhooks_config(tmp_path, endpoints)) as broker, connected(broker, "p", 5) as client:
        ack = await client.publish("t", b"x", qos=1)
        assert ack.reason_code == (0x80 if policy == "deny" else 0x10)  # 0x10: allowed, no subscribers
        metrics = broker.service.metrics()
    assert metrics[f'counter.webhooks_errors{{hook="auth_on_publish_m5",endpoint="{endpoints[0]["endpoint"]}"}}'] == 1


@pytest.mark.parametrize("policy", ["deny", "next"])
async def test_a_slow_endpoint_times_out_into_its_policy(tmp_path: Path, receiver: Receiver, policy: str) -> None:
    receiver.respond = lambda request: Answer(delay=2.0)
    hooks = {"auth_on_publish_m5": {"on_failure": policy, "response_timeout": 200}}
    async with hooked(tmp_path, receiver, hooks) as broker, connected(broker, "p", 5) as client:
        ack = await client.publish("t", b"x", qos=1)
        assert ack.reason_code == (0x80 if policy == "deny" else 0x10)
        url = receiver.url("/auth_on_publish_m5")
        assert broker.service.metrics()[f'counter.webhooks_timeouts{{hook="auth_on_publish_m5",endpoint="{url}"}}'] == 1


async def test_a_chain_slower_than_the_hook_deadline_ends_in_its_policy(tmp_path: Path, receiver: Receiver) -> None:
    """The broker's deadline for the whole hook (the plugin's hook_timeout) bounds the
    chain: the endpoint that runs into it fails by its own policy, not the kernel's."""
    receiver.respond = lambda request: Answer(delay=3.0)
    endpoints = [
        {"hook": "auth_on_publish_m5", "endpoint": receiver.url(path), "on_failure": "next", "response_timeout": 5000}
        for path in ("/slow", "/second")
    ]
    config = webhooks_config(tmp_path, endpoints)
    config = attrs_evolve_plugins(config, dict(config.plugins[1].settings, hook_timeout=0.5))
    async with open_broker(config) as broker, connected(broker, "p", 5) as client:
        ack = await client.publish("t", b"x", qos=1)
        assert ack.reason_code == 0x10  # on_failure = next (both), then no_match = allow
        [loaded] = [p for p in broker.service.plugins() if p.name == WEBHOOKS]
        assert (loaded.timeouts, loaded.errors) == (0, 0)  # the kernel's deadline did not fire
        metrics = broker.service.metrics()
    # the second endpoint had no time left: a timeout of its own, no request
    assert [r.path for r in receiver.requests] == ["/slow"]
    second = receiver.url("/second")
    assert metrics[f'counter.webhooks_timeouts{{hook="auth_on_publish_m5",endpoint="{second}"}}'] == 1


def attrs_evolve_plugins(config: Any, webhooks_table: dict[str, Any]) -> Any:
    return attrs.evolve(config, plugins=(config.plugins[0], PluginEntry(WEBHOOKS, True, webhooks_table)))


async def test_hook_on_auth_m5_challenge_and_success(tmp_path: Path, receiver: Receiver) -> None:
    def respond(request: Request) -> Answer:
        data = base64.b64decode(request.body["properties"]["p_authentication_data"])
        properties = {"p_authentication_method": "token"}
        if data == b"hello":
            properties["p_authentication_data"] = b64(b"prove it")
            return Answer({"result": "ok", "modifiers": {"reason_code": 24, "properties": properties}})
        if data == b"proof":
            properties["p_authentication_data"] = b64(b"welcome")
            return Answer({"result": "ok", "modifiers": {"reason_code": 0, "properties": properties}})
        return Answer({"result": {"error": "bad_username_or_password"}})

    receiver.respond = respond
    async with hooked(tmp_path, receiver, ["on_auth_m5"]) as broker, MQTTTestClient.open(broker.port()) as client:
        props = {"authentication_method": "token", "authentication_data": b"hello"}
        await client.send(Connect("ea", 5, True, 60, properties=props))
        challenge = await client.next_packet()
        assert isinstance(challenge, Auth) and challenge.properties["authentication_data"] == b"prove it"
        await client.auth(0x18, {"authentication_method": "token", "authentication_data": b"proof"})
        connack = await client.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0
        assert connack.properties["authentication_data"] == b"welcome"
    assert receiver.bodies("on_auth_m5")[0] == {
        "username": None,
        "mountpoint": "",
        "client_id": "ea",
        "properties": {"p_authentication_method": "token", "p_authentication_data": b64(b"hello")},
    }


# -- the cache ---------------------------------------------------------------------------------


def cached_for(header: str | None) -> Any:
    headers = {"cache-control": header} if header else {}
    return lambda request: Answer({"result": "ok"}, headers=headers)


async def publish_twice(broker: Broker, payloads: tuple[bytes, bytes] = (b"one", b"two")) -> None:
    for number, payload in enumerate(payloads):
        async with connected(broker, "cacher", 5) as client:  # a new connection (and port) each time
            assert (await client.publish("c/t", payload, qos=1)).reason_code in (0, 0x10), number


async def test_max_age_caches_an_allow_across_payloads_and_ports(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = cached_for("public, max-age=60")
    async with hooked(tmp_path, receiver, ["auth_on_publish_m5"]) as broker:
        await publish_twice(broker)
        assert len(receiver.requests) == 1
        table = await run(broker, "webhooks", "cache", "show")
        assert isinstance(table, Table)
        stats = {row["stat"]: row["value"] for row in table.rows}
        assert stats == {"hits": 1, "misses": 1, "entries": 1}
        assert table.rows[0]["hook"] == "auth_on_publish_m5"
        assert await run(broker, "webhooks", "cache", "clear") == Text("Done")
        await publish_twice(broker)
        assert len(receiver.requests) == 2


@pytest.mark.parametrize("header", [None, "no-store, max-age=60", "max-age=60, no-cache", "max-age=0", "max-age=x"])
async def test_replies_that_forbid_caching_are_not_cached(
    tmp_path: Path, receiver: Receiver, header: str | None
) -> None:
    receiver.respond = cached_for(header)
    async with hooked(tmp_path, receiver, ["auth_on_publish_m5"]) as broker:
        await publish_twice(broker)
    assert len(receiver.requests) == 2


async def test_refusals_and_next_are_not_cached(tmp_path: Path, receiver: Receiver) -> None:
    answers = iter([{"result": {"error": "no"}}, {"result": "next"}, {"result": "ok"}])
    receiver.respond = lambda request: Answer(next(answers), headers={"cache-control": "max-age=60"})
    async with hooked(tmp_path, receiver, ["auth_on_publish_m5"]) as broker, connected(broker, "c", 5) as client:
        assert (await client.publish("t", b"1", qos=1)).reason_code == 0x87
        assert (await client.publish("t", b"2", qos=1)).reason_code == 0x10
        assert (await client.publish("t", b"3", qos=1)).reason_code == 0x10
        assert (await client.publish("t", b"4", qos=1)).reason_code == 0x10  # the cached ok
    assert len(receiver.requests) == 3


async def test_cached_answers_expire(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = cached_for("max-age=1")
    async with hooked(tmp_path, receiver, ["auth_on_publish_m5"]) as broker:
        await publish_twice(broker)
        assert len(receiver.requests) == 1
        await trio.sleep(1.1)
        await publish_twice(broker)
        assert len(receiver.requests) == 2


async def test_a_rewritten_payload_is_never_served_from_the_cache(tmp_path: Path, receiver: Receiver) -> None:
    modifiers = {"payload": b64(b"rewritten"), "topic": "c/out"}
    receiver.respond = lambda request: Answer(
        {"result": "ok", "modifiers": modifiers}, headers={"cache-control": "max-age=60"}
    )
    async with hooked(tmp_path, receiver, ["auth_on_publish_m5"]) as broker, connected(broker, "w", 5) as watcher:
        await watcher.subscribe("c/out", qos=1)
        await publish_twice(broker, (b"first", b"second"))
        first, second = await watcher.receive(), await watcher.receive()
    assert (first.payload, second.payload) == (b"rewritten", b"second")
    assert second.topic == "c/out"  # the rest of the cached answer applies
    assert len(receiver.requests) == 1


async def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = AnswerCache(2)
    for key in ("a", "b"):
        cache.put(("h", "u", key), key, 60)
    assert cache.get(("h", "u", "a")) == "a"  # a is now the most recently used
    cache.put(("h", "u", "c"), "c", 60)
    assert len(cache) == 2
    assert cache.get(("h", "u", "b")) is None
    assert (cache.get(("h", "u", "a")), cache.get(("h", "u", "c"))) == ("a", "c")


# -- notifications never hold a publisher --------------------------------------------------------


async def test_a_flood_of_publishes_with_a_stuck_notification_endpoint(tmp_path: Path, receiver: Receiver) -> None:
    """on_publish's endpoint answers nothing until the end: 200 QoS 1 publishes are all
    acknowledged meanwhile; the queue keeps the newest and counts what it dropped."""
    release = trio.Event()
    receiver.respond = lambda request: Answer({}, hold=release)
    async with hooked(tmp_path, receiver, ["on_publish"], queue_size=10, workers=2) as broker:
        async with connected(broker, "flood", 4) as client:
            for number in range(200):
                ack = await client.publish("f", str(number).encode(), qos=1)
                assert isinstance(ack, Puback)
            await eventually(lambda: len(receiver.requests) == 2)  # the two workers wait
            metrics = broker.service.metrics()
            url = receiver.url("/on_publish")
            dropped = metrics[f'counter.webhooks_dropped{{hook="on_publish",endpoint="{url}"}}']
            assert dropped == 200 - 10 - 2
            assert metrics["gauge.webhooks_queue_length"] == 10
            release.set()
            await eventually(lambda: len(receiver.requests) == 12)
    payloads = [base64.b64decode(body["payload"]) for body in receiver.bodies("on_publish")]
    # the queue kept the newest ten (the oldest were dropped); the workers held two others
    assert len(payloads) == 12 and {str(n).encode() for n in range(190, 200)} <= set(payloads)


# -- run-time registrations -------------------------------------------------------------------------


async def test_register_show_deregister_and_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    file = tmp_path / "webhooks.json"
    async with open_broker(webhooks_config(tmp_path, [])) as broker:
        done = await run(
            broker, "webhooks", "register", "hook=auth_on_publish", f"endpoint={receiver.url('/a')}",
            "--base64payload=false", "--response_timeout=1500", "--on_failure=next",
        )  # fmt: skip
        assert done == Text("Done")
        await run(broker, "webhooks", "register", "hook=auth_on_publish", f"endpoint={receiver.url('/b')}")
        await run(broker, "webhooks", "register", "hook=on_publish", f"endpoint={receiver.url('/t')}", "--transient")
        table = await run(broker, "webhooks", "show")
        assert isinstance(table, Table)
        assert [(r["hook"], r["endpoint"], r["origin"]) for r in table.rows] == [
            ("auth_on_publish", receiver.url("/a"), "runtime"),
            ("auth_on_publish", receiver.url("/b"), "runtime"),
            ("on_publish", receiver.url("/t"), "transient"),
        ]
        assert table.rows[0]["base64payload"] is False and table.rows[0]["response_timeout"] == 1500
        receiver.respond = lambda request: Answer({"result": "next"})
        async with connected(broker, "c", 4) as client:
            await client.publish("x", b"y", qos=1)
            await eventually(lambda: len(receiver.requests) == 3)
        assert [r.path for r in receiver.requests] == ["/a", "/b", "/t"]  # the chain, in order
        assert receiver.requests[0].body["payload"] == "y"
    kept = json.loads(file.read_text())
    assert [(e["hook"], e["endpoint"]) for e in kept] == [
        ("auth_on_publish", receiver.url("/a")),
        ("auth_on_publish", receiver.url("/b")),
    ]
    async with open_broker(webhooks_config(tmp_path, [])) as broker:
        table = await run(broker, "webhooks", "show")
        assert isinstance(table, Table) and [r["endpoint"] for r in table.rows] == [
            receiver.url("/a"),
            receiver.url("/b"),
        ]
        assert table.rows[0]["on_failure"] == "next"
        await run(broker, "webhooks", "deregister", "hook=auth_on_publish", f"endpoint={receiver.url('/a')}")
    assert [e["endpoint"] for e in json.loads(file.read_text())] == [receiver.url("/b")]


def store_config(tmp_path: Path, *, store: bool = True) -> Any:
    """The SQLite store (first: plugins load in configuration order) and webhooks without
    a registrations_file, in a data directory of the test's own (``tmp_path / "data"``)."""
    plugins: dict[str, dict[str, Any]] = {"sqlite_store": {"file": str(tmp_path / "t.db")}} if store else {}
    config = test_config(plugins={**plugins, WEBHOOKS: {}})
    return attrs_evolve_broker(config, data_dir=str(tmp_path / "data"))


def stored_registrations(db: Path) -> dict[str, dict[str, Any]]:
    """The ``webhooks`` records in the store file, read by a connection of our own."""
    with contextlib.closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT key, value FROM records WHERE namespace = 'webhooks'")
        return {key: json.loads(value) for key, value in rows}


async def test_registrations_kept_by_the_store_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "t.db"
    async with open_broker(store_config(tmp_path)) as broker:
        # /b first: the order of registration is not the order of the record keys
        await run(broker, "webhooks", "register", "hook=auth_on_publish", f"endpoint={receiver.url('/b')}")
        [(key, value)] = stored_registrations(db).items()  # durable when the command answers
        assert key == f"auth_on_publish {receiver.url('/b')}" and value["endpoint"] == receiver.url("/b")
        await run(
            broker, "webhooks", "register", "hook=auth_on_publish", f"endpoint={receiver.url('/a')}",
            "--on_failure=next", "--base64payload=false",
        )  # fmt: skip
        await run(broker, "webhooks", "register", "hook=on_publish", f"endpoint={receiver.url('/t')}", "--transient")
        await run(broker, "webhooks", "register", "hook=on_publish", f"endpoint={receiver.url('/gone')}")
        await run(broker, "webhooks", "deregister", "hook=on_publish", f"endpoint={receiver.url('/gone')}")
        assert sorted(v["endpoint"] for v in stored_registrations(db).values()) == [
            receiver.url("/a"),
            receiver.url("/b"),
        ]
    async with open_broker(store_config(tmp_path)) as broker:
        table = await run(broker, "webhooks", "show")
        assert isinstance(table, Table)
        assert [(r["endpoint"], r["origin"], r["on_failure"]) for r in table.rows] == [
            (receiver.url("/b"), "runtime", "deny"),
            (receiver.url("/a"), "runtime", "next"),
        ]
        receiver.respond = lambda request: Answer({"result": "next"})
        async with connected(broker, "c", 4) as client:
            await client.publish("x", b"y", qos=1)
            await eventually(lambda: len(receiver.requests) == 2)
        assert [r.path for r in receiver.requests] == ["/b", "/a"]  # the chain, in registration order
        assert receiver.requests[1].body["payload"] == "y"  # /a's base64payload = false came back
        await run(broker, "webhooks", "deregister", "hook=auth_on_publish", f"endpoint={receiver.url('/b')}")
        assert [v["endpoint"] for v in stored_registrations(db).values()] == [receiver.url("/a")]
    assert [p.name for p in (tmp_path / "data").rglob("*")] == []  # no webhooks.json


async def test_a_registrations_file_set_is_used_even_with_a_store(tmp_path: Path) -> None:
    config = store_config(tmp_path)
    mine = tmp_path / "mine.json"
    config = attrs_evolve_plugins(config, {"registrations_file": str(mine)})
    async with open_broker(config) as broker:
        await run(broker, "webhooks", "register", "hook=on_publish", "endpoint=http://127.0.0.1:9/x")
    assert [e["endpoint"] for e in json.loads(mine.read_text())] == ["http://127.0.0.1:9/x"]
    assert stored_registrations(tmp_path / "t.db") == {}


async def test_a_registrations_file_is_imported_into_the_store_once(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ternmq")
    data, db = tmp_path / "data", tmp_path / "t.db"
    async with open_broker(store_config(tmp_path, store=False)) as broker:  # as before: data/webhooks.json
        await run(broker, "webhooks", "register", "hook=on_publish", f"endpoint={receiver.url('/old')}")
    assert [e["endpoint"] for e in json.loads((data / "webhooks.json").read_text())] == [receiver.url("/old")]
    async with open_broker(store_config(tmp_path)) as broker:
        async with connected(broker, "c", 4) as client:
            await client.publish("x", b"1", qos=1)
            await eventually(lambda: [r.path for r in receiver.requests] == ["/old"])
        await run(broker, "webhooks", "register", "hook=on_publish", f"endpoint={receiver.url('/new')}")
    assert not (data / "webhooks.json").exists() and (data / "webhooks.json.imported").exists()
    assert "1 webhook registrations imported from" in caplog.text
    assert [e["endpoint"] for e in sorted(stored_registrations(db).values(), key=lambda e: e["order"])] == [
        receiver.url("/old"),
        receiver.url("/new"),
    ]
    # From the records now: a file is not imported again; a record that cannot be used
    # is logged with its namespace and key, and skipped.
    (data / "webhooks.json").write_text(json.dumps([{"hook": "on_publish", "endpoint": receiver.url("/late")}]))
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        bad = json.dumps({"order": 9, "hook": "on_publish", "endpoint": "ftp://nowhere/"}).encode()
        connection.execute("INSERT INTO records VALUES ('webhooks', 'on_publish ftp://nowhere/', ?)", (bad,))
    caplog.clear()
    receiver.requests.clear()
    async with open_broker(store_config(tmp_path)) as broker:
        async with connected(broker, "c", 4) as client:
            await client.publish("x", b"2", qos=1)
            await eventually(lambda: len(receiver.requests) == 2)
            await trio.sleep(0.1)
        assert sorted(r.path for r in receiver.requests) == ["/new", "/old"]  # (posted by parallel workers)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("'on_publish ftp://nowhere/'" in m and "webhooks" in m for m in errors), errors


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["register", "hook=auth_on_nothing", "endpoint=http://127.0.0.1:1/"], "unknown hook"),
        (["register", "hook=on_publish", "endpoint=ftp://127.0.0.1/"], "http:// or https://"),
        (["register", "hook=on_publish", "endpoint=http://a..b/"], "not a usable URL"),
        (["register", "hook=on_publish", "endpoint=http://h\x01/"], "not a usable URL"),
        (["register", "hook=on_publish", "endpoint=http://127.0.0.1:1/", "--response_timeout=0"], "response_timeout"),
        (["register", "hook=on_publish", "endpoint=http://127.0.0.1:1/", "--on_failure=maybe"], "on_failure"),
        (["register", "hook=on_publish", "endpoint=http://127.0.0.1:1/", "--base64payload=perhaps"], "base64payload"),
        (["register", "hook=on_publish", "endpoint=http://127.0.0.1:9/configured"], "already registered"),
        (["deregister", "hook=on_publish", "endpoint=http://127.0.0.1:1/"], "not registered"),
        (["register", "hook=on_publish"], "endpoint"),
    ],
)
async def test_bad_admin_arguments_are_clear_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    endpoints = [{"hook": "on_publish", "endpoint": "http://127.0.0.1:9/configured"}]
    async with open_broker(webhooks_config(tmp_path, endpoints)) as broker:
        with pytest.raises(CommandError, match=message):
            await run(broker, "webhooks", *argv)
    assert not (tmp_path / "webhooks.json").exists()


async def test_a_broken_registrations_file_fails_the_load_and_is_left_alone(tmp_path: Path) -> None:
    file = tmp_path / "webhooks.json"
    file.write_text('[{"hook": "on_publish"}]')
    config = webhooks_config(tmp_path, [])
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(config):
            pass
    assert caught.group_contains(ConfigError, match=f"{file}: endpoint is required", depth=2)
    assert file.read_text() == '[{"hook": "on_publish"}]'


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"endpoints": [{"hook": "on_nothing", "endpoint": "http://h/"}]}, "entry 1: unknown hook 'on_nothing'"),
        ({"endpoints": [{"hook": "on_publish", "endpoint": "h"}]}, "entry 1: endpoint must be an http"),
        ({"endpoints": [{"hook": "on_publish", "endpoint": "http://h/", "timeout": 5}]}, "unknown key 'timeout'"),
        ({"endpoints": [{"hook": "on_publish", "endpoint": "http://h/"}] * 2}, "entry 2: .* listed twice"),
        ({"endpoints": {"hook": "on_publish"}}, "endpoints"),
        ({"response_timeout": 0}, "response_timeout"),
        ({"on_failure": "open"}, "on_failure"),
        ({"workers": 0}, "workers"),
    ],
)
async def test_bad_configuration_names_table_and_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(test_config(plugins={WEBHOOKS: table})):
            pass
    assert caught.group_contains(ConfigError, match=rf"\[plugins\.webhooks\] .*{message}", depth=2)


# -- the client leaving, metrics, real clients --------------------------------------------------------


async def test_auth_on_register_request_is_cancelled_when_the_client_leaves(tmp_path: Path, receiver: Receiver) -> None:
    release = trio.Event()
    receiver.respond = lambda request: Answer(hold=release)
    async with hooked(tmp_path, receiver, ["auth_on_register"]) as broker:
        async with MQTTTestClient.open(broker.port(), 4) as client:
            await client.send(Connect("leaver", 4, True, 60, None, None, None, {}))
            await eventually(lambda: len(receiver.requests) == 1)
        url = receiver.url("/auth_on_register")
        key = f'counter.webhooks_cancelled{{hook="auth_on_register",endpoint="{url}"}}'
        await eventually(lambda: broker.service.metrics().get(key) == 1)
        release.set()


async def test_metrics_show_counts_per_hook_and_endpoint(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = cached_for("max-age=60")
    async with hooked(tmp_path, receiver, ["auth_on_publish_m5"]) as broker:
        await publish_twice(broker)
        text = await run(broker, "metrics", "show", "--aggregate=false")
    assert isinstance(text, Text)
    lines = dict(line.split(" = ") for line in str(text.text).splitlines())
    labels = f'{{hook="auth_on_publish_m5",endpoint="{receiver.url("/auth_on_publish_m5")}"}}'
    assert lines[f"counter.webhooks_requests{labels}"] == "1"
    assert lines[f"counter.webhooks_cache_hits{labels}"] == "1"
    assert lines[f"counter.webhooks_cache_misses{labels}"] == "1"
    assert float(lines[f"counter.webhooks_latency_seconds_sum{labels}"]) > 0
    assert int(lines[f"counter.webhooks_bytes_sent{labels}"]) > 50
    assert lines["gauge.webhooks_cache_entries"] == "1"


async def test_paho_clients_v311_and_v5_are_authorized_by_the_receiver(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = lambda request: Answer(
        {"result": "ok"} if request.body["topic"].startswith("ok/") else {"result": {"error": "not_allowed"}}
    )
    async with hooked(tmp_path, receiver, ["auth_on_publish", "auth_on_publish_m5"]) as broker:
        assert await paho_publish(broker.port(), paho.MQTTv311, "paho4", "ok/4", b"x") == 0
        assert await paho_publish(broker.port(), paho.MQTTv5, "paho5", "ok/5", b"x") == 0
    assert receiver.hooks() == ["auth_on_publish", "auth_on_publish_m5"]


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto_pub is not installed")
async def test_mosquitto_pub_credentials_checked_by_the_receiver(tmp_path: Path, receiver: Receiver) -> None:
    def respond(request: Request) -> Answer:
        good = request.body["username"] == "alice" and request.body["password"] == "alice-secret"
        return Answer({"result": "ok"} if good else {"result": {"error": "not_allowed"}})

    receiver.respond = respond
    async with hooked(tmp_path, receiver, ["auth_on_register"]) as broker:
        port = str(broker.port())
        base = ["mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t", "t", "-m", "m", "-V", "mqttv311"]
        good = await trio.run_process([*base, "-u", "alice", "-P", "alice-secret"], capture_stderr=True, check=False)
        bad = await trio.run_process([*base, "-u", "alice", "-P", "wrong"], capture_stderr=True, check=False)
    assert good.returncode == 0
    assert bad.returncode != 0 and b"not authorised" in bad.stderr.lower().replace(b"authorized", b"authorised")


# -- what a reply or a registration must not be able to break -----------------------------------------


BAD_PROPERTIES = [
    {"p_message_expiry_interval": "60"},
    {"p_message_expiry_interval": -1},
    {"p_message_expiry_interval": 2**32},
    {"p_content_type": 5},
    {"p_response_topic": ["x"]},
    {"p_response_topic": "a/#"},
    {"p_payload_format_indicator": "binary"},
    {"p_user_property": [{"key": "not base64!", "val": ""}]},
    {"p_will_delay_interval": 5},
    {"p_session_expiry_interval": 5},
    {"p_bogus": 1},
]


@pytest.mark.parametrize(
    "properties", BAD_PROPERTIES, ids=[next(iter(p)) + repr(next(iter(p.values()))) for p in BAD_PROPERTIES]
)
async def test_publish_properties_of_the_wrong_kind_are_a_failure(
    tmp_path: Path, receiver: Receiver, properties: dict[str, Any]
) -> None:
    """A bad property never reaches a message (where it would fail every subscriber)."""
    receiver.respond = lambda request: Answer({"result": "ok", "modifiers": {"properties": properties}})
    async with hooked(tmp_path, receiver, ["auth_on_publish_m5"]) as broker:
        async with connected(broker, "sub", 5) as subscriber, connected(broker, "pub", 5) as publisher:
            await subscriber.subscribe("t", qos=1)
            assert (await publisher.publish("t", b"x", qos=1)).reason_code == 0x80
            assert await subscriber.nothing_received(0.1)
        await broker_still_serves(broker)


async def test_register_limits_zero_and_minus_one_keep_the_brokers_limits(tmp_path: Path, receiver: Receiver) -> None:
    """VerneMQ's 0 (no limit of the session's own) and -1 (unlimited queue) keep the
    broker's limits instead of a limit of nothing."""
    modifiers = {"max_message_size": 0, "max_inflight_messages": 0, "max_offline_messages": -1}
    receiver.respond = lambda request: Answer({"result": "ok", "modifiers": modifiers})
    async with hooked(tmp_path, receiver, ["auth_on_register_m5"]) as broker, connected(broker, "z", 5) as client:
        assert client.connack.properties["maximum_packet_size"] == broker.settings.limits.max_packet_size
        await client.subscribe("z", qos=1)
        await client.publish("z", b"x" * 1000, qos=1)
        assert (await client.receive()).payload == b"x" * 1000


@pytest.mark.parametrize(
    "modifiers",
    [
        {"max_message_size": 2**31},
        {"session_expiry_interval": 2**32},
        {"max_inflight_messages": 70000},
        {"max_offline_messages": -2},
    ],
)
async def test_register_limits_out_of_range_are_a_failure(
    tmp_path: Path, receiver: Receiver, modifiers: dict[str, Any]
) -> None:
    receiver.respond = lambda request: Answer({"result": "ok", "modifiers": modifiers})
    async with hooked(tmp_path, receiver, ["auth_on_register_m5"]) as broker:
        async with MQTTTestClient.open(broker.port(), 5) as client:
            assert (await client.connect("r")).reason_code == 0x88
        await broker_still_serves(broker)


async def test_an_unsubscribe_cannot_be_refused(tmp_path: Path, receiver: Receiver) -> None:
    """MQTT 3 has no code to say so and VerneMQ cannot either: an error reply, or a failed
    endpoint under on_failure = deny, unsubscribes as asked."""
    receiver.respond = lambda request: Answer({"result": {"error": "not_allowed"}})
    hooks = {"on_unsubscribe": {}, "on_unsubscribe_m5": {"endpoint": dead_url()}}
    endpoints = [{"hook": hook, "endpoint": receiver.url("/u"), **extra} for hook, extra in hooks.items()]
    async with open_broker(webhooks_config(tmp_path, endpoints)) as broker:
        async with connected(broker, "u4", 4) as v4, connected(broker, "u5", 5) as v5:
            for client in (v4, v5):
                await client.subscribe("a", qos=0)
            await v4.unsubscribe("a")
            assert (await v5.unsubscribe("a")).reason_codes == [0]
            assert broker.service.subscriptions("u4") == () and broker.service.subscriptions("u5") == ()


async def test_a_password_json_cannot_carry_is_refused_without_a_call(tmp_path: Path, receiver: Receiver) -> None:
    async with hooked(tmp_path, receiver, ["auth_on_register_m5"]) as broker:
        async with MQTTTestClient.open(broker.port(), 5) as client:
            assert (await client.connect("bin", username="u", password=b"\xff\xfe")).reason_code == 0x86
    assert receiver.requests == []


async def test_a_registration_that_cannot_be_kept_is_not_made(tmp_path: Path, receiver: Receiver) -> None:
    table = {"endpoints": [], "registrations_file": str(tmp_path / "a-file" / "webhooks.json")}
    async with open_broker(test_config(plugins={WEBHOOKS: table})) as broker:
        (tmp_path / "a-file").write_text("where the folder should be")  # the file cannot be written now
        with pytest.raises(CommandError, match="a-file"):
            await run(broker, "webhooks", "register", "hook=on_publish", f"endpoint={receiver.url()}")
        table_now = await run(broker, "webhooks", "show")
        assert isinstance(table_now, Table) and table_now.rows == ()
        # transient ones need no file
        await run(broker, "webhooks", "register", "hook=on_publish", f"endpoint={receiver.url()}", "--transient")


async def test_deregistering_forgets_the_endpoints_cached_answers(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = cached_for("max-age=60")
    async with open_broker(webhooks_config(tmp_path, [])) as broker:
        argv = ["hook=auth_on_publish_m5", f"endpoint={receiver.url()}"]
        await run(broker, "webhooks", "register", *argv)
        await publish_twice(broker)
        assert len(receiver.requests) == 1
        await run(broker, "webhooks", "deregister", *argv)
        await run(broker, "webhooks", "register", *argv)
        await publish_twice(broker)
    assert len(receiver.requests) == 2


async def test_cache_show_reset_leaves_the_metrics_counting(tmp_path: Path, receiver: Receiver) -> None:
    receiver.respond = cached_for("max-age=60")
    async with hooked(tmp_path, receiver, ["auth_on_publish_m5"]) as broker:
        await publish_twice(broker)
        await run(broker, "webhooks", "cache", "show", "--reset")
        await publish_twice(broker)
        table = await run(broker, "webhooks", "cache", "show")
        assert isinstance(table, Table)
        assert {row["stat"]: row["value"] for row in table.rows} == {"hits": 2, "misses": 0, "entries": 1}
        url = receiver.url("/auth_on_publish_m5")
        assert (
            broker.service.metrics()[f'counter.webhooks_cache_hits{{hook="auth_on_publish_m5",endpoint="{url}"}}'] == 3
        )


async def test_notifications_to_a_dead_endpoint_are_counted_and_the_rest_go_on(
    tmp_path: Path, receiver: Receiver
) -> None:
    dead = dead_url()
    endpoints = [{"hook": "on_publish", "endpoint": dead}, {"hook": "on_publish", "endpoint": receiver.url("/live")}]
    async with open_broker(webhooks_config(tmp_path, endpoints, workers=1)) as broker:
        async with connected(broker, "p", 4) as client:
            for number in range(5):
                await client.publish("t", str(number).encode(), qos=1)
            await eventually(lambda: len(receiver.requests) == 5)
        metrics = broker.service.metrics()
    assert metrics[f'counter.webhooks_errors{{hook="on_publish",endpoint="{dead}"}}'] == 5


async def test_register_modifiers_client_id_and_mountpoint_as_vernemq_sends_them(
    tmp_path: Path, receiver: Receiver
) -> None:
    """VerneMQ receivers return both (its subscriber_id); the client lands in that topic
    namespace, and later bodies carry it with the topics as the client sent them."""

    def respond(request: Request) -> Answer:
        if request.hook == "auth_on_register":
            tenant = request.body["username"]
            return Answer({"result": "ok", "modifiers": {"client_id": f"{tenant}-dev", "mountpoint": tenant}})
        if request.body["topic"] == "elsewhere":
            return Answer({"result": "ok", "modifiers": {"mountpoint": "another"}})
        return Answer({"result": "ok", "modifiers": {"mountpoint": request.body["mountpoint"]}})

    receiver.respond = respond
    async with hooked(tmp_path, receiver, ["auth_on_register", "auth_on_publish"]) as broker:
        async with (
            connected(broker, "x", 4, username="acme") as acme,
            connected(broker, "y", 4, username="globex") as globex,
        ):
            assert {s.client_id for s in broker.service.sessions()} == {"acme-dev", "globex-dev"}
            await acme.subscribe("t", qos=1)
            await globex.subscribe("t", qos=1)
            await acme.publish("t", b"acme only", qos=1)
            assert (await acme.receive()).payload == b"acme only"
            assert await globex.nothing_received(0.1)
            await acme.send(Publish("elsewhere", b"x", 1, False, False, 99, {}))
            assert await acme.closed() is None  # publishing into another mountpoint: refused (3.1.1: closed)
    publish = [b for b in receiver.bodies("auth_on_publish") if b["topic"] == "t"]
    assert [(b["client_id"], b["mountpoint"]) for b in publish] == [("acme-dev", "acme")]


async def test_calls_reuse_kept_alive_connections(tmp_path: Path, receiver: Receiver) -> None:
    async with hooked(tmp_path, receiver, ["auth_on_publish_m5"]) as broker, connected(broker, "k", 5) as client:
        for number in range(5):
            await client.publish("t", str(number).encode(), qos=1)
    assert len(receiver.requests) == 5
    assert len({request.client_port for request in receiver.requests}) == 1  # one connection for all five


async def test_disable_and_enable_keep_the_run_time_registrations(tmp_path: Path, receiver: Receiver) -> None:
    async with open_broker(webhooks_config(tmp_path, [])) as broker:
        await run(broker, "webhooks", "register", "hook=auth_on_publish_m5", f"endpoint={receiver.url()}")
        await run(broker, "plugin", "disable", f"name={WEBHOOKS}")
        async with connected(broker, "off", 5) as client:
            await client.publish("t", b"not asked", qos=1)
        assert receiver.requests == []
        table = {"registrations_file": str(tmp_path / "webhooks.json")}
        await run(
            broker,
            "plugin",
            "enable",
            f"name={WEBHOOKS}",
            f"--config=registrations_file={json.dumps(table['registrations_file'])}",
        )
        shown = await run(broker, "webhooks", "show")
        assert isinstance(shown, Table) and [row["endpoint"] for row in shown.rows] == [receiver.url()]
        async with connected(broker, "on", 5) as client:
            await client.publish("t", b"asked", qos=1)
    assert len(receiver.requests) == 1


async def test_offline_message_and_session_expiry_bodies_name_the_mountpoint(
    tmp_path: Path, receiver: Receiver
) -> None:
    def respond(request: Request) -> Answer:
        if request.hook.startswith("auth_on_register"):
            return Answer({"result": "ok", "modifiers": {"mountpoint": "acme"}})
        return Answer({})

    receiver.respond = respond
    hooks = ["auth_on_register", "auth_on_register_m5", "on_offline_message", "on_session_expired"]
    async with hooked(tmp_path, receiver, hooks) as broker:
        async with connected(broker, "keeper", 5, clean_start=False, expiry=1) as keeper:
            await keeper.subscribe("k", qos=1)
        async with connected(broker, "sender", 4) as sender:
            await sender.publish("k", b"while away", qos=1)
        await eventually(lambda: "on_session_expired" in receiver.hooks(), timeout=10)
    assert receiver.bodies("on_offline_message") == [
        {
            "mountpoint": "acme",
            "client_id": "keeper",
            "qos": 1,
            "topic": "k",
            "payload": b64(b"while away"),
            "retain": False,
        }
    ]
    assert receiver.bodies("on_session_expired") == [{"mountpoint": "acme", "client_id": "keeper"}]


async def test_a_registration_the_store_failed_to_commit_is_in_force_and_said_to_be_unsaved(
    tmp_path: Path, receiver: Receiver
) -> None:
    broker = Broker(store_config(tmp_path, store=False))
    await broker.plugins.register("store", StoreThatCannotCommit(hang=True), settings=KernelSettings(hook_timeout=0.1))
    async with serving(broker):
        url = receiver.url("/unsaved")
        with pytest.raises(CommandError, match="in force, but the store has not saved it yet"):
            await run(broker, "webhooks", "register", "hook=on_publish", f"endpoint={url}")
        table = await run(broker, "webhooks", "show")
        assert isinstance(table, Table) and [r["endpoint"] for r in table.rows] == [url]
