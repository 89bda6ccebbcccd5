"""Wire forms and protocol errors as strict peers (conformance suites) expect them.

Short acknowledgements, PUBREC before the forwarded copy, acknowledgements of the wrong
kind, packet identifier 0, bad will topics, a CONNACK larger than the client allows,
publishing into $SYS, the forwarded message expiry, and where reason strings may go.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from ternmq.kernel.codec import (
    Connack,
    Connect,
    Disconnect,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Will,
    encode,
)
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import MQTTTestClient, registered
from ternmq.kernel.values.types import deny

from helpers import (
    LEVELS,
    connected,
    expect_refused_close,
    raw_until_close,
    wait_offline,
)


async def raw_packets(client: MQTTTestClient, wait: float = 0.3) -> bytes:
    """The raw bytes the broker sends within ``wait`` seconds."""
    received = b""
    with trio.move_on_after(wait):
        while data := await client.stream.receive_some(65536):
            received += data
    return received


# -- short acknowledgements ------------------------------------------------------------


async def test_success_acknowledgements_use_the_short_form(broker):
    async with connected(broker, "short-acks", auto_ack=False) as c:
        await c.subscribe("short/#", qos=2)
        await c.send_raw(
            encode(Publish("short/1", b"1", 1, packet_id=5), 5)
            + encode(Publish("short/2", b"2", 2, packet_id=6), 5)
            + encode(Pubrel(6), 5)
        )
        data = await raw_packets(c)
        assert b"\x40\x02\x00\x05" in data  # PUBACK 5, reason Success, no properties
        assert b"\x50\x02\x00\x06" in data  # PUBREC 6
        assert b"\x70\x02\x00\x06" in data  # PUBCOMP 6
        # The broker's copy of short/2 went out as packet 2: its PUBREL is short too.
        await c.send_raw(encode(Pubrec(2), 5))
        assert await raw_packets(c) == b"\x62\x02\x00\x02"


async def test_long_form_acknowledgements_are_accepted(broker):
    async with connected(broker, "long-acks", auto_ack=False) as c:
        await c.subscribe("long/#", qos=2)
        await c.publish("long/1", b"1", qos=1)
        await c.publish("long/2", b"2", qos=1)
        await c.publish("long/3", b"3", qos=2)
        ids = [(await c.receive()).packet_id for _ in range(3)]
        # PUBACK with a reason code, PUBACK with reason code and empty properties,
        # PUBREC and PUBCOMP likewise: all the long forms of Success.
        await c.send_raw(
            b"\x40\x03"
            + ids[0].to_bytes(2, "big")
            + b"\x00"
            + b"\x40\x04"
            + ids[1].to_bytes(2, "big")
            + b"\x00\x00"
            + b"\x50\x04"
            + ids[2].to_bytes(2, "big")
            + b"\x00\x00"
        )
        pubrel = await c.expect(Pubrel)
        assert pubrel.packet_id == ids[2]
        await c.send_raw(b"\x70\x03" + ids[2].to_bytes(2, "big") + b"\x00")
        await c.ping()
        await c.expect(Pingresp)  # still connected
    assert not broker.sessions.get("long-acks") or not broker.sessions["long-acks"].inflight


# -- order on the wire -----------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_pubrec_is_written_before_the_copy_to_a_subscriber_on_the_same_connection(broker, level):
    async with connected(broker, "self-qos2", level, auto_ack=False) as c:
        await c.subscribe("self/t", qos=2)
        await c.send(Publish("self/t", b"me", 2, packet_id=9))
        first = await c.next_packet()
        second = await c.next_packet()
    assert isinstance(first, Pubrec) and first.packet_id == 9, (first, second)
    assert isinstance(second, Publish) and second.payload == b"me"


# -- acknowledgements of the wrong kind ------------------------------------------------


async def delivered(c: MQTTTestClient, qos: int) -> int:
    """Subscribe to wrong/t at ``qos`` and publish to it: the packet id of our copy."""
    await c.subscribe("wrong/t", qos=qos)
    await c.send(Publish("wrong/t", b"x", qos, packet_id=100))
    await c.expect(Puback if qos == 1 else Pubrec)  # our publish's acknowledgement comes first
    message = await c.expect(Publish)
    assert message.qos == qos and message.packet_id is not None
    return message.packet_id


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    ("qos", "answer"),
    [
        pytest.param(1, Pubcomp, id="pubcomp-for-qos1"),
        pytest.param(1, Pubrec, id="pubrec-for-qos1"),
        pytest.param(2, Puback, id="puback-for-qos2"),
        pytest.param(2, Pubcomp, id="pubcomp-before-pubrec"),
    ],
)
async def test_an_acknowledgement_of_the_wrong_kind_is_a_protocol_error(broker, level, qos, answer):
    async with connected(broker, "wrong-ack", level, auto_ack=False) as c:
        packet_id = await delivered(c, qos)
        await c.send(answer(packet_id))
        await expect_refused_close(c, 0x82)


@pytest.mark.parametrize("level", LEVELS)
async def test_pubrel_for_an_identifier_that_awaits_no_release_is_a_protocol_error(broker, level):
    async with connected(broker, "stray-pubrel", level) as c:
        await c.send(Pubrel(77))
        await expect_refused_close(c, 0x82)


@pytest.mark.parametrize("level", LEVELS)
async def test_a_resumed_session_may_repeat_its_last_pubrel(broker, level):
    """After a reconnect the client resends PUBRELs whose PUBCOMP it never saw: it gets
    PUBCOMP (0x92 "not found" in MQTT 5), not a disconnect."""
    async with connected(broker, "resend-pubrel", level, clean_start=False):
        pass
    await wait_offline(broker, "resend-pubrel", session_kept=True)
    async with connected(broker, "resend-pubrel", level, clean_start=False) as c:
        assert c.connack.session_present
        await c.send(Pubrel(77))
        pubcomp = await c.expect(Pubcomp)
        assert (pubcomp.packet_id, pubcomp.reason_code) == (77, 0x92 if level == 5 else 0)


async def test_duplicate_puback_for_a_settled_message_is_ignored(broker):
    async with connected(broker, "dup-puback", auto_ack=False) as c:
        packet_id = await delivered(c, 1)
        await c.send(Puback(packet_id))
        await c.send(Puback(packet_id))
        await c.publish("wrong/t", b"still", qos=0)
        assert (await c.receive()).payload == b"still"


# -- packet identifier 0 ---------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "packet",
    [
        # identifier 00 00, (v5: no properties), filter "a", (SUBSCRIBE: options QoS 0)
        pytest.param({5: b"\x82\x07\x00\x00\x00\x00\x01a\x00", 4: b"\x82\x06\x00\x00\x00\x01a\x00"}, id="subscribe"),
        pytest.param({5: b"\xa2\x06\x00\x00\x00\x00\x01a", 4: b"\xa2\x05\x00\x00\x00\x01a"}, id="unsubscribe"),
    ],
)
async def test_packet_identifier_0_is_a_malformed_packet(broker, level, packet):
    async with connected(broker, "pid-zero", level) as c:
        await c.send_raw(packet[level])
        await expect_refused_close(c, 0x81)


# -- will topics -----------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["", "will/+", "will/#"])
async def test_an_mqtt5_will_topic_that_is_no_topic_name_gets_0x90(client, topic):
    async with client(5) as c:
        connack = await c.connect("bad-will", will=Will(topic, b"x"))
        assert isinstance(connack, Connack) and connack.reason_code == 0x90
        assert await c.next_packet() is None


@pytest.mark.parametrize("topic", ["", "will/+", "will/#"])
async def test_an_mqtt311_will_topic_that_is_no_topic_name_closes_without_connack(client, topic):
    async with client(4) as c:
        await c.send(Connect("bad-will", 4, True, 60, will=Will(topic, b"x")))
        assert await raw_until_close(c) == b""


# -- the client's maximum packet size --------------------------------------------------


async def test_a_connack_over_the_clients_maximum_packet_size_is_not_sent(client, broker):
    async with client(5) as c:
        # The CONNACK carries receive maximum, maximum packet size and topic alias
        # maximum: more than 8 bytes.
        await c.send(Connect("tiny", 5, True, 60, properties={"maximum_packet_size": 8}))
        assert await raw_until_close(c) == b""
    assert "tiny" not in broker.sessions


async def test_a_connack_that_fits_is_sent(client):
    async with client(5) as c:
        connack = await c.connect("fits", properties={"maximum_packet_size": 64})
        assert connack.reason_code == 0


class DenyLoudly:
    """auth_on_publish: refuse ``loud/...`` with a long reason string."""

    @hookimpl
    def auth_on_publish(self, message: Any) -> Any:
        return deny(0x87, "x" * 200) if message.topic.startswith("loud/") else None


async def test_a_reason_string_that_would_exceed_the_maximum_packet_size_is_left_out(broker):
    async with (
        registered(broker, DenyLoudly()),
        connected(broker, "small-max", properties={"maximum_packet_size": 100}) as c,
    ):
        puback = await c.publish("loud/t", b"x", qos=1)
        assert puback.reason_code == 0x87 and "reason_string" not in puback.properties
    async with registered(broker, DenyLoudly()), connected(broker, "large-max") as c:
        puback = await c.publish("loud/t", b"x", qos=1)
        assert puback.reason_code == 0x87 and puback.properties["reason_string"] == "x" * 200


# -- request problem information -------------------------------------------------------


class RefuseWithReason:
    @hookimpl
    def auth_on_register(self, client: Any) -> Any:
        return deny(0x86, "bad credentials for this broker") if client.client_id == "refused" else None


async def test_connack_keeps_its_reason_string_without_request_problem_information(broker):
    async with registered(broker, RefuseWithReason()), MQTTTestClient.open(broker.port()) as c:
        connack = await c.connect("refused", properties={"request_problem_information": 0})
    assert connack.reason_code == 0x86
    assert connack.properties["reason_string"] == "bad credentials for this broker"


async def test_disconnect_keeps_its_reason_string_without_request_problem_information(broker):
    async with connected(broker, "quiet-alias", properties={"request_problem_information": 0}) as c:
        await c.send(Publish("a", b"x", 0, properties={"topic_alias": 999}))
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x94
    assert "reason_string" in disconnect.properties


# -- $SYS ------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["$SYS/broker/uptime", "$SYS"])
async def test_mqtt5_publish_into_sys_is_not_authorized(broker, topic):
    async with connected(broker, "sys-reader", 5) as reader:
        await reader.subscribe("$SYS/#", "$SYS", qos=1)
        async with connected(broker, "sys-writer", 5) as c:
            puback = await c.publish(topic, b"fake", qos=1)
            pubrec = await c.publish(topic, b"fake", qos=2)
            await c.publish(topic, b"fake", qos=0)
        assert (puback.reason_code, pubrec.reason_code) == (0x87, 0x87)
        assert await reader.nothing_received()


async def test_mqtt311_publish_into_sys_is_acknowledged_and_dropped(broker):
    async with connected(broker, "sys-reader", 4) as reader:
        await reader.subscribe("$SYS/#", qos=1)
        async with connected(broker, "sys-writer-311", 4) as c:
            puback = await c.publish("$SYS/broker/clients", b"fake", qos=1)
            pubcomp = await c.publish("$SYS/broker/clients", b"fake", qos=2)
            assert isinstance(puback, Puback) and isinstance(pubcomp, Pubcomp)
            await c.publish("not-sys/t", b"ok", qos=1)  # still connected
        assert await reader.nothing_received()


async def test_a_will_into_sys_is_refused(client):
    async with client(5) as c:
        connack = await c.connect("sys-will", will=Will("$SYS/x", b"x"))
    assert connack.reason_code == 0x87


# -- message expiry --------------------------------------------------------------------


async def test_forwarded_message_expiry_is_rounded_up(broker):
    async with connected(broker, "exp-sub", clean_start=False) as sub:
        await sub.subscribe("round/t", qos=1)
    await wait_offline(broker, "exp-sub", session_kept=True)
    async with connected(broker, "exp-pub") as pub:
        await pub.publish("round/t", b"queued", qos=1, properties={"message_expiry_interval": 60})
        await pub.publish("round/r", b"retained", qos=1, retain=True, properties={"message_expiry_interval": 60})
    await trio.sleep(0.05)
    async with connected(broker, "exp-sub", clean_start=False) as sub:
        queued = await sub.receive()
        assert queued.properties["message_expiry_interval"] == 60  # waited 50 ms: still 60
        await sub.subscribe("round/r", qos=1)
        retained = await sub.receive()
        assert retained.properties["message_expiry_interval"] == 60


async def test_forwarded_message_expiry_is_never_longer_than_what_is_left(broker):
    async with connected(broker, "exp-pub2") as pub:
        await pub.publish("left/r", b"retained", qos=1, retain=True, properties={"message_expiry_interval": 3})
    await trio.sleep(1.2)
    async with connected(broker, "exp-sub2") as sub:
        await sub.subscribe("left/r", qos=1)
        assert (await sub.receive()).properties["message_expiry_interval"] == 2  # 1.8 s left
