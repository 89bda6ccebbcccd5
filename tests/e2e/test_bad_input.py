"""Bad input closes only the offending connection, with the right reason code.

Every test follows one pattern: a bystander is connected and subscribed before the bad
client acts; after the bad client is closed the bystander still receives a fresh
publish and a new client can still connect. MQTT 5 clients get a DISCONNECT with the
reason code the spec names; MQTT 3.1.1 clients just see the connection closed. The
broker must never log a traceback for anything a client sends (``no_tracebacks``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import (
    Connack,
    Connect,
    Pingresp,
    Publish,
    Suback,
    Unsuback,
    Will,
    encode,
)
from ternmq.kernel.codec.wire import encode_varint
from ternmq.kernel.testing import MQTTTestClient

import helpers
from helpers import (
    BYSTANDER_TOPIC,
    LEVELS,
    eventually,
    expect_refused_close,
    packets_until_close,
    raw_until_close,
    session_rows,
)

pytestmark = pytest.mark.usefixtures("no_tracebacks")  # never a traceback, whatever a client sends

# the bystander must also still be online at the end of every test here
watched = functools.partial(helpers.watched, stays_online=True)


# -- raw bytes ------------------------------------------------------------------------


def frame(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def string(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def connect_bytes(level: int, client_id: str = "bad", **fields: Any) -> bytes:
    return encode(Connect(client_id, level, **fields), level)


def publish_bytes(
    level: int, raw_topic: bytes, payload: bytes = b"x", *, first_byte: int = 0x30, packet_id: bytes = b""
) -> bytes:
    props = b"\x00" if level == 5 else b""
    return frame(first_byte, string(raw_topic) + packet_id + props + payload)


# -- the bad client ------------------------------------------------------------------------


@asynccontextmanager
async def bad_client(broker: Broker, level: int = 5, *, connect: bool = True) -> AsyncIterator[MQTTTestClient]:
    """A raw test client, connected (CONNACK 0) unless ``connect`` is False."""
    async with MQTTTestClient.open(broker.port(), level) as client:
        if connect:
            connack = await client.connect("bad")
            assert connack.reason_code == 0, connack
        yield client


def session_gone(broker: Broker, client_id: str = "bad") -> bool:
    return all(row["client_id"] != client_id for row in session_rows(broker))


# -- malformed framing and encoding --------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_five_byte_remaining_length_closes_with_malformed_packet(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send_raw(b"\x30\xff\xff\xff\xff\x01")
            await expect_refused_close(bad, 0x81)


@pytest.mark.parametrize("level", LEVELS)
async def test_invalid_utf8_in_a_topic_closes_with_malformed_packet(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send_raw(publish_bytes(level, b"bystander/\xff\xfe"))
            await expect_refused_close(bad, 0x81)


@pytest.mark.parametrize("level", LEVELS)
async def test_utf8_encoded_surrogate_in_a_topic_closes_with_malformed_packet(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send_raw(publish_bytes(level, b"bystander/\xed\xa0\x80"))  # U+D800
            await expect_refused_close(bad, 0x81)


@pytest.mark.parametrize("level", LEVELS)
async def test_null_character_in_a_topic_closes_with_malformed_packet(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send_raw(publish_bytes(level, b"bystander/a\x00b"))
            await expect_refused_close(bad, 0x81)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "first_byte, body",
    [
        pytest.param(0x80, b"\x00\x01\x00\x03a/b\x00", id="subscribe-flags-0"),
        pytest.param(0x60, b"\x00\x01", id="pubrel-flags-0"),
        pytest.param(0xA0, b"\x00\x01\x00\x03a/b", id="unsubscribe-flags-0"),
        pytest.param(0xC1, b"", id="pingreq-flags-1"),
        pytest.param(0xE8, b"", id="disconnect-flags-8"),
    ],
)
async def test_reserved_fixed_header_flags_close_with_malformed_packet(
    broker: Broker, level: int, first_byte: int, body: bytes
) -> None:
    if level == 5 and first_byte in (0x80, 0xA0):
        body = body[:2] + b"\x00" + body[2:]  # an empty property block
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send_raw(frame(first_byte, body))
            await expect_refused_close(bad, 0x81)


@pytest.mark.parametrize("level", LEVELS)
async def test_publish_with_qos_3_closes_with_malformed_packet(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send_raw(publish_bytes(level, BYSTANDER_TOPIC.encode(), first_byte=0x36, packet_id=b"\x00\x01"))
            await expect_refused_close(bad, 0x81)


@pytest.mark.parametrize("level", LEVELS)
async def test_truncated_packet_then_close_counts_as_a_lost_connection(broker: Broker, level: int) -> None:
    async with watched(broker) as bystander:
        async with MQTTTestClient.open(broker.port(), level) as bad:
            connack = await bad.connect("bad", will=Will("bystander/will", b"lost"))
            assert connack.reason_code == 0
            whole = publish_bytes(level, b"bystander/never", b"0123456789")
            await bad.send_raw(whole[: len(whole) // 2])
            await bad.stream.send_eof()
            assert await packets_until_close(bad) == []
        will = await bystander.receive()  # an unclean close publishes the will
        assert (will.topic, will.payload) == ("bystander/will", b"lost")
        await eventually(lambda: session_gone(broker))


# -- protocol violations after CONNECT --------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("topic", ["bystander/+", "bystander/#", "#", "+/news"])
async def test_wildcard_in_a_publish_topic_closes_with_topic_name_invalid(
    broker: Broker, level: int, topic: str
) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send(Publish(topic, b"wild", 1, False, False, 1))
            await expect_refused_close(bad, 0x90)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("qos", [1, 2])
async def test_packet_id_0_at_qos_above_0_closes_with_protocol_error(broker: Broker, level: int, qos: int) -> None:
    async with watched(broker) as bystander:
        async with bad_client(broker, level) as bad:
            await bad.send_raw(
                publish_bytes(
                    level, BYSTANDER_TOPIC.encode(), b"id0", first_byte=0x30 | qos << 1, packet_id=b"\x00\x00"
                )
            )
            await expect_refused_close(bad, 0x82)
        assert await bystander.nothing_received(0.1), "a refused publish must not be routed"


@pytest.mark.parametrize("level", LEVELS)
async def test_second_connect_closes_with_protocol_error(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send_raw(connect_bytes(level, "bad"))
            await expect_refused_close(bad, 0x82)
        await eventually(lambda: session_gone(broker))


@pytest.mark.parametrize("level", LEVELS)
async def test_subscribe_without_topic_filters_is_refused(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            body = b"\x00\x07" + (b"\x00" if level == 5 else b"")
            await bad.send_raw(frame(0x82, body))
            # MQTT 5 §3.8.3: a SUBSCRIBE with no payload is a Protocol Error.
            await expect_refused_close(bad, 0x82)


@pytest.mark.parametrize("level", LEVELS)
async def test_unsubscribe_without_topic_filters_is_refused(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            body = b"\x00\x07" + (b"\x00" if level == 5 else b"")
            await bad.send_raw(frame(0xA2, body))
            await expect_refused_close(bad, 0x82)


@pytest.mark.parametrize("level", LEVELS)
async def test_empty_topic_without_alias_closes_with_protocol_error(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send_raw(publish_bytes(level, b"", b"nowhere"))
            # MQTT 5 §3.3.2.3.4: a zero-length topic without a Topic Alias is a Protocol Error.
            await expect_refused_close(bad, 0x82)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(Connack(False, 0), id="connack"),
        pytest.param(Suback(1, [0]), id="suback"),
        pytest.param(Unsuback(1, [0]), id="unsuback"),
        pytest.param(Pingresp(), id="pingresp"),
    ],
)
async def test_server_to_client_packet_from_a_client_closes_with_protocol_error(
    broker: Broker, level: int, packet: Any
) -> None:
    if level == 4 and isinstance(packet, Unsuback):
        packet = Unsuback(1, [])
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send(packet)
            await expect_refused_close(bad, 0x82)


# -- the CONNECT phase ----------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_reserved_connect_flag_is_refused_without_a_connack(broker: Broker, level: int) -> None:
    data = bytearray(connect_bytes(level))
    flags_at = 2 + 2 + 4 + 1  # fixed header, "MQTT", level
    assert data[flags_at] == 0x02  # clean start, nothing else
    data[flags_at] |= 0x01
    async with watched(broker):
        async with bad_client(broker, level, connect=False) as bad:
            await bad.send_raw(bytes(data))
            # MQTT 5 §3.1.2.3: a set reserved flag is a Malformed Packet; an error in
            # CONNECT MAY be answered with a CONNACK before closing: ours just closes.
            assert await packets_until_close(bad) == []
        assert session_gone(broker)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"\xc0\x00", id="pingreq"),
        pytest.param(frame(0x30, string(b"bystander/news") + b"early"), id="publish"),
        pytest.param(frame(0x82, b"\x00\x01" + string(b"#") + b"\x00"), id="subscribe"),
        pytest.param(b"\xe0\x00", id="disconnect"),
    ],
)
async def test_first_packet_that_is_not_connect_closes_the_connection(broker: Broker, first: bytes) -> None:
    async with watched(broker) as bystander:
        async with bad_client(broker, connect=False) as bad:
            await bad.send_raw(first)
            assert await raw_until_close(bad) == b""
        assert await bystander.nothing_received(0.1)


@pytest.mark.parametrize(
    "name, level",
    [
        pytest.param("MQTT", 6, id="level-6"),
        pytest.param("MQTT", 255, id="level-255"),
        pytest.param("MQTT", 3, id="mqtt-with-3.1-level"),
        pytest.param("MQIsdp", 4, id="mqisdp-with-3.1.1-level"),
    ],
)
async def test_unsupported_protocol_level_gets_connack_1_then_close(broker: Broker, name: str, level: int) -> None:
    # MQTT 3.1.1 [MQTT-3.1.2-2]: CONNACK return code 0x01 (unacceptable protocol level),
    # then disconnect. The client's level is unknown, so the answer is the 3.1.1 CONNACK;
    # MQTT 5 §3.1.2.2 allows it (the server MAY send a CONNACK and MUST close).
    data = bytearray(connect_bytes(4))
    assert data[2:8] == b"\x00\x04MQTT"
    data[2:9] = string(name.encode()) + bytes((level,))
    data[1] = len(data) - 2
    async with watched(broker):
        async with bad_client(broker, connect=False) as bad:
            await bad.send_raw(bytes(data))
            assert await raw_until_close(bad) == b"\x20\x02\x00\x01"


async def test_silent_client_is_closed_after_connect_timeout(broker_factory: Any) -> None:
    async with broker_factory(connect_timeout=0.5) as broker, watched(broker):
        async with bad_client(broker, connect=False) as bad:
            started = trio.current_time()
            assert await raw_until_close(bad) == b""
            assert 0.4 <= trio.current_time() - started < 2.0


@pytest.mark.parametrize("level", LEVELS)
async def test_half_a_connect_is_closed_after_connect_timeout(broker_factory: Any, level: int) -> None:
    data = connect_bytes(level, "half")
    async with broker_factory(connect_timeout=0.5) as broker, watched(broker):
        async with bad_client(broker, level, connect=False) as bad:
            started = trio.current_time()
            await bad.send_raw(data[: len(data) - 3])
            assert await raw_until_close(bad) == b""
            assert 0.4 <= trio.current_time() - started < 2.0
        assert session_gone(broker, "half")


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n", id="http-request"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), id="tls-client-hello"),
        pytest.param(bytes(64), id="zero-bytes"),
        pytest.param(b"\xff" * 64, id="ff-bytes"),
        pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n", id="ssh-banner"),
    ],
)
async def test_garbage_instead_of_connect_closes_the_connection(broker: Broker, garbage: bytes) -> None:
    async with watched(broker):
        async with bad_client(broker, connect=False) as bad:
            await bad.send_raw(garbage)
            assert await raw_until_close(bad) == b""


@pytest.mark.parametrize("level", LEVELS)
async def test_garbage_after_connect_closes_with_malformed_packet(broker: Broker, level: int) -> None:
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            await bad.send_raw(b"\x00\x00garbage")  # packet type 0 is reserved
            await expect_refused_close(bad, 0x81)


# -- size -------------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_oversize_packet_is_refused_as_soon_as_its_header_arrives(broker: Broker, level: int) -> None:
    limit = broker.settings.limits.max_packet_size
    async with watched(broker):
        async with bad_client(broker, level) as bad:
            # Only the fixed header announcing 10 MB: the broker must not wait for the body.
            await bad.send_raw(b"\x30" + encode_varint(10_000_000))
            assert 10_000_000 > limit
            await expect_refused_close(bad, 0x95, timeout=2.0)


async def test_oversize_connect_is_refused_without_waiting_for_its_body(broker: Broker) -> None:
    async with watched(broker):
        async with bad_client(broker, connect=False) as bad:
            await bad.send_raw(b"\x10" + encode_varint(10_000_000))
            assert await raw_until_close(bad, timeout=2.0) == b""


# -- a stress test: random garbage ---------------------------------------------------------

VALID_FIRST_BYTES = (
    0x10,
    0x30,
    0x31,
    0x32,
    0x33,
    0x34,
    0x35,
    0x3A,
    0x3B,
    0x3D,
    0x40,
    0x50,
    0x62,
    0x70,
    0x82,
    0xA2,
    0xC0,
    0xE0,
    0xF0,
    0x20,
    0x90,
    0xB0,
    0xD0,
)


def random_piece(rng: random.Random) -> bytes:
    """A plausible piece of a packet body: an id, a string, properties, a byte, noise."""
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randint(0, 3).to_bytes(2, "big")
    if kind == 1:
        return string(rng.choice([b"", b"a", b"a/b", b"+", b"#", b"$share/g/t", b"x\x00", b"\xc3"]))
    if kind == 2:
        return b"\x00"  # an empty property block
    if kind == 3:
        return bytes((rng.randrange(256),))
    if kind == 4:  # a property block with random properties
        props = rng.randbytes(rng.randint(1, 8))
        return encode_varint(len(props)) + props
    return rng.randbytes(rng.randint(0, 24))


def random_garbage(rng: random.Random) -> bytes:
    """Random bytes; most of them shaped like packets (a real header, a right length)."""
    if rng.random() < 0.25:
        return rng.randbytes(rng.randint(1, 64))
    out = b""
    for _ in range(rng.randint(1, 3)):
        body = b"".join(random_piece(rng) for _ in range(rng.randint(0, 4)))
        out += frame(rng.choice(VALID_FIRST_BYTES), body)
    if rng.random() < 0.2:
        out = out[: rng.randint(1, len(out))]
    return out


async def test_broker_survives_200_random_garbage_connections(broker: Broker, paho_client: Any) -> None:
    bystander = paho_client("paho-bystander", paho.MQTTv311)
    await bystander.connect(broker.port())
    assert await bystander.subscribe(BYSTANDER_TOPIC, 1)
    rng = random.Random(20240611)
    async with watched(broker):
        for i in range(200):
            level = 5 if i % 2 else 4
            garbage = random_garbage(rng)
            async with MQTTTestClient.open(broker.port(), level) as bad:
                await bad.send_raw(connect_bytes(level, f"fuzz-{i}"))
                with trio.fail_after(5):
                    assert (await bad.next_packet()).reason_code == 0
                await bad.send_raw(garbage)
                await bad.stream.send_eof()
                await raw_until_close(bad, timeout=5.0)  # the broker ends it either way
        await eventually(
            lambda: not any(row["client_id"].startswith("fuzz-") and row["is_online"] for row in session_rows(broker))
        )
    # the paho bystander got the publish of watched()'s final check and nothing else
    message = await bystander.receive()
    assert (message.topic, message.payload) == (BYSTANDER_TOPIC, b"still here")
    assert await bystander.nothing_received(0.1)
