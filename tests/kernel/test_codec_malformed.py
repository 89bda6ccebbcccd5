"""Every decode failure raises the right MQTTError subclass and reason code."""

from __future__ import annotations

import copy
import pickle

import pytest

from ternmq.kernel.codec import (
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    ReasonCode,
    decode_packet,
)
from ternmq.kernel.codec.wire import encode_varint, read_varint

M, P = MalformedPacket, ProtocolError


def s(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_body(name="MQTT", level=4, flags=0x02, props=b"", rest=b"") -> bytes:
    return s(name) + bytes((level, flags)) + b"\x00\x3c" + props + (rest or s("cid"))


def raises(exc_type, fh, body, level, code=None):
    with pytest.raises(exc_type) as info:
        decode_packet(fh, body, level)
    assert type(info.value) is exc_type
    expected = code if code is not None else {M: 0x81, P: 0x82}[exc_type]
    assert info.value.reason_code == expected
    return info.value


def test_error_types():
    for cls, code in ((MalformedPacket, 0x81), (ProtocolError, 0x82), (PacketTooLarge, 0x95)):
        err = cls("boom")
        assert isinstance(err, MQTTError) and err.reason_code == code and err.message == "boom"
        assert "boom" in str(err)
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is cls and clone.message == "boom" and copy.copy(err).reason_code == code
    err = MQTTError(0x84, "old client")
    assert err.reason_code is ReasonCode.UNSUPPORTED_PROTOCOL_VERSION and err.message == "old client"
    assert MalformedPacket().message  # a default message


def test_reason_code_enum():
    assert len({int(rc) for rc in ReasonCode}) == 43
    assert ReasonCode.SUCCESS == ReasonCode.NORMAL_DISCONNECTION == ReasonCode.GRANTED_QOS_0 == 0
    assert ReasonCode.DISCONNECT_WITH_WILL_MESSAGE == 4 and ReasonCode.REAUTHENTICATE == 0x19
    assert ReasonCode.MALFORMED_PACKET == 0x81 and ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED == 0xA2
    assert ReasonCode.SERVER_MOVED == 0x9D and ReasonCode.TOPIC_ALIAS_INVALID == 0x94


# --- variable byte integers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_boundaries(value, wire):
    assert encode_varint(value) == wire
    assert read_varint(wire + b"rest", 0) == (value, len(wire))


def test_varint_errors():
    with pytest.raises(MalformedPacket):
        read_varint(b"\xff\xff\xff\xff\x01", 0)  # 5 bytes
    with pytest.raises(MalformedPacket):
        read_varint(b"\x80\x80", 0)  # truncated
    with pytest.raises(MalformedPacket):
        read_varint(b"\x80\x00", 0)  # not minimal
    for bad in (-1, 268435456):
        with pytest.raises(ValueError):
            encode_varint(bad)


# --- fixed header ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fh", "body"),
    [
        (0x00, b""),
        (0x01, b""),  # reserved packet type 0
        (0x60, b"\x00\x01"),
        (0x63, b"\x00\x01"),  # PUBREL flags must be 0010
        (0x80, b"\x00\x01" + s("a") + b"\x00"),  # SUBSCRIBE flags
        (0xA0, b"\x00\x01" + s("a")),  # UNSUBSCRIBE flags
        (0xC1, b""),
        (0xD8, b""),
        (0x42, b"\x00\x01"),
        (0x22, b"\x00\x00"),
        (0xE1, b""),
        (0x11, connect_body()),
    ],
)
def test_reserved_flags(fh, body):
    raises(M, fh, body, 4)


def test_v31_accepts_dup_on_pubrel_subscribe_unsubscribe():
    assert decode_packet(0x6A, b"\x00\x01", 3).packet_id == 1
    assert decode_packet(0x8A, b"\x00\x01" + s("a") + b"\x01", 3).subscriptions[0].qos == 1
    raises(M, 0x6A, b"\x00\x01", 4)


def test_auth_requires_v5():
    raises(M, 0xF0, b"", 4)
    raises(M, 0xF0, b"", 3)
    assert decode_packet(0xF0, b"", 5).reason_code == 0


# --- CONNECT -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "level"), [("MQTT", 3), ("MQIsdp", 4), ("MQTT", 6), ("MQTT", 2), ("mqtt", 4), ("FOO", 5)]
)
def test_connect_unsupported_protocol(name, level):
    err = raises(MQTTError, 0x10, connect_body(name, level), 4, code=0x84)
    assert err.reason_code is ReasonCode.UNSUPPORTED_PROTOCOL_VERSION


def test_connect_flags():
    raises(M, 0x10, connect_body(flags=0x03), 4)  # reserved bit 0
    raises(M, 0x10, connect_body(flags=0x02 | 0x08), 4)  # will QoS without will flag
    raises(M, 0x10, connect_body(flags=0x02 | 0x20), 4)  # will retain without will flag
    will = s("cid") + s("w/t") + s("payload")
    raises(M, 0x10, connect_body(flags=0x02 | 0x04 | 0x18, rest=will), 4)  # will QoS 3
    assert decode_packet(0x10, connect_body(flags=0x02 | 0x04 | 0x10, rest=will), 4).will.qos == 2


def test_connect_password_without_username():
    rest = s("cid") + s("secret")
    raises(M, 0x10, connect_body(flags=0x42, rest=rest), 4)
    raises(M, 0x10, connect_body("MQIsdp", 3, flags=0x42, rest=rest), 3)
    decoded = decode_packet(0x10, connect_body(level=5, flags=0x42, props=b"\x00", rest=rest), 5)
    assert decoded.username is None and decoded.password == b"secret"


def test_connect_trailing_and_truncated():
    raises(M, 0x10, connect_body() + b"\x00", 4)
    raises(M, 0x10, connect_body()[:-1], 4)
    raises(M, 0x10, connect_body(flags=0x82), 4)  # username flag, no username
    raises(M, 0x10, s("MQTT") + b"\x04", 4)
    raises(M, 0x10, b"\x00", 4)


def test_connect_protocol_level_argument_is_ignored():
    assert decode_packet(0x10, connect_body(level=5, props=b"\x00"), 4).protocol_level == 5
    assert decode_packet(0x10, connect_body(), 5).protocol_level == 4


def test_connect_auth_data_without_method():
    raises(P, 0x10, connect_body(level=5, props=b"\x04\x16\x00\x01x"), 5)


# --- strings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"\xff", b"a\x00b", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80"])
def test_bad_utf8_topic(raw):
    body = len(raw).to_bytes(2, "big") + raw + b"payload"
    raises(M, 0x30, body, 4)
    raises(M, 0x82, b"\x00\x01" + len(raw).to_bytes(2, "big") + raw + b"\x00", 4)
    raises(M, 0x10, connect_body(rest=len(raw).to_bytes(2, "big") + raw), 4)


# --- PUBLISH -------------------------------------------------------------------------------------


def test_publish_errors():
    raises(M, 0x36, s("t") + b"\x00\x01", 4)  # QoS 3
    raises(P, 0x32, s("t") + b"\x00\x00\x00", 5)  # packet id 0, v5
    raises(M, 0x32, s("t") + b"\x00\x00", 4)  # packet id 0, v3.1.1
    raises(M, 0x34, s("t") + b"\x00\x00", 3)
    raises(M, 0x38, s("t"), 4)  # DUP at QoS 0
    raises(M, 0x30, b"\x00\x05ab", 4)  # truncated topic
    raises(M, 0x30, b"\x00", 4)
    raises(M, 0x32, s("t") + b"\x00", 4)  # truncated packet id
    raises(M, 0x30, s("t"), 5)  # v5: property length missing
    raises(M, 0x30, s("t") + b"\x05\x01", 5)  # property length beyond packet


def test_publish_topic_is_not_checked_for_wildcards_or_emptiness():
    assert decode_packet(0x30, s("a/#") + b"x", 4).topic == "a/#"
    assert decode_packet(0x30, b"\x00\x00\x03\x23\x00\x01", 5).properties == {"topic_alias": 1}


# --- properties ----------------------------------------------------------------------------------


def pub5(props: bytes) -> bytes:
    return s("t") + encode_varint(len(props)) + props + b"payload"


def test_property_errors():
    raises(M, 0x30, pub5(b"\x04\x00"), 5)  # unknown id 0x04
    raises(M, 0x30, pub5(b"\x80\x01"), 5)  # multi-byte id
    raises(P, 0x30, pub5(b"\x11\x00\x00\x00\x01"), 5)  # session expiry in PUBLISH
    raises(P, 0x30, pub5(b"\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02"), 5)  # duplicate
    raises(P, 0x30, pub5(b"\x23\x00\x01\x23\x00\x01"), 5)  # duplicate topic alias
    raises(P, 0x30, pub5(b"\x0b\x00"), 5)  # subscription identifier 0
    raises(M, 0x30, pub5(b"\x0b\xff\xff\xff\xff\x01"), 5)  # 5-byte varint
    raises(M, 0x30, pub5(b"\x02\x00\x00"), 5)  # truncated u32
    raises(M, 0x30, pub5(b"\x03\x00\x05ab"), 5)  # string overruns
    raises(P, 0x10, connect_body(level=5, props=b"\x03\x21\x00\x00"), 5)  # receive maximum 0
    raises(P, 0x10, connect_body(level=5, props=b"\x05\x27\x00\x00\x00\x00"), 5)  # max packet size 0
    raises(P, 0x10, connect_body(level=5, props=b"\x02\x17\x02"), 5)  # request problem info 2
    raises(P, 0x20, b"\x00\x00\x02\x24\x02", 5)  # maximum QoS 2
    raises(P, 0x40, b"\x00\x01\x00\x02\x01\x01", 5)  # payload format in PUBACK
    raises(P, 0x82, b"\x00\x01\x04\x0b\x01\x0b\x02" + s("a") + b"\x00", 5)  # 2 subscription ids in SUBSCRIBE
    will = s("c") + b"\x05\x11\x00\x00\x00\x01" + s("w") + s("p")  # session expiry in Will Properties
    raises(P, 0x10, connect_body(level=5, flags=0x06, props=b"\x00", rest=will), 5)
    will = s("c") + b"\x05\x18\x00\x00\x00\x01" + s("w") + s("p")  # will delay: allowed there only
    assert decode_packet(0x10, connect_body(level=5, flags=0x06, props=b"\x00", rest=will), 5).will.properties == {
        "will_delay_interval": 1
    }
    raises(P, 0x10, connect_body(level=5, props=b"\x05\x18\x00\x00\x00\x01"), 5)


def test_repeatable_properties():
    props = b"\x0b\x01\x0b\xff\x7f\x26" + s("a") + s("1") + b"\x26" + s("a") + s("0")
    decoded = decode_packet(0x30, pub5(props), 5)
    assert decoded.properties == {"subscription_identifier": [1, 16383], "user_property": [("a", "1"), ("a", "0")]}
    assert decoded.payload == b"payload"


# --- acknowledgements ----------------------------------------------------------------------------


def test_ack_forms():
    assert decode_packet(0x40, b"\x00\x01\x10", 5).reason_code == 0x10  # no property length
    assert decode_packet(0x50, b"\x00\x01\x80\x00", 5).properties == {}
    raises(M, 0x40, b"\x00\x01\x00", 4)  # v3.1.1: exactly 2 bytes
    raises(M, 0x40, b"\x00", 5)
    raises(P, 0x40, b"\x00\x00", 5)  # packet id 0
    raises(M, 0x40, b"\x00\x00", 4)
    raises(P, 0x40, b"\x00\x01\x05", 5)  # not a PUBACK reason code
    raises(P, 0x62, b"\x00\x01\x10", 5)  # not a PUBREL reason code
    raises(M, 0x40, b"\x00\x01\x00\x00\xff", 5)  # trailing garbage
    raises(M, 0x20, b"\x00\x00\x00", 4)  # CONNACK v3.1.1 is 2 bytes
    raises(M, 0x20, b"\x02\x00", 4)  # reserved acknowledge flags
    raises(M, 0x20, b"\x00\x06", 4)  # reserved return code
    raises(P, 0x20, b"\x00\x10\x00", 5)  # not a CONNACK reason code
    raises(M, 0xB0, b"\x00\x01\x00", 4)  # UNSUBACK v3.1.1 has no payload
    raises(P, 0xB0, b"\x00\x01\x00", 5)  # v5 UNSUBACK without reason codes
    raises(P, 0xB0, b"\x00\x01\x00\x01", 5)  # 0x01 is not an UNSUBACK code
    raises(M, 0x90, b"\x00\x01\x03", 4)  # 3 is not a SUBACK return code
    raises(P, 0x90, b"\x00\x01\x00\x19", 5)
    raises(M, 0x90, b"\x00\x01", 4)  # no return codes


# --- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------------------------------------


def test_subscribe_errors():
    raises(P, 0x82, b"\x00\x01\x00", 5)  # no subscriptions
    raises(M, 0x82, b"\x00\x01", 4)
    raises(M, 0x82, b"\x00\x01\x00" + s("a") + b"\x40", 5)  # reserved bit 6
    raises(M, 0x82, b"\x00\x01\x00" + s("a") + b"\x80", 5)  # reserved bit 7
    raises(M, 0x82, b"\x00\x01" + s("a") + b"\x04", 4)  # no-local bit is reserved before v5
    raises(M, 0x82, b"\x00\x01" + s("a") + b"\x03", 4)  # QoS 3
    raises(M, 0x82, b"\x00\x01\x00" + s("a") + b"\x30", 5)  # retain handling 3
    raises(M, 0x82, b"\x00\x01" + s("a"), 4)  # options byte missing
    raises(M, 0x82, b"\x00\x00\x00" + s("a") + b"\x00", 5)  # packet id 0: malformed (0x81), as strict peers expect
    raises(M, 0x82, b"\x00\x00" + s("a") + b"\x00", 4)
    raises(M, 0xA2, b"\x00\x00\x00" + s("a"), 5)
    raises(M, 0xA2, b"\x00\x00" + s("a"), 4)
    raises(P, 0xA2, b"\x00\x01\x00", 5)  # no topic filters
    raises(M, 0xA2, b"\x00\x01", 4)
    raises(M, 0xA2, b"\x00\x01" + s("a") + b"\x00", 4)  # truncated second filter


def test_subscribe_options_decode():
    sub = decode_packet(0x82, b"\x00\x01\x00" + s("a") + b"\x2d", 5).subscriptions[0]
    assert (sub.qos, sub.no_local, sub.retain_as_published, sub.retain_handling) == (1, True, True, 2)


# --- PINGREQ / PINGRESP / DISCONNECT / AUTH ----------------------------------------------------------


def test_empty_packets_and_disconnect():
    raises(M, 0xC0, b"\x00", 4)
    raises(M, 0xD0, b"\x00", 5)
    raises(M, 0xE0, b"\x00", 4)  # v3.1.1 DISCONNECT has no body
    raises(P, 0xE0, b"\x84", 5)  # not a DISCONNECT reason code
    raises(M, 0xE0, b"\x00\x00\x00", 5)  # trailing garbage
    raises(P, 0xF0, b"\x01\x00", 5)  # not an AUTH reason code
    raises(P, 0xE0, b"\x00\x02\x12\x00", 5)  # assigned client id not allowed
    assert decode_packet(0xE0, b"\x04", 5).reason_code == ReasonCode.DISCONNECT_WITH_WILL_MESSAGE
    assert decode_packet(0xE0, b"", 5).reason_code == ReasonCode.NORMAL_DISCONNECTION


def test_decode_accepts_memoryview_and_bytearray():
    body = s("t") + b"\x00\x07payload"
    for view in (memoryview(body), bytearray(body)):
        decoded = decode_packet(0x32, view, 4)
        assert decoded.packet_id == 7 and decoded.payload == b"payload" and type(decoded.payload) is bytes
