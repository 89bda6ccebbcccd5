"""The default policy: what happens when no plugin answers a decision hook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as paho
import pytest

from ternmq.kernel.broker import Broker
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.values.types import ClientInfo, Message, allow

from helpers import LEVELS, connected, session_rows


class RegisterOnly:
    """An auth plugin that lets everyone connect and has no opinion on anything else."""

    def __init__(self) -> None:
        self.published: list[Message] = []

    @hookimpl
    def auth_on_register(self, client: ClientInfo) -> Any:
        return allow()

    @hookimpl
    def on_publish(self, message: Message) -> None:
        self.published.append(message)


@asynccontextmanager
async def locked_broker(broker_factory: Any, no_match: str = "deny") -> AsyncIterator[tuple[Broker, RegisterOnly]]:
    """allow_anonymous off, no_match deny, with a plugin that only answers auth_on_register."""
    async with broker_factory(allow_anonymous=False, no_match=no_match) as broker:
        plugin = RegisterOnly()
        async with registered(broker, plugin):
            yield broker, plugin


# -- no plugin at all ------------------------------------------------------------------------


async def test_v5_connect_refused_with_0x86_when_anonymous_is_off_and_no_plugin_answers(broker_factory: Any) -> None:
    async with broker_factory(allow_anonymous=False) as broker:
        async with MQTTTestClient.open(broker.port(), 5) as c:
            connack = await c.connect("nobody", username="u", password=b"p")
            assert connack.reason_code == 0x86
            assert not connack.session_present
            assert await c.closed() is None
        assert session_rows(broker) == []


async def test_v311_connect_refused_with_return_code_5_when_anonymous_is_off(broker_factory: Any) -> None:
    async with broker_factory(allow_anonymous=False) as broker:
        async with MQTTTestClient.open(broker.port(), 4) as c:
            # CONNECT 3.1.1, clean session, keep-alive 60, client id "x"
            await c.send_raw(bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 60, 0, 1]) + b"x")
            assert await c.stream.receive_some(16) == bytes([0x20, 0x02, 0x00, 0x05])
            assert await c.closed() is None


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        pytest.param(paho.MQTTv311, "Not authorized", id="paho-v311"),
        pytest.param(paho.MQTTv5, "Bad user name or password", id="paho-v5"),
    ],
)
async def test_paho_is_refused_when_anonymous_is_off(
    broker_factory: Any, paho_client: Any, protocol: int, expected: str
) -> None:
    async with broker_factory(allow_anonymous=False) as broker:
        c = paho_client("paho-nobody", protocol)
        c.client.reconnect_delay_set(min_delay=30, max_delay=30)
        _, reason, _ = await c.connect(broker.port())
        assert reason.is_failure and str(reason) == expected


@pytest.mark.parametrize("level", LEVELS)
async def test_anonymous_publish_and_subscribe_pass_without_plugins(broker_factory: Any, level: int) -> None:
    async with broker_factory(allow_anonymous=True, plugins={}) as broker:
        async with connected(broker, "sub", level) as sub, connected(broker, "pub", level) as pub:
            assert (await sub.subscribe("open/t", qos=2)).reason_codes == [2]
            puback = await pub.publish("open/t", b"free", qos=1)
            assert puback.reason_code == 0
            message = await sub.receive()
            assert (message.payload, message.qos) == (b"free", 1)


# -- an auth plugin that only answers auth_on_register -----------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_no_match_allow_lets_an_authenticated_user_publish_and_subscribe(broker_factory: Any, level: int) -> None:
    """allow_anonymous decides only CONNECT: with the default no_match = "allow", a
    publish or subscribe nobody answers goes through (Mosquitto without an ACL file)."""
    async with locked_broker(broker_factory, no_match="allow") as (broker, plugin), connected(broker, "c", level) as c:
        suback = await c.subscribe("any/#", qos=1)
        assert suback.reason_codes == [1]
        await c.publish("any/t", b"allowed", qos=1)
        assert (await c.receive()).payload == b"allowed"
        assert [m.payload for m in plugin.published] == [b"allowed"]


# With no_match = "deny" a publish or subscribe that no plugin answers is refused:


async def test_v5_subscribe_without_an_auth_on_subscribe_answer_gets_0x87(broker_factory: Any) -> None:
    async with locked_broker(broker_factory) as (broker, _), connected(broker, "c", 5) as c:
        suback = await c.subscribe("secret/#", "other/t", qos=1)
        assert suback.reason_codes == [0x87, 0x87]
        assert broker.service.subscriptions("c") == ()


async def test_v311_subscribe_without_an_auth_on_subscribe_answer_gets_0x80(broker_factory: Any) -> None:
    async with locked_broker(broker_factory) as (broker, _), connected(broker, "c", 4) as c:
        suback = await c.subscribe("secret/#", qos=1)
        assert suback.reason_codes == [0x80]
        assert broker.service.subscriptions("c") == ()


async def test_v311_publish_without_an_auth_on_publish_answer_closes_the_connection(broker_factory: Any) -> None:
    async with locked_broker(broker_factory) as (broker, plugin), connected(broker, "c", 4) as c:
        await c.send_raw(bytes([0x32, 8, 0, 3]) + b"a/b" + bytes([0, 1]) + b"x")  # QoS 1, id 1
        assert await c.closed() is None  # no PUBACK: closed
        assert plugin.published == []


@pytest.mark.parametrize(("qos", "ack"), [(1, "Puback"), (2, "Pubrec")])
async def test_v5_publish_without_an_auth_on_publish_answer_is_acknowledged_with_0x87(
    broker_factory: Any, qos: int, ack: str
) -> None:
    async with locked_broker(broker_factory) as (broker, plugin), connected(broker, "c", 5) as c:
        answer = await c.publish("a/b", b"x", qos=qos)
        assert type(answer).__name__ == ack and answer.reason_code == 0x87
        assert plugin.published == []
        assert (await c.subscribe("still/connected")).reason_codes == [0x87]  # the connection lives on


async def test_v5_qos0_publish_without_an_answer_is_dropped_and_the_connection_stays(broker_factory: Any) -> None:
    async with locked_broker(broker_factory) as (broker, plugin), connected(broker, "c", 5) as c:
        await c.publish("a/b", b"x", qos=0)
        assert await c.nothing_received(0.2)
        assert plugin.published == []
        assert broker.metrics.publish_denied == 1


async def test_paho_v5_publish_is_refused_with_0x87(broker_factory: Any, paho_client: Any) -> None:
    async with locked_broker(broker_factory) as (broker, plugin):
        c = paho_client("paho-pub", paho.MQTTv5)
        await c.connect(broker.port())
        codes = await c.subscribe("x/y", qos=1)
        assert [int(code.value) for code in codes] == [0x87]
        refused: list[Any] = []
        c.client.on_publish = lambda client, userdata, mid, reason_code, properties: refused.append(reason_code)
        await c.publish("x/y", b"no", qos=1)
        assert len(refused) == 1 and refused[0] == 0x87
        assert plugin.published == []
        await c.disconnect()
