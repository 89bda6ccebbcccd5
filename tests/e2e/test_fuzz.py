"""Fuzzing: random and mutated packets of every type, for MQTT 3.1.1 and 5, fed to the
codec and to a live connection. The codec answers a packet or an MQTTError, nothing
else; the broker answers a bad packet with an error reason code (or, for MQTT 3.1.1,
by closing), never raises out of the connection, and keeps serving its other clients.

The CI run keeps the sessions short. A long one (docs: README.md, "Fuzzing"):

    TERNMQ_FUZZ_EXAMPLES=20000 python -m pytest tests/e2e/test_fuzz.py
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ternmq.kernel.codec import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Framer,
    MQTTError,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Unsuback,
    Unsubscribe,
    Will,
    decode_packet,
    encode,
)
from ternmq.kernel.testing import MQTTTestClient, open_broker
from ternmq.kernel.values.config import Limits

# The broker's limit (test_config's default): the test frames what the broker frames.
MAX_PACKET_SIZE = Limits().max_packet_size
EXAMPLES = int(os.environ.get("TERNMQ_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis folder left behind
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LEVELS = st.sampled_from([4, 5])


def samples(level: int) -> list[Any]:
    """A valid packet of every type (AUTH only in MQTT 5), with fields and properties."""
    v5 = level == 5
    props = {"user_property": [("k", "v")]} if v5 else {}
    packets: list[Any] = [
        Connect("fuzz", level, False, 30, "user", b"pass", Will("w/t", b"will", 1, True, {}), props),
        Connack(True, 0, props),
        Publish("a/b", b"payload", 0, False, False, None, props),
        Publish("a/b", b"payload", 1, True, False, 7, props),
        Publish("a/b", b"payload", 2, False, True, 8, props),
        Puback(7, 0x10 if v5 else 0, props),
        Pubrec(8, 0, props),
        Pubrel(8, 0, props),
        Pubcomp(8, 0, props),
        Subscribe(9, [SubscriptionRequest("a/+", 1), SubscriptionRequest("b/#", 2)], props),
        Suback(9, [1, 2], props),
        Unsubscribe(10, ["a/+"], props),
        Unsuback(10, [0], props),
        Pingreq(),
        Pingresp(),
        Disconnect(0, props),
    ]
    if v5:
        packets.append(Auth(0x18, {"authentication_method": "m"}))
    return packets


@st.composite
def mutated(draw: Any, level: int) -> bytes:
    """A sample packet's bytes with some bytes changed, cut short or lengthened."""
    packets = samples(level)
    data = bytearray(encode(draw(st.sampled_from(packets)), level))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(1, len(data)))]
    return bytes(data + draw(st.binary(max_size=8)))


# -- the codec ---------------------------------------------------------------------------------


def decode_all(data: bytes, level: int) -> None:
    framer = Framer(max_packet_size=MAX_PACKET_SIZE)
    try:
        framer.feed(data)
        while (frame := framer.next_frame()) is not None:
            decode_packet(frame[0], frame[1], level)
    except MQTTError:
        pass  # what a bad packet is answered with; any other exception fails the test


@FUZZ
@given(level=LEVELS, data=st.data())
def test_the_codec_answers_mutated_packets_with_a_packet_or_an_mqtt_error(level: int, data: Any) -> None:
    decode_all(data.draw(mutated(level)), level)


@FUZZ
@given(level=LEVELS, raw=st.binary(max_size=512))
def test_the_codec_answers_random_bytes_with_a_packet_or_an_mqtt_error(level: int, raw: bytes) -> None:
    decode_all(raw, level)


@FUZZ
@given(level=LEVELS, data=st.data())
def test_every_sample_packet_comes_back_the_same(level: int, data: Any) -> None:
    packet = data.draw(st.sampled_from(samples(level)))
    wire = encode(packet, level)
    frame = Framer().feed_frame(wire)
    assert frame is not None and encode(decode_packet(frame[0], frame[1], level), level) == wire


def first_frame_error(data: bytes, level: int) -> int | None:
    """The reason code of the codec's error with the first packet of ``data``, if it
    has one (None: the first packet is whole and decodes, or is not whole yet)."""
    framer = Framer(max_packet_size=MAX_PACKET_SIZE)
    try:
        framer.feed(data)
        frame = framer.next_frame()
        if frame is not None:
            decode_packet(frame[0], frame[1], level)
    except MQTTError as exc:
        return int(exc.reason_code)
    return None


def whole_first_frame(data: bytes) -> bool:
    """Whether ``data`` holds its first packet whole (one the broker then reads)."""
    framer = Framer(max_packet_size=MAX_PACKET_SIZE)
    try:
        framer.feed(data)
        return framer.next_frame() is not None
    except MQTTError:
        return False


# -- a live connection ------------------------------------------------------------------------


async def answer_of(port: int, level: int, first: bytes, after_connect: bool) -> list[Any]:
    """What the broker sends a client that writes ``first`` (after a good CONNECT when
    ``after_connect``), up to the close or a quiet half second."""
    packets: list[Any] = []
    async with MQTTTestClient.open(port, level, auto_ack=False) as client:
        if after_connect:
            await client.send_raw(encode(Connect("", level, True, 30), level))
            packets.append(await client.next_packet(2))
        await client.send_raw(first)
        try:
            while (packet := await client.next_packet(0.5)) is not None:
                packets.append(packet)
                if isinstance(packet, Disconnect):
                    break
        except trio.TooSlowError:
            pass  # quiet: the broker waits for the rest of a packet, or has nothing to say
        except MQTTError:
            pass  # an answer in another version than the client's (a CONNACK to a 3.1.1 CONNECT)
    return packets


@pytest.mark.usefixtures("no_tracebacks")  # a handler that raises is logged, then fails the test
@settings(
    max_examples=max(10, EXAMPLES // 3),
    deadline=None,
    database=None,
    # no_tracebacks is checked once, over every example's log
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
# Mostly after a good CONNECT and mostly mutated packets: those reach the handlers.
@given(level=LEVELS, data=st.data(), after_connect=st.sampled_from([True, True, True, False]))
async def test_a_live_broker_answers_bad_packets_and_keeps_serving(level: int, data: Any, after_connect: bool) -> None:
    # A broker per example: pytest-trio runs each hypothesis example in its own trio run.
    async with open_broker() as broker, MQTTTestClient.open(broker.port(), 5) as bystander:
        await bystander.connect("bystander")
        await bystander.subscribe("keep/#", qos=1)
        random = data.draw(st.sampled_from([False, False, False, True]))
        first = data.draw(st.binary(min_size=1, max_size=64)) if random else data.draw(mutated(level))
        with trio.fail_after(10):
            answered = await answer_of(broker.port(), level, first, after_connect)
        disconnects = [p for p in answered if isinstance(p, Disconnect)]
        assert all(p.reason_code >= 0x80 for p in disconnects), disconnects  # an error, named
        expected = first_frame_error(first, level)
        if after_connect and first[0] >> 4 == 1 and whole_first_frame(first):
            expected = ReasonCode.PROTOCOL_ERROR  # a second CONNECT, whatever it holds [MQTT-3.1.0-2]
        if after_connect and expected is not None:
            # MQTT 5 is told why, with what the codec says of that packet; 3.1.1 is closed
            assert disconnects or level == 4, (first, answered, hex(expected))
            if disconnects:
                assert disconnects[0].reason_code == expected, (first, disconnects, hex(expected))
        # the broker is whole: the bystander still gets what is published
        await broker.service.publish("keep/on", b"still here", qos=1)
        with trio.fail_after(5):
            message = await bystander.receive()
        assert message.payload == b"still here"
