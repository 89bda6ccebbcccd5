"""MQTT 5 enhanced authentication end to end (CONNECT/AUTH exchanges, re-authentication).

paho-mqtt has no API for AUTH exchanges, so the client side is MQTTTestClient; the broker
side is a test plugin implementing ``on_auth`` with a challenge and an expected answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ternmq.kernel.codec import Auth, Connack, Connect, Disconnect, Pingresp
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.values.types import allow, auth_continue, deny

METHOD = "test"
CHALLENGE = b"challenge"
ANSWER = b"challenge-answer"


class ChallengeAuth:
    """on_auth for the method "test": any first step gets ``CHALLENGE``; ``ANSWER``
    completes (with server data ``b"welcome"``); anything else is refused with 0x86."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bytes | None, bool]] = []

    @hookimpl
    def on_auth(self, client: Any, method: str, data: bytes | None, reauthenticate: bool) -> Any:
        self.calls.append((client.client_id, method, data, reauthenticate))
        if method != METHOD:
            return None  # not ours: no opinion
        if data == ANSWER:
            return allow(authentication_data=b"welcome")
        if data in (None, b"", b"hello"):
            return auth_continue(CHALLENGE)
        return deny(0x86, "wrong answer")


@pytest.fixture
async def plugin(broker: Any) -> AsyncIterator[ChallengeAuth]:
    auth = ChallengeAuth()
    async with registered(broker, auth, name="challenge-auth"):
        yield auth


def auth_props(data: bytes | None = None, method: str = METHOD) -> dict[str, Any]:
    props: dict[str, Any] = {"authentication_method": method}
    if data is not None:
        props["authentication_data"] = data
    return props


async def send_connect(c: MQTTTestClient, client_id: str, method: str = METHOD, data: bytes | None = b"hello") -> None:
    await c.send(Connect(client_id, 5, True, 60, properties=auth_props(data, method)))


async def authenticate(c: MQTTTestClient, client_id: str) -> Connack:
    """The whole successful exchange: CONNECT, AUTH 0x18 challenge, AUTH 0x18 answer."""
    await send_connect(c, client_id)
    challenge = await c.next_packet()
    assert isinstance(challenge, Auth), challenge
    await c.auth(0x18, auth_props(ANSWER))
    connack = await c.next_packet()
    assert isinstance(connack, Connack), connack
    return connack


async def test_enhanced_auth_challenge_and_answer_connects(broker, plugin):
    async with MQTTTestClient.open(broker.port()) as c:
        await send_connect(c, "ea-ok")
        challenge = await c.next_packet()
        assert isinstance(challenge, Auth)
        assert challenge.reason_code == 0x18
        assert challenge.properties["authentication_method"] == METHOD
        assert challenge.properties["authentication_data"] == CHALLENGE

        await c.auth(0x18, auth_props(ANSWER))
        connack = await c.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0
        # [MQTT-4.12.0-5]: a successful CONNACK repeats the method of CONNECT.
        assert connack.properties["authentication_method"] == METHOD
        assert connack.properties["authentication_data"] == b"welcome"

        await c.ping()
        assert isinstance(await c.next_packet(), Pingresp)
    assert plugin.calls == [("ea-ok", METHOD, b"hello", False), ("ea-ok", METHOD, ANSWER, False)]


async def test_enhanced_auth_wrong_answer_is_refused_with_the_plugin_code(broker, plugin):
    async with MQTTTestClient.open(broker.port()) as c:
        await send_connect(c, "ea-wrong")
        assert isinstance(await c.next_packet(), Auth)
        await c.auth(0x18, auth_props(b"guess"))
        connack = await c.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0x86
        assert connack.properties.get("reason_string") == "wrong answer"
        assert await c.closed() is None
    assert "ea-wrong" not in broker.sessions


async def test_enhanced_auth_method_no_plugin_handles_is_bad_authentication_method(broker, plugin):
    async with MQTTTestClient.open(broker.port()) as c:
        await send_connect(c, "ea-other", method="SCRAM-SHA-512")
        connack = await c.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == 0x8C
        assert await c.closed() is None
    assert plugin.calls == [("ea-other", "SCRAM-SHA-512", b"hello", False)]  # asked, no opinion


async def test_enhanced_auth_without_any_plugin_is_bad_authentication_method(broker):
    async with MQTTTestClient.open(broker.port()) as c:
        await send_connect(c, "ea-none")
        connack = await c.next_packet()
    assert isinstance(connack, Connack) and connack.reason_code == 0x8C


async def test_reauthentication_succeeds_with_auth_success(broker, plugin):
    async with MQTTTestClient.open(broker.port()) as c:
        assert (await authenticate(c, "ea-re")).reason_code == 0
        plugin.calls.clear()

        await c.auth(0x19, auth_props(ANSWER))
        reply = await c.next_packet()
        assert isinstance(reply, Auth) and reply.reason_code == 0x00
        assert reply.properties["authentication_method"] == METHOD

        # A re-authentication that needs a round trip: AUTH 0x19, AUTH 0x18, AUTH 0x18, AUTH 0x00.
        await c.auth(0x19, auth_props(b"hello"))
        challenge = await c.next_packet()
        assert isinstance(challenge, Auth) and challenge.reason_code == 0x18
        assert challenge.properties["authentication_data"] == CHALLENGE
        await c.auth(0x18, auth_props(ANSWER))
        reply = await c.next_packet()
        assert isinstance(reply, Auth) and reply.reason_code == 0x00
        assert await c.nothing_received()  # still connected
    assert [call[3] for call in plugin.calls] == [True, True, True]


async def test_failed_reauthentication_disconnects_with_not_authorized(broker, plugin):
    async with MQTTTestClient.open(broker.port()) as c:
        assert (await authenticate(c, "ea-re-bad")).reason_code == 0
        await c.auth(0x19, auth_props(b"guess"))
        disconnect = await c.closed()
    # The plugin denies with 0x86, a CONNACK-only code: DISCONNECT cannot carry it
    # (MQTT 5 §3.14.2.1), so the broker says 0x87 (not authorized).
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x87


async def test_failed_reauthentication_keeps_a_disconnect_code_of_the_plugin(broker):
    class QuotaAuth(ChallengeAuth):
        @hookimpl
        def on_auth(self, client: Any, method: str, data: bytes | None, reauthenticate: bool) -> Any:
            if reauthenticate:
                return deny(0x97, "quota exceeded")
            return allow()

    async with registered(broker, QuotaAuth(), name="quota-auth"), MQTTTestClient.open(broker.port()) as c:
        await send_connect(c, "ea-re-quota")
        assert (await c.next_packet()).reason_code == 0
        await c.auth(0x19, auth_props(b"again"))
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x97


async def test_reauthentication_with_another_method_is_a_protocol_error(broker, plugin):
    async with MQTTTestClient.open(broker.port()) as c:
        assert (await authenticate(c, "ea-re-method")).reason_code == 0
        await c.auth(0x19, auth_props(ANSWER, method="other"))
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x82
