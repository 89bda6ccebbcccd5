"""Packets that arrive together are all handled at once, however the bytes are split.

MQTT.js (and paho on a fast machine) write CONNECT, SUBSCRIBE and PUBLISH in one
segment. The broker must answer every frame it already holds before it waits for more
bytes: on the CONNECT path, after enhanced-auth rounds and in the read loop. The same
byte stream is fed in one write, one byte per write, split at every boundary and split
at random (hypothesis); the broker's answer is the same bytes each time.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ternmq.kernel.codec import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Framer,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionRequest,
    Will,
    decode_packet,
    encode,
)
from ternmq.kernel.testing import MQTTTestClient, open_broker, registered

from helpers import LEVELS, connected, raw_until_close
from test_mqtt5_auth import ANSWER, ChallengeAuth, auth_props


def session_bytes(level: int, client_id: str) -> bytes:
    """CONNECT (with a will), SUBSCRIBE, PUBLISH at QoS 0/1/2 to itself, the client's side
    of every QoS exchange, PINGREQ, DISCONNECT: a whole session in one byte string."""
    packets: list[Any] = [
        Connect(client_id, level, True, 60, will=Will("pipe/will", b"gone", 1)),
        Subscribe(1, [SubscriptionRequest("pipe/#", 2)]),
        Publish("pipe/0", b"zero", 0),
        Publish("pipe/1", b"one", 1, packet_id=2),
        Publish("pipe/2", b"two", 2, packet_id=3),
        Pubrel(3),
        Puback(1),  # the broker's copy of pipe/1 went out as packet 1 ...
        Pubrec(2),  # ... and of pipe/2 as packet 2
        Pubcomp(2),
        Pingreq(),
        Disconnect(),
    ]
    return b"".join(encode(packet, level) for packet in packets)


def decoded(data: bytes, level: int) -> list[Any]:
    framer = Framer()
    framer.feed(data)
    return [decode_packet(first, body, level) for first, body in framer.frames()]


async def answer_to(port: int, level: int, chunks: list[bytes]) -> bytes:
    """Everything the broker sends until it closes, for ``chunks`` written one by one."""
    async with MQTTTestClient.open(port, level) as client:
        for chunk in chunks:
            await client.send_raw(chunk)
        # Well below the keep-alive (60 s): a broker that waits for the client's next
        # write before answering fails here.
        return await raw_until_close(client, timeout=5)


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(points)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def fresh_id(level: int) -> str:
    """One client id per level: the session ends with each connection (clean start)."""
    return f"pipe-{level}"


@pytest.mark.parametrize("level", LEVELS)
async def test_one_write_is_answered_in_full(broker, level):
    answer = await answer_to(broker.port(), level, [session_bytes(level, fresh_id(level))])
    shape = [
        (type(p).__name__, getattr(p, "packet_id", None), getattr(p, "topic", None)) for p in decoded(answer, level)
    ]
    assert shape == [
        ("Connack", None, None),
        ("Suback", 1, None),
        ("Publish", None, "pipe/0"),
        ("Puback", 2, None),  # the publisher's acknowledgement first ...
        ("Publish", 1, "pipe/1"),  # ... then the copy for itself as subscriber
        ("Pubrec", 3, None),
        ("Publish", 2, "pipe/2"),
        ("Pubcomp", 3, None),
        ("Pubrel", 2, None),
        ("Pingresp", None, None),
    ]
    packets = decoded(answer, level)
    assert isinstance(packets[0], Connack) and packets[0].reason_code == 0
    assert isinstance(packets[1], Suback) and packets[1].reason_codes == [2]
    assert [p.payload for p in packets if isinstance(p, Publish)] == [b"zero", b"one", b"two"]
    assert isinstance(packets[-1], Pingresp)


@pytest.mark.parametrize("level", LEVELS)
async def test_every_split_gets_the_same_answer(broker, level):
    data = session_bytes(level, fresh_id(level))
    expected = await answer_to(broker.port(), level, [data])
    # One byte per write.
    data = session_bytes(level, fresh_id(level))
    assert await answer_to(broker.port(), level, [data[i : i + 1] for i in range(len(data))]) == expected
    # Two writes, split at every byte boundary. One after the other: the sessions all
    # subscribe to pipe/#, so at once they would get each other's messages.
    answers = {point: await answer_to(broker.port(), level, split_at(data, [point])) for point in range(1, len(data))}
    different = [point for point, answer in answers.items() if answer != expected]
    assert not different, f"split at {different[:5]}: {decoded(answers[different[0]], level)}"


@settings(max_examples=40, deadline=None, database=None)  # no .hypothesis folder left behind
@given(level=st.sampled_from([4, 5]), cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12))
async def test_random_splits_get_the_same_answer(level, cuts):
    # A broker per example: pytest-trio runs each hypothesis example in its own trio run,
    # so a fixture's broker would belong to another (finished) event loop.
    async with open_broker() as broker:
        data = session_bytes(level, fresh_id(level))
        expected = await answer_to(broker.port(), level, [data])
        points = [cut for cut in cuts if cut < len(data)]
        assert await answer_to(broker.port(), level, split_at(data, points)) == expected


@pytest.mark.parametrize("level", LEVELS)
async def test_connect_subscribe_publish_in_one_write_without_closing(broker, level):
    """The reproduction: nothing follows the one write, yet SUBACK and the message come."""
    async with MQTTTestClient.open(broker.port(), level) as client:
        await client.send_raw(
            b"".join(
                encode(p, level)
                for p in (
                    Connect(fresh_id(level), level, True, 60),
                    Subscribe(1, [SubscriptionRequest("a/b", 0)]),
                    Publish("a/b", b"hello", 0),
                )
            )
        )
        with trio.fail_after(2):
            assert isinstance(await client.next_packet(), Connack)
            assert isinstance(await client.next_packet(), Suback)
            message = await client.next_packet()
        assert isinstance(message, Publish) and (message.topic, message.payload) == ("a/b", b"hello")


@pytest.mark.parametrize("level", LEVELS)
async def test_publish_then_disconnect_in_the_connect_write_is_not_lost(broker, level):
    """CONNECT + PUBLISH + DISCONNECT in one write: the message is routed, the will is not."""
    async with connected(broker, "watcher", level) as watcher:
        await watcher.subscribe("burst/#", qos=1)
        async with MQTTTestClient.open(broker.port(), level) as client:
            await client.send_raw(
                b"".join(
                    encode(p, level)
                    for p in (
                        Connect(fresh_id(level), level, True, 60, will=Will("burst/will", b"died", 1)),
                        Publish("burst/data", b"payload", 1, packet_id=7),
                        Disconnect(),
                    )
                )
            )
            packets = decoded(await raw_until_close(client), level)
        assert [type(p) for p in packets] == [Connack, Puback]
        message = await watcher.receive()
        assert (message.topic, message.payload) == ("burst/data", b"payload")
        assert await watcher.nothing_received(0.2), "the will was sent after a normal DISCONNECT"


async def test_frames_after_an_auth_round_are_handled(broker):
    """CONNECT, the AUTH answer and SUBSCRIBE + PUBLISH in one write (enhanced auth)."""
    async with registered(broker, ChallengeAuth(), name="challenge"), MQTTTestClient.open(broker.port()) as client:
        await client.send_raw(
            b"".join(
                encode(p, 5)
                for p in (
                    Connect("ea-pipe", 5, True, 60, properties=auth_props(b"hello")),
                    Auth(0x18, auth_props(ANSWER)),
                    Subscribe(1, [SubscriptionRequest("ea/t", 0)]),
                    Publish("ea/t", b"after auth", 0),
                )
            )
        )
        with trio.fail_after(2):
            assert isinstance(await client.next_packet(), Auth)  # the challenge
            connack = await client.next_packet()
            assert isinstance(connack, Connack) and connack.reason_code == 0
            assert isinstance(await client.next_packet(), Suback)
            message = await client.next_packet()
        assert isinstance(message, Publish) and message.payload == b"after auth"
