"""Framer: incremental splitting, size limits, and a random-bytes fuzz through framer + decoder."""

from __future__ import annotations

import random

import pytest

from ternmq.kernel.codec import (
    Connect,
    Disconnect,
    Framer,
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    Pingreq,
    Puback,
    Publish,
    Subscribe,
    SubscriptionRequest,
    decode_packet,
    encode,
)
from ternmq.kernel.codec.wire import encode_varint

PACKETS = [
    Connect("c1", 5, properties={"receive_maximum": 5}),
    Publish("a/b", b"x" * 200, 1, packet_id=1),
    Pingreq(),
    Subscribe(2, [SubscriptionRequest("a/#", 1)]),
    Publish("big", bytes(range(256)) * 70, 0),  # remaining length needs 3 varint bytes
    Puback(1),
    Disconnect(),
]
STREAM = b"".join(encode(p, 5) for p in PACKETS)


def decode_all(framer: Framer) -> list:
    return [decode_packet(fh, body, 5) for fh, body in framer.frames()]


def test_byte_at_a_time():
    framer = Framer()
    out = []
    for i in range(len(STREAM)):
        framer.feed(STREAM[i : i + 1])
        frame = framer.next_frame()
        if frame is not None:
            out.append(decode_packet(*frame, 5))
            assert framer.next_frame() is None
    assert out == PACKETS
    assert framer.buffered() == 0


def test_many_packets_in_one_feed_and_split_feeds():
    framer = Framer()
    framer.feed(STREAM)
    assert framer.buffered() == len(STREAM)
    assert decode_all(framer) == PACKETS
    assert framer.buffered() == 0 and framer.next_frame() is None
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(STREAM)), 20))
    out = []
    for start, stop in zip([0, *cuts], [*cuts, len(STREAM)], strict=True):
        framer.feed(memoryview(STREAM)[start:stop])
        out.extend(decode_all(framer))
    assert out == PACKETS


def test_partial_frame_stays_buffered():
    framer = Framer()
    wire = encode(PACKETS[1], 5)
    framer.feed(wire + wire[:5])
    assert framer.next_frame() == (wire[0], wire[3:])
    assert framer.next_frame() is None
    assert framer.buffered() == 5
    framer.feed(wire[5:])
    assert decode_all(framer) == [PACKETS[1]]


def test_body_is_independent_bytes():
    framer = Framer()
    framer.feed(b"\x30\x04\x00\x01tp")
    fh, body = framer.next_frame()
    framer.feed(b"\xc0\x00" * 10)  # buffer may be resized/reused while the body is alive
    assert (fh, body) == (0x30, b"\x00\x01tp") and type(body) is bytes
    assert len(list(framer.frames())) == 10


def test_compaction_keeps_frames_intact():
    framer = Framer()
    packets = [Publish(f"t/{i}", bytes([i % 256]) * (i % 300), 0) for i in range(1500)]
    wire = b"".join(encode(p, 4) for p in packets)
    assert len(wire) > 200_000
    out = []
    for start in range(0, len(wire), 9973):  # odd-sized chunks, consumed as they arrive
        framer.feed(wire[start : start + 9973])
        out.extend(decode_packet(fh, body, 4) for fh, body in framer.frames())
        assert framer.buffered() < 9973 + 310
    assert out == packets and framer.buffered() == 0


@pytest.mark.parametrize("remaining", [0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455])
def test_remaining_length_boundaries(remaining):
    header = b"\x30" + encode_varint(remaining)
    framer = Framer(max_packet_size=300_000_000)
    framer.feed(header)
    if remaining == 0:
        assert framer.next_frame() == (0x30, b"")
    else:
        assert framer.next_frame() is None  # waits for the body
        assert framer.buffered() == len(header)
    small = Framer(max_packet_size=len(header) + remaining - 1)
    small.feed(header)
    with pytest.raises(PacketTooLarge) as info:
        small.next_frame()
    assert info.value.reason_code == 0x95


def test_remaining_length_too_long_or_not_minimal():
    framer = Framer()
    framer.feed(b"\x30\xff\xff\xff")
    assert framer.next_frame() is None  # varint may still end in the 4th byte
    framer.feed(b"\xff")  # 4th byte continues: a 5th length byte is not allowed
    with pytest.raises(MalformedPacket) as info:
        framer.next_frame()
    assert info.value.reason_code == 0x81
    framer = Framer()
    framer.feed(b"\x30\x80\x00")
    with pytest.raises(MalformedPacket):
        framer.next_frame()


def test_oversize_refused_before_body_arrives():
    framer = Framer(max_packet_size=1000)
    framer.feed(b"\x30" + encode_varint(997))  # 1 + 2 + 997 = 1000: allowed
    assert framer.next_frame() is None
    framer.feed(b"\x00" * 997)
    assert framer.next_frame()[1] == b"\x00" * 997
    framer.feed(b"\x30" + encode_varint(998))  # 1001 bytes announced
    with pytest.raises(PacketTooLarge):
        framer.next_frame()
    assert framer.buffered() == 3  # nothing of the body was needed


def test_max_packet_size_is_writable():
    framer = Framer()
    wire = encode(PACKETS[1], 5)
    framer.feed(wire)
    framer.max_packet_size = len(wire) - 1
    with pytest.raises(PacketTooLarge):
        framer.next_frame()
    framer.max_packet_size = len(wire)
    assert decode_all(framer) == [PACKETS[1]]


_PLAUSIBLE = (0x10, 0x20, 0x30, 0x32, 0x3B, 0x40, 0x50, 0x62, 0x70, 0x82, 0x90, 0xA2, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0)


def test_fuzz_random_bytes_through_framer_and_decoder():
    rng = random.Random(424242)
    decoded = errors = 0
    for _ in range(6000):
        framer = Framer(max_packet_size=rng.choice((64, 4096)))
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 80)))
        if rng.random() < 0.5:  # plausible header: a real type and flags with a matching length
            body = data[: rng.randrange(8)]
            data = bytes((rng.choice(_PLAUSIBLE), len(body))) + body + data
        framer.feed(data)
        level = rng.choice((3, 4, 5))
        try:
            for fh, body in framer.frames():
                decode_packet(fh, body, level)
                decoded += 1
        except MQTTError:
            errors += 1
    assert decoded > 100 and errors > 1000
