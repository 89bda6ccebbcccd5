"""Unit tests of the router and the session (kernel/routing/router.py, session.py).

No broker, no socket, no network: a real HookDispatcher over a pluggy PluginManager with
the project's hookspecs, a session table, a Router, and plain objects standing in for
the connections (``AttachedConnection``) whose ``write`` appends bytes to a list. What
was written is decoded with the codec and asserted on as packets.
"""

from __future__ import annotations

import pluggy
import pytest
from standins import WrittenConnection

from ternmq.kernel import hookspecs
from ternmq.kernel.codec import ProtocolError, Publish, Pubrel
from ternmq.kernel.hooks.dispatch import HookDispatcher
from ternmq.kernel.hookspecs import hookimpl
from ternmq.kernel.routing.router import Router
from ternmq.kernel.routing.session import AttachedConnection, Delivered, Delivery, Session
from ternmq.kernel.values.types import Answer, ClientInfo, Message, TopicSubscription, allow, deny

# ----------------------------------------------------------------------------- stand-ins


class FakeConnection(WrittenConnection):
    """A connection as the routing layer sees it: ``write`` appends to ``written``."""

    def __init__(
        self,
        client_id: str,
        protocol_level: int = 5,
        *,
        receive_maximum: int = 65535,
        maximum_packet_size: int = 268_435_460,
        alias_maximum: int = 0,
        outbound_limit: int = 16 * 1_048_576,
    ) -> None:
        super().__init__(
            ClientInfo(client_id, protocol_level=protocol_level, listener="unit"),
            protocol_level,
            receive_maximum=receive_maximum,
            maximum_packet_size=maximum_packet_size,
            alias_maximum=alias_maximum,
            outbound_limit=outbound_limit,
        )

    def publishes(self) -> list[Publish]:
        found = self.packets()
        assert all(isinstance(p, Publish) for p in found), found
        return found


class Recorder:
    """A plugin recording the router's notifications."""

    def __init__(self) -> None:
        self.drops: list[tuple[str, str, str]] = []
        self.offline: list[tuple[str, str, int]] = []

    @hookimpl
    def on_message_drop(self, client_id: str, message: Message, reason: str) -> None:
        self.drops.append((client_id, message.topic, reason))

    @hookimpl
    def on_offline_message(self, client_id: str, message: Message) -> None:
        self.offline.append((client_id, message.topic, message.qos))


class DeliverPlugin:
    """An ``on_deliver`` plugin giving a fixed answer."""

    def __init__(self, answer: Answer | None) -> None:
        self.answer = answer
        self.seen: list[tuple[str, int]] = []

    @hookimpl
    def on_deliver(self, client: ClientInfo, message: Message) -> Answer | None:
        self.seen.append((client.client_id, message.qos))
        return self.answer


def make_router(*plugins: tuple[str, object]) -> Router:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    dispatcher = HookDispatcher(pm)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    dispatcher.rebuild()
    return Router({}, dispatcher)


def add_session(
    router: Router,
    client_id: str,
    *filters: str | TopicSubscription,
    online: bool = True,
    expiry: int | None = 0,
    max_inflight: int = 32,
    max_queued: int = 1000,
    conn: FakeConnection | None = None,
) -> tuple[Session, FakeConnection]:
    """A session (attached to a fake connection if ``online``) with subscriptions."""
    session = Session(
        client_id,
        username=None,
        protocol_level=5,
        expiry_interval=expiry,
        max_inflight=max_inflight,
        max_queued=max_queued,
    )
    router.sessions[client_id] = session
    if conn is None:
        conn = FakeConnection(client_id)
    if online:
        attached: AttachedConnection = conn  # mypy checks the stand-in fits the Protocol
        session.connection = attached
        conn.session = session
    for item in filters:
        subscription = item if isinstance(item, TopicSubscription) else TopicSubscription(item, 2)
        router.subscribe(session, subscription)
    return session, conn


# ----------------------------------------------------------------------------- QoS


async def test_qos0_message_reaches_a_matching_subscriber() -> None:
    router = make_router()
    _, conn = add_session(router, "sub", TopicSubscription("a/b", 0))
    count = await router.route(Message("a/b", b"hello", 0), "pub")
    assert count == 1
    [packet] = conn.publishes()
    assert (packet.topic, packet.payload, packet.qos, packet.packet_id) == ("a/b", b"hello", 0, None)
    assert router.messages_routed == 1 and router.deliveries == 1


@pytest.mark.parametrize("message_qos", [0, 1, 2])
@pytest.mark.parametrize("subscription_qos", [0, 1, 2])
async def test_delivered_qos_is_the_lower_of_message_and_subscription(message_qos: int, subscription_qos: int) -> None:
    router = make_router()
    session, conn = add_session(router, "sub", TopicSubscription("t", subscription_qos))
    await router.route(Message("t", b"x", message_qos), "pub")
    [packet] = conn.publishes()
    expected = min(message_qos, subscription_qos)
    assert packet.qos == expected
    if expected:
        assert packet.packet_id is not None
        assert session.inflight[packet.packet_id].qos == expected
    else:
        assert packet.packet_id is None and not session.inflight


async def test_qos1_delivery_stays_in_flight_until_puback() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t")
    await router.route(Message("t", b"x", 1), "pub")
    [packet] = conn.publishes()
    assert packet.qos == 1 and packet.packet_id in session.inflight
    delivery = session.acknowledge(packet.packet_id, 1)
    assert delivery is not None and delivery.message.payload == b"x"
    assert not session.inflight
    assert session.acknowledge(packet.packet_id, 1) is None  # a late duplicate is ignored


async def test_qos2_delivery_is_released_by_pubrec_and_ends_with_pubcomp() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t")
    await router.route(Message("t", b"x", 2), "pub")
    [packet] = conn.publishes()
    packet_id = packet.packet_id
    assert packet.qos == 2 and packet_id is not None
    with pytest.raises(ProtocolError):
        session.acknowledge(packet_id, 2)  # PUBCOMP before PUBREC
    with pytest.raises(ProtocolError):
        session.acknowledge(packet_id, 1)  # PUBACK for a QoS 2 message
    assert session.received(packet_id) is True
    assert session.inflight[packet_id].released
    assert session.received(packet_id + 1) is False  # unknown id: PUBREL 0x92 for the caller
    assert session.acknowledge(packet_id, 2) is not None
    assert not session.inflight


async def test_pubrec_for_a_qos1_message_is_a_protocol_error() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t")
    await router.route(Message("t", b"x", 1), "pub")
    [packet] = conn.publishes()
    assert packet.packet_id is not None
    with pytest.raises(ProtocolError):
        session.received(packet.packet_id)


async def test_refusing_pubrec_ends_the_qos2_exchange() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t")
    await router.route(Message("t", b"x", 2), "pub")
    [packet] = conn.publishes()
    assert packet.packet_id is not None
    assert session.received(packet.packet_id, refused=True) is True
    assert not session.inflight


# ----------------------------------------------------------------------------- matching


async def test_a_non_matching_filter_gets_nothing_and_on_matched_hears_zero() -> None:
    router = make_router()
    _, conn = add_session(router, "sub", "a/b")
    matched: list[int] = []
    count = await router.route(Message("a/c", b"x", 1), "pub", matched.append)
    assert count == 0 and matched == [0]
    assert conn.written == []


async def test_on_matched_is_called_with_the_number_of_targets_before_delivery() -> None:
    router = make_router()
    _, one = add_session(router, "one", "t")
    _, two = add_session(router, "two", "t")
    seen: list[tuple[int, int]] = []

    def on_matched(n: int) -> None:
        seen.append((n, len(one.written) + len(two.written)))

    assert await router.route(Message("t", b"x", 1), "pub", on_matched) == 2
    assert seen == [(2, 0)]


@pytest.mark.parametrize(
    ("topic", "matches"),
    [("a/b/c", True), ("a//c", True), ("a/b/c/d", False), ("a/c", False), ("b/b/c", False)],
)
async def test_plus_matches_exactly_one_level(topic: str, matches: bool) -> None:
    router = make_router()
    _, conn = add_session(router, "sub", "a/+/c")
    assert await router.route(Message(topic, b"x", 0), "pub") == int(matches)
    assert len(conn.written) == int(matches)


@pytest.mark.parametrize(
    ("topic", "matches"),
    [("a", True), ("a/b", True), ("a/b/c", True), ("b", False), ("ab", False), ("b/a", False)],
)
async def test_hash_matches_the_parent_and_every_level_below(topic: str, matches: bool) -> None:
    router = make_router()
    _, conn = add_session(router, "sub", "a/#")
    assert await router.route(Message(topic, b"x", 0), "pub") == int(matches)
    assert len(conn.written) == int(matches)


@pytest.mark.parametrize("topic_filter", ["#", "+/info", "+/+", "+/#"])
async def test_dollar_topics_are_not_matched_by_a_leading_wildcard(topic_filter: str) -> None:
    router = make_router()
    _, conn = add_session(router, "sub", topic_filter)
    assert await router.route(Message("$SYS/info", b"x", 0), "pub") == 0
    assert await router.route(Message("$app/info", b"x", 0), "pub") == 0
    assert conn.written == []
    assert await router.route(Message("plain/info", b"x", 0), "pub") == 1  # the filter does work


@pytest.mark.parametrize("topic_filter", ["$SYS/#", "$SYS/+", "$SYS/info"])
async def test_dollar_topics_are_matched_by_filters_naming_them(topic_filter: str) -> None:
    router = make_router()
    _, conn = add_session(router, "sub", topic_filter)
    assert await router.route(Message("$SYS/info", b"x", 0), "pub") == 1
    assert [p.topic for p in conn.publishes()] == ["$SYS/info"]


async def test_unsubscribe_and_remove_session_stop_deliveries() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "a", "b")
    assert router.unsubscribe(session, "a") is True
    assert router.unsubscribe(session, "a") is False
    assert await router.route(Message("a", b"x", 0), "pub") == 0
    assert await router.route(Message("b", b"x", 0), "pub") == 1
    router.remove_session(session)
    assert session.subscriptions == {}
    assert await router.route(Message("b", b"x", 0), "pub") == 0
    assert len(conn.written) == 1


async def test_overlapping_subscriptions_give_one_copy_at_the_highest_qos() -> None:
    router = make_router()
    _, conn = add_session(router, "sub", TopicSubscription("a/#", 0), TopicSubscription("a/+", 1))
    assert await router.route(Message("a/b", b"x", 2), "pub") == 1
    [packet] = conn.publishes()
    assert packet.qos == 1


async def test_overlapping_subscriptions_with_identifiers_give_one_copy_each() -> None:
    router = make_router()
    _, conn = add_session(
        router,
        "sub",
        TopicSubscription("a/#", 0, subscription_identifier=7),
        TopicSubscription("a/+", 1, subscription_identifier=9),
    )
    assert await router.route(Message("a/b", b"x", 1), "pub") == 2
    got = sorted((p.properties["subscription_identifier"], p.qos) for p in conn.publishes())
    assert got == [([7], 0), ([9], 1)]


async def test_a_v3_subscriber_gets_the_v3_encoding_without_properties() -> None:
    router = make_router()
    conn = FakeConnection("old", protocol_level=4)
    add_session(router, "old", "t", conn=conn)
    props = {"content_type": "text/plain", "user_property": [("k", "v")]}
    await router.route(Message("t", b"x", 1, properties=props), "pub")
    [packet] = conn.publishes()
    assert packet.properties == {} and packet.payload == b"x"


async def test_forwarded_properties_and_remaining_expiry_reach_a_v5_subscriber() -> None:
    router = make_router()
    _, conn = add_session(router, "sub", TopicSubscription("t", 1, subscription_identifier=3))
    props = {"content_type": "text/plain", "message_expiry_interval": 100, "topic_alias": 4}
    await router.route(Message("t", b"x", 1, properties=props), "pub")
    [packet] = conn.publishes()
    assert packet.properties["content_type"] == "text/plain"
    assert 99 <= packet.properties["message_expiry_interval"] <= 100
    assert packet.properties["subscription_identifier"] == [3]
    assert "topic_alias" not in packet.properties  # per hop, never forwarded


async def test_a_fan_out_gives_every_subscriber_the_same_bytes() -> None:
    router = make_router()
    conns = [add_session(router, f"s{i}", "t")[1] for i in range(3)]
    assert await router.route(Message("t", b"payload", 1), "pub") == 3
    # Each session's first packet id is 1: the wire cache gives all of them one encoding.
    assert conns[0].written == conns[1].written == conns[2].written
    assert len(conns[0].written) == 1


# ----------------------------------------------------------------------------- shared


async def test_a_shared_subscription_delivers_each_message_to_one_member() -> None:
    router = make_router()
    members = [add_session(router, f"m{i}", "$share/g/t/+")[1] for i in range(3)]
    _, plain = add_session(router, "plain", "t/+")
    for n in range(6):
        assert await router.route(Message("t/x", str(n).encode(), 1), "pub") == 2  # one member + plain
    counts = [len(m.publishes()) for m in members]
    assert counts == [2, 2, 2]  # round robin
    payloads = sorted(p.payload for m in members for p in m.publishes())
    assert payloads == [str(n).encode() for n in range(6)]  # each message went to exactly one
    assert len(plain.publishes()) == 6


async def test_two_share_groups_each_get_a_copy() -> None:
    router = make_router()
    a, _ = add_session(router, "a", "$share/one/t")
    b, _ = add_session(router, "b", "$share/two/t")
    assert await router.route(Message("t", b"x", 1), "pub") == 2
    assert len(a.inflight) == len(b.inflight) == 1


async def test_a_shared_subscription_prefers_online_members() -> None:
    router = make_router()
    offline, _ = add_session(router, "off", "$share/g/t", online=False, expiry=60)
    _, online = add_session(router, "on", "$share/g/t")
    for _ in range(4):
        await router.route(Message("t", b"x", 1), "pub")
    assert len(online.publishes()) == 4
    assert not offline.queue


async def test_a_shared_group_with_only_offline_members_queues_for_one() -> None:
    router = make_router()
    first, _ = add_session(router, "m1", "$share/g/t", online=False, expiry=60)
    second, _ = add_session(router, "m2", "$share/g/t", online=False, expiry=60)
    for _ in range(4):
        assert await router.route(Message("t", b"x", 1), "pub") == 1
    assert len(first.queue) + len(second.queue) == 4


async def test_a_shared_delivery_never_carries_the_retain_flag() -> None:
    router = make_router()
    sub = TopicSubscription("$share/g/t", 1, retain_as_published=True)
    _, conn = add_session(router, "m", sub)
    await router.route(Message("t", b"x", 1, retain=True), "pub")
    [packet] = conn.publishes()
    assert packet.retain is False


# ----------------------------------------------------------------------------- options


async def test_no_local_keeps_a_message_from_its_publisher() -> None:
    router = make_router()
    _, publisher = add_session(router, "me", TopicSubscription("t", 1, no_local=True))
    _, other = add_session(router, "other", TopicSubscription("t", 1))
    assert await router.route(Message("t", b"x", 1), "me") == 1
    assert publisher.written == []
    assert len(other.publishes()) == 1
    assert await router.route(Message("t", b"y", 1), "someone-else") == 2
    assert [p.payload for p in publisher.publishes()] == [b"y"]


async def test_no_local_as_the_only_subscription_delivers_nothing() -> None:
    router = make_router()
    _, publisher = add_session(router, "me", TopicSubscription("t", 1, no_local=True))
    matched: list[int] = []
    assert await router.route(Message("t", b"x", 1), "me", matched.append) == 0
    assert matched == [0] and publisher.written == []


async def test_without_no_local_the_publisher_gets_its_own_message() -> None:
    router = make_router()
    _, publisher = add_session(router, "me", TopicSubscription("t", 1))
    assert await router.route(Message("t", b"x", 1), "me") == 1
    assert len(publisher.publishes()) == 1


@pytest.mark.parametrize("retain_as_published", [True, False])
async def test_retain_as_published_decides_the_retain_flag(retain_as_published: bool) -> None:
    router = make_router()
    sub = TopicSubscription("t", 1, retain_as_published=retain_as_published)
    _, conn = add_session(router, "sub", sub)
    await router.route(Message("t", b"x", 1, retain=True), "pub")
    await router.route(Message("t", b"y", 1, retain=False), "pub")
    first, second = conn.publishes()
    assert first.retain is retain_as_published
    assert second.retain is False


async def test_retained_messages_for_a_new_subscription_carry_the_retain_flag() -> None:
    router = make_router()
    session, conn = add_session(router, "sub")
    sub = TopicSubscription("t/#", 1, subscription_identifier=5)
    router.subscribe(session, sub)
    expired = Message("t/old", b"gone", 1, True, {"message_expiry_interval": 1}, created_at=0.0)
    await router.deliver_retained(session, sub, [Message("t/a", b"x", 2, True), expired])
    [packet] = conn.publishes()
    assert (packet.topic, packet.retain, packet.qos) == ("t/a", True, 1)
    assert packet.properties["subscription_identifier"] == [5]


# ----------------------------------------------------------------------------- offline


async def test_an_offline_persistent_session_queues_qos1_and_qos2() -> None:
    recorder = Recorder()
    router = make_router(("recorder", recorder))
    session, conn = add_session(router, "sub", TopicSubscription("t", 2), online=False, expiry=60)
    assert await router.route(Message("t", b"1", 1), "pub") == 1
    assert await router.route(Message("t", b"2", 2), "pub") == 1
    assert [(d.message.payload, d.qos, d.hooked) for d in session.queue] == [(b"1", 1, False), (b"2", 2, False)]
    assert recorder.offline == [("sub", "t", 1), ("sub", "t", 2)]
    assert conn.written == [] and recorder.drops == []


async def test_an_offline_session_drops_qos0_without_a_hook() -> None:
    recorder = Recorder()
    router = make_router(("recorder", recorder))
    session, _ = add_session(router, "sub", "t", online=False, expiry=60)
    assert await router.route(Message("t", b"x", 0), "pub") == 0
    assert not session.queue
    assert recorder.drops == [] and recorder.offline == []


async def test_an_offline_session_that_is_not_persistent_queues_nothing() -> None:
    router = make_router()
    session, _ = add_session(router, "sub", "t", online=False, expiry=0)
    assert not session.persistent
    assert await router.route(Message("t", b"x", 1), "pub") == 0
    assert not session.queue


async def test_a_full_offline_queue_drops_with_queue_full() -> None:
    recorder = Recorder()
    router = make_router(("recorder", recorder))
    session, _ = add_session(router, "sub", "t", online=False, expiry=None, max_queued=2)
    for n in range(3):
        await router.route(Message("t", str(n).encode(), 1), "pub")
    assert [d.message.payload for d in session.queue] == [b"0", b"1"]
    assert recorder.drops == [("sub", "t", "queue_full")]
    assert router.drops == 1


async def test_a_queue_drains_in_order_once_the_session_is_back() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t", online=False, expiry=60)
    for n in range(3):
        await router.route(Message("t", str(n).encode(), 1), "pub")
    session.connection = conn
    assert list(session.drain()) == []
    assert [p.payload for p in conn.publishes()] == [b"0", b"1", b"2"]
    assert not session.queue and len(session.inflight) == 3


async def test_an_expired_queued_message_is_dropped_at_drain() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t", online=False, expiry=60)
    stale = Message("t", b"stale", 1, properties={"message_expiry_interval": 5}, created_at=0.0)
    await router.route(stale, "pub")
    await router.route(Message("t", b"fresh", 1), "pub")
    session.connection = conn
    failed = list(session.drain())
    assert [(d.message.payload, status) for d, status in failed] == [(b"stale", Delivered.DROPPED_EXPIRED)]
    assert [p.payload for p in conn.publishes()] == [b"fresh"]


# ----------------------------------------------------------------------------- flow control


async def test_the_inflight_window_queues_the_rest() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t", max_inflight=2)
    for n in range(5):
        assert await router.route(Message("t", str(n).encode(), 1), "pub") == 1
    assert [p.payload for p in conn.publishes()] == [b"0", b"1"]
    assert [d.message.payload for d in session.queue] == [b"2", b"3", b"4"]
    first_id = conn.publishes()[0].packet_id
    assert first_id is not None
    assert session.acknowledge(first_id, 1) is not None
    assert list(session.drain()) == []
    assert [p.payload for p in conn.publishes()] == [b"0", b"1", b"2"]
    assert len(session.inflight) == 2 and len(session.queue) == 2


async def test_the_client_receive_maximum_narrows_the_window() -> None:
    router = make_router()
    conn = FakeConnection("sub", receive_maximum=1)
    session, _ = add_session(router, "sub", "t", max_inflight=10, conn=conn)
    assert session.window(conn) == 1
    await router.route(Message("t", b"a", 2), "pub")
    await router.route(Message("t", b"b", 1), "pub")
    assert [p.payload for p in conn.publishes()] == [b"a"]
    assert len(session.queue) == 1


async def test_qos0_is_not_held_back_by_a_full_window() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t", max_inflight=1)
    await router.route(Message("t", b"a", 1), "pub")
    await router.route(Message("t", b"b", 1), "pub")
    await router.route(Message("t", b"c", 0), "pub")
    assert [p.payload for p in conn.publishes()] == [b"a", b"c"]
    assert [d.message.payload for d in session.queue] == [b"b"]


async def test_a_later_message_queues_behind_queued_ones_even_with_room() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t", online=False, expiry=60, max_inflight=5)
    await router.route(Message("t", b"old", 1), "pub")
    session.connection = conn
    await router.route(Message("t", b"new", 1), "pub")  # order is kept: behind "old"
    assert conn.written == []
    assert [d.message.payload for d in session.queue] == [b"old", b"new"]


async def test_a_full_online_queue_drops_with_queue_full() -> None:
    recorder = Recorder()
    router = make_router(("recorder", recorder))
    session, _ = add_session(router, "sub", "t", max_inflight=1, max_queued=1)
    for n in range(3):
        await router.route(Message("t", str(n).encode(), 1), "pub")
    assert len(session.inflight) == 1 and len(session.queue) == 1
    assert recorder.drops == [("sub", "t", "queue_full")]


async def test_outbound_limit_drops_qos0_for_a_slow_client() -> None:
    recorder = Recorder()
    router = make_router(("recorder", recorder))
    conn = FakeConnection("slow", outbound_limit=100)
    session, _ = add_session(router, "slow", "t", conn=conn)
    conn.outbound_bytes = 101  # the socket has not taken what was written before
    assert await router.route(Message("t", b"x", 0), "pub") == 0
    assert conn.written == []
    assert recorder.drops == [("slow", "t", "slow_consumer")]
    # QoS 1 is not dropped: it is sent (or queued by the window), never lost.
    assert await router.route(Message("t", b"y", 1), "pub") == 1
    assert [p.payload for p in conn.publishes()] == [b"y"]
    conn.outbound_bytes = 100  # at the limit, not above it
    assert await router.route(Message("t", b"z", 0), "pub") == 1
    assert len(session.inflight) == 1


async def test_a_message_larger_than_the_client_accepts_is_dropped() -> None:
    recorder = Recorder()
    router = make_router(("recorder", recorder))
    conn = FakeConnection("small", maximum_packet_size=64)
    session, _ = add_session(router, "small", "t", conn=conn)
    assert await router.route(Message("t", b"x" * 100, 1), "pub") == 0
    assert conn.written == [] and not session.inflight
    assert recorder.drops == [("small", "t", "max_packet_size_exceeded")]
    assert await router.route(Message("t", b"x" * 10, 1), "pub") == 1


# ----------------------------------------------------------------------------- packet ids


async def test_packet_ids_count_up_from_one() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t")
    for _ in range(3):
        await router.route(Message("t", b"x", 1), "pub")
    assert [p.packet_id for p in conn.publishes()] == [1, 2, 3]
    assert sorted(session.inflight) == [1, 2, 3]


async def test_packet_ids_wrap_and_skip_the_ones_in_flight() -> None:
    session, conn = add_session(make_router(), "sub")
    message = Message("t", b"", 1)
    # Id 1 stays in flight; 2..65535 are sent and acknowledged at once.
    assert session.deliver(message, 1, False, (), None) is Delivered.SENT
    for expected in range(2, 65536):
        assert session.deliver(message, 1, False, (), None) is Delivered.SENT
        assert session.acknowledge(expected, 1) is not None
    conn.written.clear()
    assert session.deliver(message, 1, False, (), None) is Delivered.SENT
    assert session.deliver(message, 1, False, (), None) is Delivered.SENT
    # After 65535 comes 1, in flight: skipped; 2 and 3 are free again.
    assert [p.packet_id for p in conn.publishes()] == [2, 3]
    assert sorted(session.inflight) == [1, 2, 3]


# ----------------------------------------------------------------------------- reconnect


async def test_resend_after_reconnect_sets_dup_and_resends_pubrel() -> None:
    router = make_router()
    session, conn = add_session(router, "sub", "t", expiry=60)
    await router.route(Message("t", b"one", 1), "pub")
    await router.route(Message("t", b"two", 2), "pub")
    await router.route(Message("t", b"three", 2), "pub")
    assert session.received(3) is True  # "three" is released: PUBREL goes again
    again = FakeConnection("sub")
    session.connection = again
    assert list(session.resend_inflight()) == []
    packets = again.packets()
    assert [type(p) for p in packets] == [Publish, Publish, Pubrel]
    assert [(p.payload, p.packet_id, p.dup) for p in packets[:2]] == [(b"one", 1, True), (b"two", 2, True)]
    assert packets[2].packet_id == 3


async def test_snapshot_holds_subscriptions_and_undelivered_messages() -> None:
    router = make_router()
    session, _ = add_session(router, "sub", TopicSubscription("t", 1), expiry=60, max_inflight=1)
    await router.route(Message("t", b"a", 1), "pub")
    await router.route(Message("t", b"b", 1), "pub")
    snapshot = session.snapshot()
    assert snapshot.subscriptions == (TopicSubscription("t", 1),)
    assert [m.payload for m in snapshot.queued] == [b"a", b"b"]


# ----------------------------------------------------------------------------- aliases


async def test_a_client_allowing_aliases_gets_the_alias_encoding() -> None:
    router = make_router()
    conn = FakeConnection("sub", alias_maximum=2)
    add_session(router, "sub", "t/#", conn=conn)
    for topic in ("t/a", "t/a", "t/b"):
        await router.route(Message(topic, b"x", 1), "pub")
    packets = conn.publishes()
    assert [(p.topic, p.properties.get("topic_alias")) for p in packets] == [("t/a", 1), ("", 1), ("t/b", 2)]


# ----------------------------------------------------------------------------- on_deliver


async def test_on_deliver_deny_drops_the_delivery_with_a_hook() -> None:
    recorder = Recorder()
    router = make_router(("deliver", DeliverPlugin(deny())), ("recorder", recorder))
    _, conn = add_session(router, "sub", "t")
    assert await router.route(Message("t", b"x", 1), "pub") == 0
    assert conn.written == []
    assert recorder.drops == [("sub", "t", "denied")]


async def test_on_deliver_allow_rewrites_the_delivery_and_sees_the_delivered_qos() -> None:
    plugin = DeliverPlugin(allow(topic="new/topic", payload=b"rewritten"))
    router = make_router(("deliver", plugin))
    _, conn = add_session(router, "sub", TopicSubscription("t", 1))
    _, other = add_session(router, "other", TopicSubscription("t", 2))
    assert await router.route(Message("t", b"x", 2), "pub") == 2
    [packet] = conn.publishes()
    assert (packet.topic, packet.payload, packet.qos) == ("new/topic", b"rewritten", 1)
    assert [(p.topic, p.qos) for p in other.publishes()] == [("new/topic", 2)]
    assert sorted(plugin.seen) == [("other", 2), ("sub", 1)]


async def test_on_deliver_unknown_modifiers_leave_the_message_unchanged_and_count_an_error() -> None:
    router = make_router(("deliver", DeliverPlugin(allow(payload=b"half", color="red"))))
    _, conn = add_session(router, "sub", "t")
    assert await router.route(Message("t", b"x", 1), "pub") == 1
    [packet] = conn.publishes()
    assert packet.payload == b"x"
    assert router.dispatcher.stats[("deliver", "on_deliver")].errors == 1


async def test_on_deliver_is_not_asked_for_an_offline_session() -> None:
    plugin = DeliverPlugin(deny())
    router = make_router(("deliver", plugin))
    session, _ = add_session(router, "sub", "t", online=False, expiry=60)
    assert await router.route(Message("t", b"x", 1), "pub") == 1
    assert plugin.seen == [] and len(session.queue) == 1


# ----------------------------------------------------------------------------- Delivery


def test_delivery_defaults() -> None:
    delivery = Delivery(Message("t"), 1, False)
    assert (delivery.sub_ids, delivery.released, delivery.hooked) == ((), False, True)


def test_delivered_outcomes_say_whether_they_count_and_whether_a_hook_fires() -> None:
    assert Delivered.SENT.counted and Delivered.SENT.quiet
    assert Delivered.QUEUED.counted and Delivered.QUEUED.quiet
    assert Delivered.QUEUED_OFFLINE.counted and not Delivered.QUEUED_OFFLINE.quiet
    assert not Delivered.DROPPED_OFFLINE_QOS0.counted and Delivered.DROPPED_OFFLINE_QOS0.quiet
    for member in (
        Delivered.DROPPED_QUEUE_FULL,
        Delivered.DROPPED_TOO_LARGE,
        Delivered.DROPPED_SLOW_CONSUMER,
        Delivered.DROPPED_EXPIRED,
        Delivered.DROPPED_DENIED,
    ):
        assert not member.counted and not member.quiet and member.reason
