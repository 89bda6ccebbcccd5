"""Will messages: abnormal close, normal DISCONNECT, v5 reason 0x04, will delay, retained will."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Will
from ternmq.kernel.testing import MQTTTestClient

from helpers import LEVELS, connected, eventually, session_rows, wait_offline


@asynccontextmanager
async def watcher(broker: Broker, topic_filter: str = "will/#", qos: int = 2) -> AsyncIterator[MQTTTestClient]:
    async with connected(broker, "watcher") as w:
        await w.subscribe(topic_filter, qos=qos)
        yield w


# -- when the will is sent ----------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_will_is_published_when_the_socket_closes_without_disconnect(broker: Broker, level: int) -> None:
    async with watcher(broker) as w:
        async with connected(broker, "dying", level, will=Will("will/dying", b"gone", 1)):
            assert await w.nothing_received(0.2), "will sent while the client is still connected"
        message = await w.receive()
        assert (message.topic, message.payload, message.qos, message.retain) == ("will/dying", b"gone", 1, False)


@pytest.mark.parametrize("level", LEVELS)
async def test_will_is_discarded_after_a_normal_disconnect(broker: Broker, level: int) -> None:
    async with watcher(broker) as w:
        async with connected(broker, "leaving", level, will=Will("will/leaving", b"gone")) as c:
            await c.disconnect()
            assert await c.closed() is None
        assert await w.nothing_received(0.5), "will published after a normal DISCONNECT"


async def test_v5_disconnect_with_reason_0x04_publishes_the_will(broker: Broker) -> None:
    async with watcher(broker) as w:
        async with connected(broker, "leaving", 5, will=Will("will/asked", b"please")) as c:
            await c.disconnect(0x04)
            assert await c.closed() is None
        message = await w.receive()
        assert (message.topic, message.payload) == ("will/asked", b"please")


async def test_v5_will_properties_are_forwarded(broker: Broker) -> None:
    props = {"content_type": "text/plain", "user_property": [("why", "crash")]}
    async with watcher(broker) as w:
        async with connected(broker, "dying", 5, will=Will("will/props", b"x", 0, False, props)):
            pass
        message = await w.receive()
        assert message.properties.get("content_type") == "text/plain"
        assert message.properties.get("user_property") == [("why", "crash")]


async def test_will_qos_is_downgraded_to_the_subscription_qos(broker: Broker) -> None:
    async with watcher(broker, qos=0) as w:
        async with connected(broker, "dying", 5, will=Will("will/q", b"x", 2)):
            pass
        assert (await w.receive()).qos == 0


async def test_retained_will_is_stored_for_later_subscribers(broker: Broker) -> None:
    async with connected(broker, "dying", 4, will=Will("will/status", b"offline", 1, True)):
        pass
    await wait_offline(broker, "dying")
    async with connected(broker, "late") as late:
        await late.subscribe("will/status", qos=1)
        message = await late.receive()
        assert (message.payload, message.retain, message.qos) == (b"offline", True, 1)


# -- real clients -------------------------------------------------------------------------


async def test_mosquitto_sub_killed_sends_its_will_and_clean_exit_does_not(
    broker: Broker, paho_client: Any, mosquitto: Any
) -> None:
    port = str(broker.port())
    w = paho_client("paho-watcher", paho.MQTTv311)
    await w.connect(broker.port())
    await w.subscribe("will/mosq/#", qos=1)
    # a clean exit (-C 1 after one message) sends DISCONNECT: no will
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: mosquitto(
                "mosquitto_sub",
                "-p",
                port,
                "-i",
                "mosq-clean",
                "-t",
                "will/trigger",
                "-C",
                "1",
                "-W",
                "5",
                "--will-topic",
                "will/mosq/clean",
                "--will-payload",
                "unexpected",
            )
        )
        await wait_subscribed(broker, "mosq-clean")
        await w.publish("will/trigger", b"go")
    assert await w.nothing_received(0.5)
    # killed: the socket closes with no DISCONNECT, the will goes out
    process = await trio.lowlevel.open_process(
        [
            "mosquitto_sub",
            "-p",
            port,
            "-i",
            "mosq-killed",
            "-t",
            "will/never",
            "--will-topic",
            "will/mosq/killed",
            "--will-payload",
            "killed",
            "--will-qos",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_subscribed(broker, "mosq-killed")
    finally:
        process.kill()
        await process.wait()
    message = await w.receive()
    assert (message.topic, message.payload, message.qos) == ("will/mosq/killed", b"killed", 1)
    await w.disconnect()


async def wait_subscribed(broker: Broker, client_id: str) -> None:
    await eventually(lambda: any(r["client_id"] == client_id and r["subscriptions"] for r in session_rows(broker)))


# -- MQTT 5 will delay --------------------------------------------------------------------


def delayed_will(delay: int, topic: str = "will/delayed") -> Will:
    return Will(topic, b"late", 1, False, {"will_delay_interval": delay})


async def test_v5_will_delay_postpones_the_will(broker: Broker) -> None:
    async with watcher(broker) as w:
        async with connected(broker, "dying", 5, expiry=30, will=delayed_will(1)):
            pass
        closed_at = trio.current_time()
        assert await w.nothing_received(0.6), "will sent before its delay"
        message = await w.receive(timeout=2)
        assert message.payload == b"late"
        assert trio.current_time() - closed_at >= 0.9


async def test_v5_will_delay_is_cancelled_when_the_client_resumes_its_session(broker: Broker) -> None:
    async with watcher(broker) as w:
        async with connected(broker, "flaky", 5, expiry=30, will=delayed_will(1)):
            pass
        await wait_offline(broker, "flaky")
        async with connected(broker, "flaky", 5, clean_start=False, expiry=30) as again:
            assert again.connack.session_present  # type: ignore[attr-defined]
            assert await w.nothing_received(1.5), "delayed will sent although the client came back"


async def test_v5_will_delay_ends_early_when_a_clean_start_ends_the_session(broker: Broker) -> None:
    async with watcher(broker) as w:
        async with connected(broker, "flaky", 5, expiry=30, will=delayed_will(30)):
            pass
        await wait_offline(broker, "flaky")
        assert await w.nothing_received(0.3)
        async with connected(broker, "flaky", 5, clean_start=True):
            message = await w.receive(timeout=1)
            assert message.payload == b"late"


async def test_v5_will_is_sent_when_the_session_expires_before_the_will_delay(broker: Broker) -> None:
    async with watcher(broker) as w:
        async with connected(broker, "dying", 5, expiry=1, will=delayed_will(30)):
            pass
        assert await w.nothing_received(0.6)
        message = await w.receive(timeout=2)
        assert message.payload == b"late"
