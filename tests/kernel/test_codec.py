"""Codec round-trips, golden bytes, encode_publish_parts and a mutation fuzz."""

from __future__ import annotations

import random

import pytest

from ternmq.kernel.codec import (
    PROPERTY_NAMES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Framer,
    MQTTError,
    PacketType,
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
    connack_v3_code,
    decode_packet,
    encode,
    encode_publish_parts,
)

UP = [("k1", "v1"), ("k1", "v2"), ("ü", "")]  # repeated key, order matters, non-ASCII, empty value


def samples(level: int) -> list:
    """Valid packets for a connection at `level`; v5 adds property-carrying variants."""
    v5 = level == 5
    will_props = {"will_delay_interval": 5, "content_type": "text/plain"} if v5 else {}
    pkts = [
        Connect("c1", level),
        Connect("", level, clean_start=False, keep_alive=0),
        Connect(
            "dev-7", level, True, 65535, "user", b"\x00\xffpw", Will("will/t", b"\x00bye", 2, True, will_props), {}
        ),
        Connect("x", level, will=Will("w", b"")),
        Connack(),
        Connack(session_present=level > 3, reason_code=0),
        Connack(reason_code=ReasonCode.NOT_AUTHORIZED),
        Connack(reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION),
        Publish("a/b", b"payload"),
        Publish("", b""),
        Publish("t/\u00e9\U0002a6d4", bytes(range(256)) * 3, 1, True, True, 65535),
        Publish("q2", b"x", 2, False, False, 1),
        Puback(1),
        Pubrec(2),
        Pubrel(3),
        Pubcomp(65535),
        Subscribe(10, [SubscriptionRequest("a/#", 0), SubscriptionRequest("+/b", 1), SubscriptionRequest("c", 2)]),
        Suback(10, [0, 1, 2, 0x80]),
        Unsubscribe(11, ["a/#", "b"]),
        Unsuback(11) if not v5 else Unsuback(11, [0, 0x11]),
        Pingreq(),
        Pingresp(),
        Disconnect(),
    ]
    if level == 3:
        for p in pkts:
            if isinstance(p, Connack):
                p.session_present = False  # 3.1 has no session present flag
    if not v5:
        return pkts
    return pkts + [
        Connect("p", 5, password=b"no-user"),
        Connect(
            "props",
            5,
            properties={
                "session_expiry_interval": 0xFFFFFFFF,
                "receive_maximum": 10,
                "maximum_packet_size": 1024,
                "topic_alias_maximum": 5,
                "request_response_information": 1,
                "request_problem_information": 0,
                "authentication_method": "SCRAM",
                "authentication_data": b"\x01\x02",
                "user_property": UP,
            },
        ),
        Connack(
            True,
            0,
            {
                "assigned_client_identifier": "auto-1",
                "server_keep_alive": 30,
                "maximum_qos": 1,
                "retain_available": 0,
                "wildcard_subscription_available": 1,
                "subscription_identifier_available": 0,
                "shared_subscription_available": 1,
                "response_information": "resp/",
                "server_reference": "other:1883",
                "reason_string": "ok",
                "topic_alias_maximum": 0,
                "receive_maximum": 65535,
            },
        ),
        Connack(reason_code=ReasonCode.BAD_AUTHENTICATION_METHOD, properties={"reason_string": "no"}),
        Publish(
            "p/5",
            b"body",
            1,
            False,
            False,
            9,
            {
                "payload_format_indicator": 1,
                "message_expiry_interval": 60,
                "topic_alias": 3,
                "response_topic": "r/t",
                "correlation_data": b"\x00cid",
                "subscription_identifier": [1, 268435455],
                "content_type": "json",
                "user_property": UP,
            },
        ),
        Puback(4, ReasonCode.NO_MATCHING_SUBSCRIBERS),
        Puback(4, ReasonCode.QUOTA_EXCEEDED, {"reason_string": "full", "user_property": UP}),
        Pubrec(5, 0, {"user_property": [("a", "b")]}),
        Pubrel(6, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND),
        Pubcomp(7, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND, {"reason_string": "gone"}),
        Subscribe(
            12,
            [SubscriptionRequest("a", 2, True, True, 2), SubscriptionRequest("$share/g/b", 1, False, True, 1)],
            {"subscription_identifier": [42], "user_property": UP},
        ),
        Suback(12, [ReasonCode.GRANTED_QOS_2, ReasonCode.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED], {"reason_string": "x"}),
        Unsubscribe(13, ["a"], {"user_property": UP}),
        Unsuback(13, [ReasonCode.NOT_AUTHORIZED], {"reason_string": "y"}),
        Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE),
        Disconnect(
            ReasonCode.SESSION_TAKEN_OVER,
            {"reason_string": "bye", "session_expiry_interval": 0, "server_reference": "s2"},
        ),
        Auth(),
        Auth(ReasonCode.CONTINUE_AUTHENTICATION, {"authentication_method": "SCRAM", "authentication_data": b"d"}),
        Auth(ReasonCode.REAUTHENTICATE, {"reason_string": "again"}),
    ]


def frame_one(wire: bytes) -> tuple[int, bytes]:
    framer = Framer()
    framer.feed(wire)
    frame = framer.next_frame()
    assert frame is not None and framer.buffered() == 0
    return frame


CASES = [(level, p) for level in (3, 4, 5) for p in samples(level)]


@pytest.mark.parametrize(
    ("level", "packet"), CASES, ids=[f"v{lv}-{i}-{type(p).__name__}" for i, (lv, p) in enumerate(CASES)]
)
def test_round_trip(level, packet):
    wire = encode(packet, level)
    fh, body = frame_one(wire)
    assert fh >> 4 == packet.packet_type
    decoded = decode_packet(fh, body, level)
    assert type(decoded) is type(packet)
    assert decoded == packet
    assert isinstance(decoded.properties, dict)
    assert encode(decoded, level) == wire


def test_every_packet_type_is_sampled():
    assert [int(t) for t in PacketType] == list(range(1, 16))
    assert PacketType.CONNECT == 1 and PacketType.AUTH == 15 and Publish.packet_type is PacketType.PUBLISH
    for level in (3, 4, 5):
        types = {p.packet_type for p in samples(level)}
        assert types == set(PacketType) - ({PacketType.AUTH} if level < 5 else set())


# a packet that allows each property, and a value for it
_PROP_HOME = {
    "payload_format_indicator": 1,
    "message_expiry_interval": 7,
    "content_type": "c",
    "response_topic": "r",
    "correlation_data": b"\x00\x01",
    "subscription_identifier": [300],
    "topic_alias": 9,
    "session_expiry_interval": 99,
    "authentication_method": "m",
    "authentication_data": b"d",
    "request_problem_information": 1,
    "request_response_information": 1,
    "receive_maximum": 1,
    "topic_alias_maximum": 2,
    "maximum_packet_size": 268435460,
    "assigned_client_identifier": "a",
    "server_keep_alive": 0,
    "response_information": "ri",
    "server_reference": "sr",
    "reason_string": "why",
    "maximum_qos": 0,
    "retain_available": 1,
    "wildcard_subscription_available": 0,
    "subscription_identifier_available": 1,
    "shared_subscription_available": 0,
    "will_delay_interval": 3,
    "user_property": [("a", "b"), ("a", "c")],
}
_PUBLISH_PROPS = {
    "payload_format_indicator",
    "message_expiry_interval",
    "content_type",
    "response_topic",
    "correlation_data",
    "subscription_identifier",
    "topic_alias",
}
_CONNECT_PROPS = {
    "session_expiry_interval",
    "authentication_method",
    "request_problem_information",
    "request_response_information",
    "receive_maximum",
    "topic_alias_maximum",
    "maximum_packet_size",
    "user_property",
}


def _packet_with(name, value):
    props = {name: value}
    if name in _PUBLISH_PROPS:
        return Publish("t", b"p", 1, packet_id=1, properties=props)
    if name in _CONNECT_PROPS:
        return Connect("c", 5, properties=props)
    if name == "will_delay_interval":
        return Connect("c", 5, will=Will("w", b"x", properties=props))
    return Connack(properties=props)


@pytest.mark.parametrize(("pid", "name"), sorted(PROPERTY_NAMES.items()))
def test_every_property_round_trips(pid, name):
    packet = _packet_with(name, _PROP_HOME[name])
    wire = encode(packet, 5)
    assert bytes((pid,)) in wire
    decoded = decode_packet(*frame_one(wire), 5)
    assert decoded == packet
    props = decoded.will.properties if name == "will_delay_interval" else decoded.properties
    assert props == {name: _PROP_HOME[name]}


def test_property_table_is_complete():
    assert len(PROPERTY_NAMES) == 27
    assert set(PROPERTY_NAMES.values()) == set(_PROP_HOME)
    assert PROPERTY_NAMES[0x26] == "user_property" and PROPERTY_NAMES[0x0B] == "subscription_identifier"


def test_v3_encoding_ignores_properties():
    with_props = Publish("t", b"p", 1, packet_id=2, properties={"message_expiry_interval": 5})
    assert encode(with_props, 4) == encode(Publish("t", b"p", 1, packet_id=2), 4) == b"\x32\x06\x00\x01t\x00\x02p"
    assert encode(Puback(1, 0x80, {"reason_string": "x"}), 4) == b"\x40\x02\x00\x01"
    assert encode(Disconnect(0x8E), 4) == b"\xe0\x00"


def test_subscription_identifier_int_is_accepted_on_encode():
    packet = Subscribe(1, [SubscriptionRequest("a")], {"subscription_identifier": 5})
    assert decode_packet(*frame_one(encode(packet, 5)), 5).properties == {"subscription_identifier": [5]}


# --- golden bytes -------------------------------------------------------------------------------

GOLDEN = [
    # captured from paho-mqtt 2.2 (client id "c1", keepalive 60, clean session)
    (4, b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x3c\x00\x02c1", Connect("c1", 4, True, 60)),
    (3, b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02c1", Connect("c1", 3, True, 60)),
    # paho v5: session expiry 3600, receive max 20, will qos 1 retained, user "user" / "pw"
    (
        5,
        b"\x10\x2c\x00\x04MQTT\x05\xee\x00\x1e\x08\x11\x00\x00\x0e\x10\x21\x00\x14\x00\x02c1"
        b"\x00\x00\x03w/t\x00\x03bye\x00\x04user\x00\x02pw",
        Connect(
            "c1",
            5,
            True,
            30,
            "user",
            b"pw",
            Will("w/t", b"bye", 1, True),
            {"session_expiry_interval": 3600, "receive_maximum": 20},
        ),
    ),
    (5, b"\x32\x0a\x00\x03a/b\x00\x05\x00hi", Publish("a/b", b"hi", 1, packet_id=5)),
    (5, b"\x82\x09\x00\x01\x00\x00\x03a/#\x1e", Subscribe(1, [SubscriptionRequest("a/#", 2, True, True, 1)])),
    (4, b"\xc0\x00", Pingreq()),
    (5, b"\xd0\x00", Pingresp()),
    (5, b"\x40\x02\x00\x01", Puback(1)),
    (5, b"\x50\x03\x00\x01\x10", Pubrec(1, ReasonCode.NO_MATCHING_SUBSCRIBERS)),
    (4, b"\x62\x02\x12\x34", Pubrel(0x1234)),
    (4, b"\x20\x02\x01\x00", Connack(True, 0)),
    (5, b"\x20\x03\x00\x86\x00", Connack(False, ReasonCode.BAD_USERNAME_OR_PASSWORD)),
    (4, b"\x90\x03\x00\x0a\x80", Suback(10, [0x80])),
    (4, b"\xb0\x02\x00\x0b", Unsuback(11)),
    (5, b"\xe0\x00", Disconnect()),
    (5, b"\xe0\x01\x8e", Disconnect(ReasonCode.SESSION_TAKEN_OVER)),
    (5, b"\xf0\x00", Auth()),
    # MQTT 3.1.1 section 1.5.3 example: "A\U0002A6D4" is 00 05 41 F0 AA 9B 94
    (4, b"\x30\x07\x00\x05\x41\xf0\xaa\x9b\x94", Publish("A\U0002a6d4")),
]


@pytest.mark.parametrize(
    ("level", "wire", "packet"), GOLDEN, ids=[f"{i}-{type(g[2]).__name__}" for i, g in enumerate(GOLDEN)]
)
def test_golden(level, wire, packet):
    assert encode(packet, level) == wire
    assert decode_packet(wire[0], wire[2:], level) == packet


def test_connack_v3_conversion():
    assert connack_v3_code(0) == 0
    expected = {
        0x84: 1,
        0x85: 2,
        0x88: 3,
        0x89: 3,
        0x8B: 3,
        0x9F: 3,
        0x86: 4,
        0x8C: 4,
        0x87: 5,
        0x8A: 5,
        0x80: 5,
        0x97: 5,
    }
    for v5, v3 in expected.items():
        assert connack_v3_code(v5) == v3
        assert encode(Connack(False, v5), 4) == bytes((0x20, 2, 0, v3))
    assert encode(Connack(True, 0), 3) == b"\x20\x02\x00\x00"  # 3.1 has no session present flag
    assert decode_packet(0x20, b"\x00\x04", 4).reason_code == ReasonCode.BAD_USERNAME_OR_PASSWORD


def test_suback_v3_failure_codes_collapse_to_0x80():
    assert encode(Suback(1, [1, ReasonCode.NOT_AUTHORIZED, 0x8F]), 4) == b"\x90\x05\x00\x01\x01\x80\x80"


def test_reason_codes_decode_to_enum_members():
    decoded = decode_packet(0x40, b"\x00\x01\x97", 5)
    assert decoded.reason_code is ReasonCode.QUOTA_EXCEEDED
    assert decode_packet(0x90, b"\x00\x01\x00\x01\x02\x80", 4).reason_codes == [0, 1, 2, 0x80]


def test_equality_compares_fields_and_type():
    assert Publish("a", b"1") == Publish("a", b"1")
    assert Publish("a", b"1") != Publish("a", b"2")
    assert Puback(1) != Pubrec(1)
    assert Puback(1) != Puback(1, 0x10)
    assert Connect().properties == {} and Connect().properties is not Connect().properties
    assert Publish("a").properties is not Publish("a").properties
    assert Unsuback(1).reason_codes is not Unsuback(1).reason_codes


def test_connect_protocol_name_defaults():
    assert Connect().protocol_name == "MQTT"
    assert Connect(protocol_level=5).protocol_name == "MQTT"
    assert Connect(protocol_level=3).protocol_name == "MQIsdp"


# --- encode_publish_parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", [3, 4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_parts_splice(level, qos):
    props = {"message_expiry_interval": 5, "user_property": UP} if level == 5 else {}
    template = Publish("fan/out", b"x" * 300, qos, True, False, None, props)
    head, tail = encode_publish_parts(template, level)
    assert encode_publish_parts(Publish("fan/out", b"x" * 300, qos, True, False, 777, props), level) == (head, tail)
    for pid in (1, 0x1234, 65535):
        spliced = head + pid.to_bytes(2, "big") + tail if qos else head + tail
        template.packet_id = pid if qos else None
        assert spliced == encode(template, level)
        decoded = decode_packet(*frame_one(spliced), level)
        assert decoded.packet_id == (pid if qos else None)
        assert decoded == template


def test_encode_rejects_bad_fields():
    with pytest.raises(ValueError):
        encode(Publish("t", b"", 1), 4)  # QoS 1 without packet id
    with pytest.raises(ValueError):
        encode(Publish("t", b"", 3, packet_id=1), 4)
    with pytest.raises(ValueError):
        encode(Auth(), 4)
    with pytest.raises(ValueError):
        encode(Publish("t", properties={"no_such_property": 1}), 5)
    with pytest.raises(TypeError):
        encode(object(), 4)


# --- fuzz: truncations and bit flips of valid packets --------------------------------------------


def test_fuzz_mutations_only_raise_mqtt_errors():
    rng = random.Random(20240601)
    frames = [(level, *frame_one(encode(p, level))) for level in (3, 4, 5) for p in samples(level)]
    decoded = failed = 0
    for _ in range(20000):
        level, fh, body = rng.choice(frames)
        mode = rng.random()
        if mode < 0.3 and body:
            body = body[: rng.randrange(len(body))]
        elif mode < 0.8 and body:
            mutable = bytearray(body)
            for _ in range(rng.randint(1, 3)):
                mutable[rng.randrange(len(mutable))] ^= 1 << rng.randrange(8)
            body = bytes(mutable)
        else:
            fh ^= 1 << rng.randrange(8)
        try:
            decode_packet(fh, body, rng.choice((level, 3, 4, 5)))
            decoded += 1
        except MQTTError as exc:
            assert isinstance(exc.reason_code, int) and exc.message
            failed += 1
    assert decoded > 1000 and failed > 5000  # both paths were exercised
