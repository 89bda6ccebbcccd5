"""MQTT 5 end to end: request/response, forwarded properties, reason codes and reason
strings, server-initiated DISCONNECT, session expiry set at DISCONNECT."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.packettypes import PacketTypes

from ternmq.kernel.codec import Disconnect, Pingresp, Publish, Pubrec
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.testing import registered
from ternmq.kernel.values.types import deny

from helpers import connected, eventually, paho_props

# -- request / response ------------------------------------------------------------------------


async def test_request_response_information_gives_response_information_in_connack(broker, paho_client):
    asking = paho_client("rri-1", paho.MQTTv5)
    _, reason, props = await asking.connect(
        broker.port(), properties=paho_props(PacketTypes.CONNECT, RequestResponseInformation=1)
    )
    assert reason == 0
    assert isinstance(props.ResponseInformation, str) and props.ResponseInformation
    # [MQTT-3.1.2-28]: without the request the server must not send it.
    silent = paho_client("rri-0", paho.MQTTv5)
    _, reason, props = await silent.connect(broker.port())
    assert reason == 0 and not hasattr(props, "ResponseInformation")


async def test_response_topic_and_correlation_data_reach_the_responder_and_back(broker, paho_client):
    port = broker.port()
    requester = paho_client("req", paho.MQTTv5)
    await requester.connect(port)
    await requester.subscribe("reply/req", 1)
    responder = paho_client("resp", paho.MQTTv5)
    await responder.connect(port)
    await responder.subscribe("service/time", 1)

    await requester.publish(
        "service/time",
        b"what time?",
        1,
        properties=paho_props(PacketTypes.PUBLISH, ResponseTopic="reply/req", CorrelationData=b"\x00id-42\xff"),
    )
    request = await responder.receive()
    assert request.properties.ResponseTopic == "reply/req"
    assert request.properties.CorrelationData == b"\x00id-42\xff"

    await responder.publish(
        request.properties.ResponseTopic,
        b"noon",
        1,
        properties=paho_props(PacketTypes.PUBLISH, CorrelationData=request.properties.CorrelationData),
    )
    reply = await requester.receive()
    assert (reply.topic, reply.payload) == ("reply/req", b"noon")
    assert reply.properties.CorrelationData == b"\x00id-42\xff"


# -- forwarded properties ----------------------------------------------------------------------


async def test_user_properties_content_type_and_payload_format_pass_through_unchanged(broker, paho_client):
    user = [("z", "1"), ("a", "2"), ("z", "3"), ("ünï", "çødé"), ("empty", "")]
    sub = paho_client("up-sub", paho.MQTTv5)
    await sub.connect(broker.port())
    await sub.subscribe("up/t", 1)
    pub = paho_client("up-pub", paho.MQTTv5)
    await pub.connect(broker.port())
    await pub.publish(
        "up/t",
        b'{"x": 1}',
        1,
        properties=paho_props(
            PacketTypes.PUBLISH, UserProperty=user, ContentType="application/json", PayloadFormatIndicator=1
        ),
    )
    message = await sub.receive()
    assert message.properties.UserProperty == user  # order and duplicates kept
    assert message.properties.ContentType == "application/json"
    assert message.properties.PayloadFormatIndicator == 1


async def test_user_properties_are_forwarded_on_the_wire_in_order(broker):
    user = [("k", "v1"), ("k", "v2"), ("b", "x"), ("a", "y")]
    async with connected(broker.port(), "upw-sub") as sub:
        await sub.subscribe("upw/t", qos=1)
        async with connected(broker.port(), "upw-pub") as pub:
            await pub.publish(
                "upw/t",
                b"p",
                qos=1,
                properties={"user_property": user, "payload_format_indicator": 0, "content_type": "text/plain"},
            )
        message = await sub.receive()
    assert message.properties["user_property"] == user
    assert message.properties["payload_format_indicator"] == 0
    assert message.properties["content_type"] == "text/plain"


# -- reason codes and reason strings ----------------------------------------------------------


async def test_suback_refuses_an_invalid_filter_with_topic_filter_invalid(broker):
    async with connected(broker.port(), "sub-bad") as c:
        suback = await c.subscribe("good/t", "a/#/b", "x/+y", qos=1)
        assert suback.reason_codes == [1, 0x8F, 0x8F]
        assert await c.nothing_received()  # still connected: a ping is answered
        await c.ping()
        assert isinstance(await c.next_packet(), Pingresp)


async def test_unsuback_says_no_subscription_existed_for_an_unknown_filter(broker):
    async with connected(broker.port(), "unsub") as c:
        await c.subscribe("us/t", qos=1)
        unsuback = await c.unsubscribe("us/t", "never/subscribed", "us/t")
    assert unsuback.reason_codes == [0x00, 0x11, 0x11]


async def test_puback_and_pubrec_say_no_matching_subscribers(broker):
    async with connected(broker.port(), "nomatch") as c:
        assert (await c.publish("nobody/listens", b"x", qos=1)).reason_code == 0x10
        await c.send(Publish("nobody/listens", b"x", 2, packet_id=77))
        pubrec = await c.expect(Pubrec)
        assert (pubrec.packet_id, pubrec.reason_code) == (77, 0x10)
        await c.subscribe("nobody/listens")
        assert (await c.publish("nobody/listens", b"x", qos=1)).reason_code == 0x00


class DenyTopic:
    """auth_on_publish: refuse ``deny/...`` with 0x87 "nope"; no opinion on the rest."""

    @hookimpl
    def auth_on_publish(self, message: Any) -> Any:
        if message.topic.startswith("deny/"):
            return deny(0x87, "nope")
        return None


async def test_denied_publish_gets_the_plugin_reason_code_and_reason_string(broker):
    async with registered(broker, DenyTopic()), connected(broker.port(), "denied") as c:
        await c.subscribe("deny/#", "ok/#")
        puback = await c.publish("deny/t", b"x", qos=1)
        assert (puback.reason_code, puback.properties.get("reason_string")) == (0x87, "nope")
        await c.send(Publish("deny/t", b"x", 2, packet_id=9))
        pubrec = await c.expect(Pubrec)
        assert (pubrec.reason_code, pubrec.properties.get("reason_string")) == (0x87, "nope")
        assert await c.nothing_received()  # the refused messages were not routed
        await c.publish("ok/t", b"fine", qos=1)
        assert (await c.receive()).payload == b"fine"


async def test_denied_publish_has_no_reason_string_without_request_problem_information(broker):
    async with (
        registered(broker, DenyTopic()),
        connected(broker.port(), "denied-quiet", properties={"request_problem_information": 0}) as c,
    ):
        puback = await c.publish("deny/t", b"x", qos=1)
    # [MQTT-3.1.2-29]: no Reason String on a PUBACK when the client asked for none.
    assert puback.reason_code == 0x87 and "reason_string" not in puback.properties


async def test_denied_publish_reaches_a_paho_publisher_as_reason_code(broker, paho_client):
    acks: list[Any] = []
    pub = paho_client("denied-paho", paho.MQTTv5)
    pub.client.on_publish = lambda client, userdata, mid, reason_code, props: acks.append(reason_code)
    async with registered(broker, DenyTopic()):
        await pub.connect(broker.port())
        await pub.publish("deny/t", b"x", 1)
    assert [code.value for code in acks] == [0x87]


# -- server-initiated DISCONNECT -----------------------------------------------------------------


async def test_broker_disconnects_a_v5_client_with_the_given_reason_code(broker, paho_client):
    victim = paho_client("kick-me", paho.MQTTv5)
    await victim.connect(broker.port())
    assert broker.service.disconnect("kick-me", 0x98)
    assert await trio.to_thread.run_sync(victim.disconnected.wait, 5)
    assert victim.disconnect_reason.value == 0x98


async def test_broker_disconnect_packet_carries_the_reason_code(broker):
    async with connected(broker.port(), "kick-raw") as c:
        assert broker.service.disconnect("kick-raw", 0x98)
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x98
    # [MQTT-3.14.2-2]: a server never sends a Session Expiry Interval in DISCONNECT.
    assert "session_expiry_interval" not in disconnect.properties


# -- session expiry at DISCONNECT -------------------------------------------------------------------


async def test_session_expiry_set_at_disconnect_after_a_zero_one_is_a_protocol_error(broker):
    async with connected(broker.port(), "se-zero") as c:
        await c.disconnect(0, {"session_expiry_interval": 30})
        disconnect = await c.closed()
    assert isinstance(disconnect, Disconnect) and disconnect.reason_code == 0x82
    await eventually(lambda: "se-zero" not in broker.sessions, 2)  # the session still ends with the connection


async def test_session_expiry_lowered_to_zero_at_disconnect_ends_the_session(broker):
    async with connected(broker.port(), "se-drop", properties={"session_expiry_interval": 60}) as c:
        await c.subscribe("se/t", qos=1)
        await c.disconnect(0, {"session_expiry_interval": 0})
        assert await c.closed() is None  # a normal close, no DISCONNECT from the broker
    async with connected(broker.port(), "se-drop", clean_start=False, properties={"session_expiry_interval": 60}) as c:
        assert not c.connack.session_present
