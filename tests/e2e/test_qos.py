"""QoS 0/1/2 end to end: both directions, downgrade, packet identifiers, redelivery."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from ternmq.kernel.broker import Broker
from ternmq.kernel.codec import Puback, Pubcomp, Publish, Pubrec, Pubrel

from helpers import LEVELS, PAHO, connected, eventually, session_row, session_rows

# -- publisher -> broker ------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_qos0_publish_gets_no_acknowledgement_and_is_delivered(broker: Broker, level: int) -> None:
    async with connected(broker, "sub", level) as sub, connected(broker, "pub", level) as pub:
        await sub.subscribe("q/0", qos=2)
        assert await pub.publish("q/0", b"zero", qos=0) is None
        message = await sub.receive()
        assert (message.topic, message.payload, message.qos, message.packet_id) == ("q/0", b"zero", 0, None)
        assert await pub.nothing_received(0.2), "a QoS 0 publish must not be acknowledged"


@pytest.mark.parametrize("level", LEVELS)
async def test_qos1_publish_is_acknowledged_with_the_publishers_packet_id(broker: Broker, level: int) -> None:
    async with connected(broker, "pub", level) as pub:
        await pub.send(Publish("q/1", b"one", 1, False, False, 4242))
        puback = await pub.expect(Puback)
        assert puback.packet_id == 4242
        assert puback.reason_code in (0, 0x10)  # 0x10: no matching subscribers (v5)


@pytest.mark.parametrize("level", LEVELS)
async def test_qos2_publish_runs_pubrec_pubrel_pubcomp_with_one_packet_id(broker: Broker, level: int) -> None:
    async with connected(broker, "sub", level) as sub, connected(broker, "pub", level) as pub:
        await sub.subscribe("q/2", qos=2)
        await pub.send(Publish("q/2", b"two", 2, False, False, 777))
        pubrec = await pub.expect(Pubrec)
        assert (pubrec.packet_id, pubrec.reason_code) == (777, 0)
        await pub.send(Pubrel(777))
        pubcomp = await pub.expect(Pubcomp)
        assert (pubcomp.packet_id, pubcomp.reason_code) == (777, 0)
        message = await sub.receive()
        assert (message.payload, message.qos) == (b"two", 2)


@pytest.mark.parametrize("level", LEVELS)
async def test_qos2_duplicate_publish_before_pubrel_is_delivered_once(broker: Broker, level: int) -> None:
    async with connected(broker, "sub", level) as sub, connected(broker, "pub", level) as pub:
        await sub.subscribe("q/2", qos=2)
        await pub.send(Publish("q/2", b"once", 2, False, False, 9))
        assert (await pub.expect(Pubrec)).packet_id == 9
        await pub.send(Publish("q/2", b"once", 2, False, True, 9))  # resend with DUP
        assert (await pub.expect(Pubrec)).packet_id == 9
        await pub.send(Pubrel(9))
        assert (await pub.expect(Pubcomp)).packet_id == 9
        assert (await sub.receive()).payload == b"once"
        assert await sub.nothing_received(0.3), "a QoS 2 resend was routed twice"


@pytest.mark.parametrize("level", LEVELS)
async def test_qos2_publish_resent_after_publisher_reconnect_is_delivered_once(broker: Broker, level: int) -> None:
    async with connected(broker, "sub", level) as sub:
        await sub.subscribe("q/2", qos=2)
        async with connected(broker, "pub", level, clean_start=False) as pub:
            await pub.send(Publish("q/2", b"exactly-once", 2, False, False, 31))
            assert (await pub.expect(Pubrec)).packet_id == 31
        # the publisher lost its connection before PUBREL; it resends on its session
        async with connected(broker, "pub", level, clean_start=False) as pub:
            assert pub.connack.session_present  # type: ignore[attr-defined]
            await pub.send(Publish("q/2", b"exactly-once", 2, False, True, 31))
            assert (await pub.expect(Pubrec)).packet_id == 31
            await pub.send(Pubrel(31))
            pubcomp = await pub.expect(Pubcomp)
            assert (pubcomp.packet_id, pubcomp.reason_code) == (31, 0)
        assert (await sub.receive()).payload == b"exactly-once"
        assert await sub.nothing_received(0.3)


# -- broker -> subscriber -----------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_qos1_delivery_waits_for_puback_and_uses_distinct_packet_ids(broker: Broker, level: int) -> None:
    async with connected(broker, "sub", level, auto_ack=False) as sub, connected(broker, "pub", level) as pub:
        await sub.subscribe("q/1", qos=1)
        for n in range(3):
            await pub.publish("q/1", b"%d" % n, qos=1)
        received = [await sub.receive() for _ in range(3)]
        assert [m.payload for m in received] == [b"0", b"1", b"2"]
        ids = [m.packet_id for m in received]
        assert all(ids) and len(set(ids)) == 3, ids
        assert all(m.qos == 1 and not m.dup for m in received)
        assert session_row(broker, "sub")["inflight"] == 3
        for m in received:
            await sub.send(Puback(m.packet_id))
        await pub.publish("q/1", b"after", qos=1)
        assert (await sub.receive()).payload == b"after"
        # the three acknowledged ones left; "after" is not acknowledged yet
        await eventually(lambda: session_row(broker, "sub")["inflight"] == 1, 2)


@pytest.mark.parametrize("level", LEVELS)
async def test_qos2_delivery_runs_pubrec_pubrel_pubcomp(broker: Broker, level: int) -> None:
    async with connected(broker, "sub", level, auto_ack=False) as sub, connected(broker, "pub", level) as pub:
        await sub.subscribe("q/2", qos=2)
        await pub.publish("q/2", b"two", qos=2)
        message = await sub.receive()
        assert (message.qos, message.dup) == (2, False) and message.packet_id
        await sub.send(Pubrec(message.packet_id))
        pubrel = await sub.expect(Pubrel)
        assert pubrel.packet_id == message.packet_id and pubrel.reason_code == 0
        await sub.send(Pubcomp(message.packet_id))
        assert await sub.nothing_received(0.3)
        assert session_row(broker, "sub")["inflight"] == 0


async def test_v5_receive_maximum_holds_back_messages_until_acknowledged(broker: Broker) -> None:
    async with (
        connected(broker, "sub", 5, auto_ack=False, properties={"receive_maximum": 1}) as sub,
        connected(broker, "pub", 5) as pub,
    ):
        await sub.subscribe("q/1", qos=1)
        await pub.publish("q/1", b"first", qos=1)
        await pub.publish("q/1", b"second", qos=1)
        first = await sub.receive()
        assert first.payload == b"first"
        assert await sub.nothing_received(0.3), "more in flight than the client's receive maximum"
        await sub.send(Puback(first.packet_id))
        assert (await sub.receive()).payload == b"second"


@pytest.mark.parametrize(("pub_qos", "sub_qos"), [(p, s) for p in range(3) for s in range(3)])
async def test_delivery_qos_is_the_lower_of_publish_and_subscription_qos(
    broker: Broker, pub_qos: int, sub_qos: int
) -> None:
    async with connected(broker, "sub") as sub, connected(broker, "pub") as pub:
        suback = await sub.subscribe("down/grade", qos=sub_qos)
        assert suback.reason_codes == [sub_qos]
        await pub.publish("down/grade", b"m", qos=pub_qos)
        message = await sub.receive()
        assert message.qos == min(pub_qos, sub_qos)
        assert (message.packet_id is None) == (message.qos == 0)


async def test_one_message_reaches_subscribers_of_different_qos_each_at_its_own(broker: Broker) -> None:
    # One routed message is encoded once per distinct wire form: QoS 1 and QoS 2 copies
    # differ in the header, so they must not share an encoding.
    async with (
        connected(broker, "sub0") as sub0,
        connected(broker, "sub1") as sub1,
        connected(broker, "sub2") as sub2,
        connected(broker, "pub") as pub,
    ):
        for sub, qos in ((sub0, 0), (sub1, 1), (sub2, 2)):
            await sub.subscribe("mixed/qos", qos=qos)
        await pub.publish("mixed/qos", b"m", qos=2)
        for sub, qos in ((sub0, 0), (sub1, 1), (sub2, 2)):
            message = await sub.receive()
            assert (message.qos, message.payload) == (qos, b"m")


@pytest.mark.parametrize("protocol", PAHO)
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_paho_publishes_and_receives_at_each_qos(
    broker: Broker, paho_client: Any, protocol: int, qos: int
) -> None:
    sub = paho_client("paho-sub", protocol)
    pub = paho_client("paho-pub", protocol)
    await sub.connect(broker.port())
    await pub.connect(broker.port())
    codes = await sub.subscribe("paho/qos", qos=2)
    assert [int(c.value) if hasattr(c, "value") else int(c) for c in codes] == [2]
    await pub.publish("paho/qos", b"via paho", qos=qos)
    message = await sub.receive()
    assert (message.topic, message.payload, message.qos) == ("paho/qos", b"via paho", qos)
    await sub.disconnect()
    await pub.disconnect()


@pytest.mark.parametrize("protocol", PAHO)
async def test_paho_subscription_qos_downgrades_delivery(broker: Broker, paho_client: Any, protocol: int) -> None:
    sub = paho_client("paho-sub", protocol)
    pub = paho_client("paho-pub", protocol)
    await sub.connect(broker.port())
    await pub.connect(broker.port())
    await sub.subscribe("paho/down", qos=1)
    await pub.publish("paho/down", b"high", qos=2)
    message = await sub.receive()
    assert message.qos == 1
    await sub.disconnect()
    await pub.disconnect()


async def test_mosquitto_qos2_message_reaches_mosquitto_sub(broker: Broker, mosquitto: Any) -> None:
    port = str(broker.port())
    async with connected(broker, "waiter") as waiter:
        await waiter.subscribe("mosq/qos", qos=2)
        async with trio.open_nursery() as nursery:
            result: dict[str, Any] = {}

            async def sub() -> None:
                result["sub"] = await mosquitto(
                    "mosquitto_sub", "-p", port, "-q", "2", "-t", "mosq/qos", "-C", "1", "-W", "5", "-F", "%q %p"
                )

            nursery.start_soon(sub)
            # wait until mosquitto_sub's subscription is in place
            await eventually(
                lambda: any(r["subscriptions"] and r["client_id"] != "waiter" for r in session_rows(broker)), 5
            )
            await mosquitto("mosquitto_pub", "-p", port, "-q", "2", "-t", "mosq/qos", "-m", "hello")
        assert (await waiter.receive()).qos == 2
        assert result["sub"].stdout.decode().strip() == "2 hello"


# -- redelivery on a resumed session -------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_unacknowledged_qos1_messages_are_resent_with_dup_and_same_ids_on_resume(
    broker: Broker, level: int
) -> None:
    async with connected(broker, "pub", level) as pub:
        async with connected(broker, "sub", level, auto_ack=False, clean_start=False) as sub:
            await sub.subscribe("re/1", qos=1)
            for n in range(3):
                await pub.publish("re/1", b"m%d" % n, qos=1)
            first = [await sub.receive() for _ in range(3)]
            assert not any(m.dup for m in first)
        # closed without PUBACK or DISCONNECT
        async with connected(broker, "sub", level, auto_ack=False, clean_start=False) as sub:
            assert sub.connack.session_present  # type: ignore[attr-defined]
            again = [await sub.receive() for _ in range(3)]
            assert [(m.packet_id, m.payload) for m in again] == [(m.packet_id, m.payload) for m in first]
            assert all(m.dup and m.qos == 1 for m in again)
            await sub.send(Puback(again[0].packet_id))
            await sub.send(Puback(again[1].packet_id))
            assert await sub.nothing_received(0.2)
        async with connected(broker, "sub", level, auto_ack=False, clean_start=False) as sub:
            last = await sub.receive()
            assert (last.packet_id, last.payload, last.dup) == (first[2].packet_id, b"m2", True)
            await sub.send(Puback(last.packet_id))
            assert await sub.nothing_received(0.3), "an acknowledged message was resent"


@pytest.mark.parametrize("level", LEVELS)
async def test_unacknowledged_qos2_messages_are_resent_and_pubrel_follows_pubrec_on_resume(
    broker: Broker, level: int
) -> None:
    async with connected(broker, "pub", level) as pub:
        async with connected(broker, "sub", level, auto_ack=False, clean_start=False) as sub:
            await sub.subscribe("re/2", qos=2)
            await pub.publish("re/2", b"released", qos=2)
            await pub.publish("re/2", b"unreceived", qos=2)
            released = await sub.receive()
            unreceived = await sub.receive()
            await sub.send(Pubrec(released.packet_id))
            assert (await sub.expect(Pubrel)).packet_id == released.packet_id
            # no PUBCOMP for the first, no PUBREC for the second: connection lost
        async with connected(broker, "sub", level, auto_ack=False, clean_start=False) as sub:
            assert sub.connack.session_present  # type: ignore[attr-defined]
            first = await sub.next_packet()
            second = await sub.next_packet()
            assert isinstance(first, Pubrel) and first.packet_id == released.packet_id
            assert isinstance(second, Publish)
            assert (second.packet_id, second.payload, second.qos, second.dup) == (
                unreceived.packet_id,
                b"unreceived",
                2,
                True,
            )
            await sub.send(Pubcomp(released.packet_id))
            await sub.send(Pubrec(second.packet_id))
            assert (await sub.expect(Pubrel)).packet_id == second.packet_id
            await sub.send(Pubcomp(second.packet_id))
            assert await sub.nothing_received(0.3)
        async with connected(broker, "sub", level, auto_ack=False, clean_start=False) as sub:
            assert await sub.nothing_received(0.3), "a completed QoS 2 exchange was resent"
