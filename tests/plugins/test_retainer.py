"""The retainer plugin end to end: store, replace, clear, deliver, retain handling, expiry,
and kept across restarts in the records of a store (sqlite_store)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel import ConfigError, Message, message_to_bytes
from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import SubscriptionRequest, Will
from ternmq.kernel.testing import MQTTTestClient, open_broker, test_config

from helpers import LEVELS, connected


async def retained_for(broker: Broker, topic_filter: str, level: int = 5, qos: int = 1, wait: float = 0.3) -> list[Any]:
    """What a fresh subscriber to ``topic_filter`` receives on subscribing."""
    async with connected(broker, "late", level) as late:
        await late.subscribe(topic_filter, qos=qos)
        received = []
        while not await late.nothing_received(wait):
            received.append(await late.receive())
        return received


# -- store, replace, clear --------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_retained_message_is_delivered_to_a_later_subscriber_with_retain_set(broker: Broker, level: int) -> None:
    async with connected(broker, "pub", level) as pub:
        await pub.publish("r/t", b"kept", qos=1, retain=True)
    [message] = await retained_for(broker, "r/t", level, qos=2)
    assert (message.topic, message.payload, message.retain, message.qos) == ("r/t", b"kept", True, 1)


async def test_retained_message_qos_is_downgraded_to_the_subscription_qos(broker: Broker) -> None:
    async with connected(broker, "pub") as pub:
        await pub.publish("r/t", b"kept", qos=2, retain=True)
    [message] = await retained_for(broker, "r/t", qos=0)
    assert (message.qos, message.retain) == (0, True)


async def test_retained_message_is_replaced_by_the_next_one(broker: Broker) -> None:
    async with connected(broker, "pub") as pub:
        await pub.publish("r/t", b"old", qos=1, retain=True)
        await pub.publish("r/t", b"new", qos=1, retain=True)
    assert [m.payload for m in await retained_for(broker, "r/t")] == [b"new"]


async def test_a_non_retained_publish_does_not_replace_the_retained_message(broker: Broker) -> None:
    async with connected(broker, "pub") as pub:
        await pub.publish("r/t", b"kept", qos=1, retain=True)
        await pub.publish("r/t", b"passing", qos=1, retain=False)
    assert [m.payload for m in await retained_for(broker, "r/t")] == [b"kept"]


@pytest.mark.parametrize("level", LEVELS)
async def test_empty_retained_payload_clears_and_still_reaches_current_subscribers(broker: Broker, level: int) -> None:
    async with connected(broker, "pub", level) as pub, connected(broker, "now", level) as now:
        await pub.publish("r/t", b"kept", qos=1, retain=True)
        await now.subscribe("r/t", qos=1)
        assert (await now.receive()).payload == b"kept"
        await pub.publish("r/t", b"", qos=1, retain=True)
        cleared = await now.receive()
        assert (cleared.topic, cleared.payload) == ("r/t", b"")
    assert await retained_for(broker, "r/t", level) == []


async def test_wildcard_subscription_gets_every_matching_retained_message(broker: Broker) -> None:
    async with connected(broker, "pub") as pub:
        for topic in ("house/kitchen/temp", "house/hall/temp", "house/kitchen/light", "garden/temp"):
            await pub.publish(topic, topic.encode(), qos=1, retain=True)
    got = await retained_for(broker, "house/+/temp")
    assert sorted(m.topic for m in got) == ["house/hall/temp", "house/kitchen/temp"]
    assert all(m.retain for m in got)
    assert len(await retained_for(broker, "#")) == 4


# -- the retain flag on live deliveries --------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_live_delivery_to_an_existing_subscription_clears_the_retain_flag(broker: Broker, level: int) -> None:
    async with connected(broker, "sub", level) as sub, connected(broker, "pub", level) as pub:
        await sub.subscribe("r/live", qos=1)
        await pub.publish("r/live", b"now", qos=1, retain=True)
        message = await sub.receive()
        assert (message.payload, message.retain) == (b"now", False)


async def test_v5_retain_as_published_keeps_the_retain_flag(broker: Broker) -> None:
    async with connected(broker, "sub") as sub, connected(broker, "pub") as pub:
        await sub.subscribe(SubscriptionRequest("r/live", 1, retain_as_published=True))
        await pub.publish("r/live", b"now", qos=1, retain=True)
        assert (await sub.receive()).retain is True
        await pub.publish("r/live", b"plain", qos=1, retain=False)
        assert (await sub.receive()).retain is False


# -- retain handling (MQTT 5) -----------------------------------------------------------------


@pytest.mark.parametrize(("handling", "first", "again"), [(0, 1, 1), (1, 1, 0), (2, 0, 0)])
async def test_v5_retain_handling(broker: Broker, handling: int, first: int, again: int) -> None:
    async with connected(broker, "pub") as pub:
        await pub.publish("r/h", b"kept", qos=1, retain=True)
    async with connected(broker, "sub") as sub:
        counts = []
        for _ in range(2):  # subscribe, then the same subscription again (not new any more)
            await sub.subscribe(SubscriptionRequest("r/h", 1, retain_handling=handling))
            count = 0
            while not await sub.nothing_received(0.3):
                assert (await sub.receive()).retain
                count += 1
            counts.append(count)
        assert counts == [first, again]


async def test_v5_retain_handling_1_sends_again_after_unsubscribe(broker: Broker) -> None:
    async with connected(broker, "pub") as pub:
        await pub.publish("r/h", b"kept", qos=1, retain=True)
    async with connected(broker, "sub") as sub:
        await sub.subscribe(SubscriptionRequest("r/h", 1, retain_handling=1))
        assert (await sub.receive()).payload == b"kept"
        await sub.unsubscribe("r/h")
        await sub.subscribe(SubscriptionRequest("r/h", 1, retain_handling=1))
        assert (await sub.receive()).payload == b"kept"


# -- message expiry -----------------------------------------------------------------------------


async def test_v5_expired_retained_message_is_not_delivered(broker: Broker) -> None:
    async with connected(broker, "pub") as pub:
        await pub.publish("r/exp", b"short-lived", qos=1, retain=True, properties={"message_expiry_interval": 1})
        await pub.publish("r/keep", b"long-lived", qos=1, retain=True, properties={"message_expiry_interval": 60})
    [fresh] = await retained_for(broker, "r/exp", wait=0.1)
    assert fresh.payload == b"short-lived"
    assert fresh.properties["message_expiry_interval"] <= 1
    await trio.sleep(1.1)
    assert await retained_for(broker, "r/exp") == []
    [kept] = await retained_for(broker, "r/keep")
    assert 55 <= kept.properties["message_expiry_interval"] <= 60


# -- configuration -------------------------------------------------------------------------------


async def test_max_messages_limits_new_topics_but_still_replaces_existing_ones(broker_factory: Any) -> None:
    async with broker_factory(plugins={"retainer": {"max_messages": 2}}) as broker:
        async with connected(broker, "pub") as pub:
            for n in range(3):
                await pub.publish(f"r/{n}", b"%d" % n, qos=1, retain=True)
            await pub.publish("r/0", b"replaced", qos=1, retain=True)
        got = await retained_for(broker, "r/#")
        assert sorted((m.topic, m.payload) for m in got) == [("r/0", b"replaced"), ("r/1", b"1")]


async def test_connack_does_not_announce_retain_unavailable_while_the_retainer_is_loaded(broker: Broker) -> None:
    async with connected(broker, "c") as c:
        assert c.connack.properties.get("retain_available", 1) == 1  # type: ignore[attr-defined]


async def test_without_the_retainer_connack_says_retain_unavailable(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker, connected(broker, "c") as c:
        assert c.connack.properties.get("retain_available") == 0  # type: ignore[attr-defined]


async def test_without_the_retainer_a_v5_retained_publish_gets_disconnect_0x9a(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker:
        async with connected(broker, "sub") as sub, connected(broker, "c") as c:
            await sub.subscribe("r/t", qos=1)
            await c.publish("r/t", b"x", qos=0, retain=True)
            disconnect = await c.closed()
            assert disconnect is not None and disconnect.reason_code == 0x9A
            assert await sub.nothing_received(0.2)


async def test_without_the_retainer_a_retained_will_is_refused_with_0x9a(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker, MQTTTestClient.open(broker.port(), 5) as c:
        connack = await c.connect("c", will=Will("r/will", b"x", 0, True))
        assert connack.reason_code == 0x9A


async def test_without_the_retainer_non_retained_publish_still_works(broker_factory: Any) -> None:
    async with broker_factory(plugins={}) as broker:
        async with connected(broker, "sub") as sub, connected(broker, "c") as c:
            await sub.subscribe("r/t", qos=1)
            await c.publish("r/t", b"x", qos=1)
            assert (await sub.receive()).payload == b"x"


# -- real clients -------------------------------------------------------------------------------


async def test_mosquitto_pub_retained_then_mosquitto_sub_receives_it(broker: Broker, mosquitto: Any) -> None:
    port = str(broker.port())
    await mosquitto("mosquitto_pub", "-p", port, "-r", "-q", "1", "-t", "mosq/retained", "-m", "sticky")
    done = await mosquitto("mosquitto_sub", "-p", port, "-t", "mosq/retained", "-C", "1", "-W", "5", "-F", "%t %r %p")
    assert done.stdout.decode().strip() == "mosq/retained 1 sticky"


async def test_mosquitto_pub_null_message_clears_the_retained_message(broker: Broker, mosquitto: Any) -> None:
    port = str(broker.port())
    await mosquitto("mosquitto_pub", "-p", port, "-r", "-t", "mosq/retained", "-m", "sticky")
    await mosquitto("mosquitto_pub", "-p", port, "-r", "-t", "mosq/retained", "-n")
    assert await retained_for(broker, "mosq/retained") == []


@pytest.mark.parametrize(
    "protocol", [pytest.param(paho.MQTTv311, id="paho-v311"), pytest.param(paho.MQTTv5, id="paho-v5")]
)
async def test_paho_retained_message_arrives_with_retain_flag(broker: Broker, paho_client: Any, protocol: int) -> None:
    pub = paho_client("paho-pub", protocol)
    await pub.connect(broker.port())
    await pub.publish("paho/retained", b"sticky", qos=1, retain=True)
    await pub.disconnect()
    sub = paho_client("paho-sub", protocol)
    await sub.connect(broker.port())
    await sub.subscribe("paho/#", qos=1)
    message = await sub.receive()
    assert (message.topic, message.payload, message.retain, message.qos) == ("paho/retained", b"sticky", True, 1)
    await sub.disconnect()


@pytest.mark.parametrize("key", ["max_messages", "max_payload_size"])
async def test_a_negative_limit_is_a_config_error_naming_the_key(key: str) -> None:
    with pytest.raises(ExceptionGroup) as caught:
        async with open_broker(test_config(plugins={"retainer": {key: -5}})):
            pass
    assert caught.group_contains(ConfigError, match=rf"\[plugins\.retainer\] {key}", depth=2)


# -- kept in the store's records ----------------------------------------------------------------


def stored(tmp_path: Path, **table: Any) -> Any:
    """A config with the SQLite store (first: plugins load in order) and the retainer."""
    return test_config(plugins={"sqlite_store": {"file": str(tmp_path / "t.db")}, "retainer": table})


async def test_with_a_store_retained_messages_survive_a_restart_and_expired_ones_do_not(tmp_path: Path) -> None:
    properties = {"content_type": "text/plain", "user_property": [("k", "v")], "correlation_data": b"\x00\x01"}
    async with open_broker(stored(tmp_path)) as broker, connected(broker, "pub") as pub:
        await pub.publish("r/kept", b"kept", qos=1, retain=True, properties=properties)
        await pub.publish("r/long", b"long", qos=1, retain=True, properties={"message_expiry_interval": 60})
        await pub.publish("r/short", b"short", qos=1, retain=True, properties={"message_expiry_interval": 1})
        await pub.publish("r/cleared", b"cleared", qos=1, retain=True)
        await pub.publish("r/cleared", b"", qos=1, retain=True)
        await pub.publish("r/replaced", b"old", qos=1, retain=True)
        await pub.publish("r/replaced", b"new", qos=2, retain=True)
        published = time.time()
    await trio.sleep(max(0.0, published + 1.1 - time.time()))  # r/short expires while no broker runs
    async with open_broker(stored(tmp_path)) as broker:
        got = {m.topic: m for m in await retained_for(broker, "r/#", qos=2)}
        assert sorted(got) == ["r/kept", "r/long", "r/replaced"]
        assert all(m.retain for m in got.values())
        kept = got["r/kept"]
        assert (kept.payload, kept.qos) == (b"kept", 1)
        assert {k: kept.properties.get(k) for k in properties} == properties
        assert (got["r/replaced"].payload, got["r/replaced"].qos) == (b"new", 2)
        # created_at was kept: the expiry counts the time before the restart too
        assert 55 <= got["r/long"].properties["message_expiry_interval"] < 60
        assert sorted(await broker.service.load_records("retainer")) == ["r/kept", "r/long", "r/replaced"]
        assert broker.service.metrics()["gauge.retained_messages"] == 3


async def test_with_a_store_a_message_that_expires_in_a_running_broker_leaves_the_store(tmp_path: Path) -> None:
    async with open_broker(stored(tmp_path)) as broker:
        async with connected(broker, "pub") as pub:
            await pub.publish("r/short", b"short", qos=1, retain=True, properties={"message_expiry_interval": 1})
        await trio.sleep(1.1)
        assert await retained_for(broker, "r/short") == []  # met expired on lookup: removed
        assert await broker.service.load_records("retainer") == {}


async def test_with_a_store_a_record_that_cannot_be_read_is_logged_with_its_key_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_broker(stored(tmp_path)) as broker:
        async with connected(broker, "pub") as pub:
            await pub.publish("r/good", b"good", qos=1, retain=True)
        broker.service.save_record("retainer", "r/garbage", b"\xff not json")
        broker.service.save_record("retainer", "r/no-message", b'{"topic": "r/no-message"}')
        broker.service.save_record("retainer", "r/deep", b"[" * 100_000)  # RecursionError, not ValueError
        other = message_to_bytes(Message("r/other", b"x", retain=True))
        broker.service.save_record("retainer", "r/elsewhere", other)  # a message of another topic
        typed = json.loads(message_to_bytes(Message("r/typed", b"x", retain=True)))
        typed["properties"] = {"message_expiry_interval": "60"}  # a string: no message could carry it
        broker.service.save_record("retainer", "r/typed", json.dumps(typed).encode())
        typed = {**typed, "topic": "r/huge", "properties": {}, "created_at": int("9" * 400)}
        broker.service.save_record("retainer", "r/huge", json.dumps(typed).encode())
    caplog.set_level(logging.ERROR, logger="ternmq.plugins.retainer")
    async with open_broker(stored(tmp_path)) as broker:
        assert [m.payload for m in await retained_for(broker, "r/#")] == [b"good"]
        errors = [r.getMessage() for r in caplog.records if r.name == "ternmq.plugins.retainer"]
        for key in ("r/garbage", "r/no-message", "r/deep", "r/elsewhere", "r/typed", "r/huge"):
            assert any(f"record {key!r} cannot be read" in text for text in errors), (key, errors)
        assert not any(r.exc_info for r in caplog.records)  # logged, no traceback: nothing failed


async def test_with_a_store_max_messages_keeps_the_oldest_restored_and_deletes_the_rest(tmp_path: Path) -> None:
    async with open_broker(stored(tmp_path)) as broker, connected(broker, "pub") as pub:
        for n in range(3):
            await pub.publish(f"r/{n}", b"%d" % n, qos=1, retain=True)
            await trio.sleep(0.01)  # each its own created_at
    async with open_broker(stored(tmp_path, max_messages=2)) as broker:
        assert sorted(m.topic for m in await retained_for(broker, "r/#")) == ["r/0", "r/1"]
        assert sorted(await broker.service.load_records("retainer")) == ["r/0", "r/1"]
        assert broker.service.metrics()["counter.retained_refused"] == 1


async def test_with_a_store_a_reloaded_retainer_has_its_messages_again(tmp_path: Path) -> None:
    async with open_broker(stored(tmp_path)) as broker:
        async with connected(broker, "pub") as pub:
            await pub.publish("r/t", b"kept", qos=1, retain=True)
        await broker.service.reload_plugin("retainer")
        assert [m.payload for m in await retained_for(broker, "r/t")] == [b"kept"]


async def test_without_a_store_retained_messages_are_in_memory_only(tmp_path: Path) -> None:
    config = test_config(plugins={"retainer": {}})
    async with open_broker(config) as broker:
        async with connected(broker, "pub") as pub:
            await pub.publish("r/t", b"kept", qos=1, retain=True)
        assert [m.payload for m in await retained_for(broker, "r/t")] == [b"kept"]
        assert await broker.service.load_records("retainer") == {}
    async with open_broker(config) as broker:
        assert await retained_for(broker, "r/t") == []


async def test_a_store_listed_after_the_retainer_is_taken_up_when_it_loads(tmp_path: Path) -> None:
    config = test_config(plugins={"retainer": {}, "sqlite_store": {"file": str(tmp_path / "t.db")}})
    async with open_broker(config) as broker:
        async with connected(broker, "pub") as pub:
            await pub.publish("r/t", b"kept", qos=1, retain=True)
        assert set(await broker.service.load_records("retainer")) == {"r/t"}
    async with open_broker(config) as broker:  # its records come back when the store loads
        assert [m.payload for m in await retained_for(broker, "r/t")] == [b"kept"]


async def test_a_store_unloaded_and_loaded_again_at_run_time(tmp_path: Path) -> None:
    config = test_config(plugins={"sqlite_store": {"file": str(tmp_path / "t.db")}, "retainer": {}})
    async with open_broker(config) as broker:
        service = broker.service
        async with connected(broker, "pub") as pub:
            await pub.publish("r/old", b"before", qos=1, retain=True)
            await service.unload_plugin("sqlite_store")
            await pub.publish("r/gap", b"while no store", qos=1, retain=True)  # memory only
            assert [m.payload for m in await retained_for(broker, "r/gap")] == [b"while no store"]
            await service.load_plugin("sqlite_store", {"file": str(tmp_path / "t.db")})
            await pub.publish("r/new", b"after", qos=1, retain=True)
        assert set(await service.load_records("retainer")) == {"r/old", "r/gap", "r/new"}
    async with open_broker(config) as broker:
        for topic in ("r/old", "r/gap", "r/new"):
            assert len(await retained_for(broker, topic)) == 1, topic
