"""SUBSCRIBE and UNSUBSCRIBE: validation, authorization, the trie, retained delivery."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..codec import (
    FIRST_FAILURE_CODE,
    PacketType,
    ReasonCode,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    legal_reason_code,
)
from ..routing.topics import TopicError, is_mount_topic, mounted_filter, parse_shared, validate_topic_filter
from ..values.types import Allow, ClientInfo, Deny, TopicSubscription

if TYPE_CHECKING:
    from ..routing.session import Session
    from .ports import BrokerCore, ClientConnection

log = logging.getLogger("ternmq.subscriptions")

# A refused subscription when nothing more precise applies (MQTT 3's SUBACK "failure").
_REFUSED = ReasonCode.UNSPECIFIED_ERROR


async def handle_subscribe(conn: ClientConnection, packet: Subscribe) -> None:
    broker = conn.broker
    session = conn.session
    assert session is not None
    limits = broker.settings.limits
    level = conn.protocol_level
    sub_ids = packet.properties.get("subscription_identifier") or [None]
    sub_id = sub_ids[0]
    codes: list[int | None] = []
    wanted: list[TopicSubscription] = []
    room = (
        limits.max_subscriptions_per_client - len(session.subscriptions)
        if limits.max_subscriptions_per_client
        else 1 << 30
    )
    for request in packet.subscriptions:
        try:
            validate_topic_filter(request.topic_filter, limits.max_topic_levels)
        except TopicError as exc:
            codes.append(exc.reason_code)
            continue
        if is_mount_topic(request.topic_filter):  # another mountpoint's topics: not from here
            codes.append(ReasonCode.NOT_AUTHORIZED)
            continue
        group, _ = parse_shared(request.topic_filter)
        if group is not None and request.no_local and level == 5:
            conn.protocol_error(ReasonCode.PROTOCOL_ERROR, "no local on a shared subscription")
            return
        if request.topic_filter not in session.subscriptions:
            if room <= 0:
                codes.append(ReasonCode.QUOTA_EXCEEDED)
                continue
            room -= 1
        codes.append(None)
        wanted.append(
            TopicSubscription(
                request.topic_filter,
                request.qos,
                request.no_local,
                request.retain_as_published,
                request.retain_handling,
                sub_id,
            )
        )

    granted = await _authorize(conn, wanted, packet.properties)
    results: list[TopicSubscription] = []
    fresh: list[tuple[TopicSubscription, bool]] = []
    granted_iter = iter(granted)
    for index, code in enumerate(codes):
        if code is not None:
            results.append(TopicSubscription(packet.subscriptions[index].topic_filter, code))
            continue
        outcome = next(granted_iter)
        if isinstance(outcome, int):
            codes[index] = outcome
            results.append(TopicSubscription(packet.subscriptions[index].topic_filter, outcome))
            continue
        is_new = broker.router.subscribe(session, outcome)
        codes[index] = outcome.qos
        results.append(outcome)
        fresh.append((outcome, is_new))
    if level < 5:
        # MQTT 3 SUBACK: a granted QoS or 0x80 ("failure").
        codes = [code if code is not None and code <= ReasonCode.GRANTED_QOS_2 else _REFUSED for code in codes]
    conn.send(
        Suback(packet.packet_id, [_REFUSED if c is None else legal_reason_code(PacketType.SUBACK, c) for c in codes])
    )
    await after_subscribe(broker, session, conn.client_info, results, fresh)


async def after_subscribe(
    broker: BrokerCore,
    session: Session,
    client: ClientInfo,
    results: list[TopicSubscription],
    fresh: list[tuple[TopicSubscription, bool]],
) -> None:
    """What follows granted subscriptions (a SUBSCRIBE's, or the service API's): store
    the session, fire on_subscribe, send retained messages as retain handling asks.

    ``fresh`` pairs each granted subscription with whether it is new to the session.
    """
    if fresh and session.persistent:
        await broker.lifecycle.save_session(session)
    if broker.dispatcher.has("on_subscribe"):
        await broker.dispatcher.notify("on_subscribe", client=client, subscriptions=tuple(results))
    if broker.retain_available:
        for subscription, is_new in fresh:
            if parse_shared(subscription.topic_filter)[0] is not None:
                continue  # shared subscriptions never get retained messages (MQTT 5 §4.8.2)
            if subscription.retain_handling == 2 or (subscription.retain_handling == 1 and not is_new):
                continue
            retained = await broker.dispatcher.provide(
                "retain_lookup", default=(), topic_filter=mounted_filter(session.mountpoint, subscription.topic_filter)
            )
            if retained:
                await broker.router.deliver_retained(session, subscription, retained)


async def _authorize(
    conn: ClientConnection, wanted: list[TopicSubscription], properties: dict[str, Any]
) -> list[TopicSubscription | int]:
    """One outcome per wanted subscription: the granted subscription or a reason code."""
    if not wanted:
        return []
    broker = conn.broker
    answer = None
    if broker.dispatcher.has("auth_on_subscribe"):
        answer = await broker.dispatcher.decide(
            "auth_on_subscribe", client=conn.client_info, subscriptions=tuple(wanted), properties=properties
        )
    if answer is None:
        return list(wanted) if broker.settings.no_match == "allow" else [ReasonCode.NOT_AUTHORIZED] * len(wanted)
    if isinstance(answer, Deny):
        return [answer.reason_code] * len(wanted)
    if not isinstance(answer, Allow):
        return [_REFUSED] * len(wanted)
    topics = answer.modifiers.get("topics")
    if topics is None:
        return list(wanted)
    return _rewritten(wanted, topics)


def _rewritten(wanted: list[TopicSubscription], topics: Sequence[Any]) -> list[TopicSubscription | int]:
    """Apply an ``allow(topics=[...])`` answer; a malformed one refuses everything."""
    if len(topics) != len(wanted):
        log.error("auth_on_subscribe returned %d topics for %d", len(topics), len(wanted))
        return [_REFUSED] * len(wanted)
    outcomes: list[TopicSubscription | int] = []
    for original, entry in zip(wanted, topics, strict=True):  # lengths checked above
        if isinstance(entry, TopicSubscription):
            try:
                validate_topic_filter(entry.topic_filter)
            except TopicError:
                return [_REFUSED] * len(wanted)
            outcomes.append(entry)
        elif isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], int):
            topic_filter, value = entry
            if value >= FIRST_FAILURE_CODE:
                outcomes.append(value)
            elif value in (0, 1, 2):
                outcomes.append(
                    TopicSubscription(
                        str(topic_filter),
                        value,
                        original.no_local,
                        original.retain_as_published,
                        original.retain_handling,
                        original.subscription_identifier,
                    )
                )
            else:
                return [_REFUSED] * len(wanted)
        else:
            log.error("auth_on_subscribe: bad topics entry %r", entry)
            return [_REFUSED] * len(wanted)
    return outcomes


async def handle_unsubscribe(conn: ClientConnection, packet: Unsubscribe) -> None:
    broker = conn.broker
    session = conn.session
    assert session is not None
    filters = list(packet.topic_filters)
    if broker.dispatcher.has("auth_on_unsubscribe"):
        answer = await broker.dispatcher.decide(
            "auth_on_unsubscribe", client=conn.client_info, topic_filters=tuple(filters), properties=packet.properties
        )
        if isinstance(answer, Deny):
            code = legal_reason_code(PacketType.UNSUBACK, answer.reason_code)
            conn.send(Unsuback(packet.packet_id, [code] * len(filters)))
            return
        if isinstance(answer, Allow) and "topics" in answer.modifiers:
            rewritten = [str(t) for t in answer.modifiers["topics"]]
            for topic_filter in rewritten:
                broker.router.unsubscribe(session, topic_filter)
            conn.send(Unsuback(packet.packet_id, [ReasonCode.SUCCESS] * len(filters)))
            await after_unsubscribe(broker, session, conn.client_info, rewritten)
            return
    codes: list[int] = []
    for topic_filter in filters:
        existed = broker.router.unsubscribe(session, topic_filter)
        codes.append(ReasonCode.SUCCESS if existed else ReasonCode.NO_SUBSCRIPTION_EXISTED)
    conn.send(Unsuback(packet.packet_id, codes))
    await after_unsubscribe(broker, session, conn.client_info, filters)


async def after_unsubscribe(broker: BrokerCore, session: Session, client: ClientInfo, filters: list[str]) -> None:
    """What follows removed subscriptions: store the session, fire on_unsubscribe."""
    if session.persistent:
        await broker.lifecycle.save_session(session)
    if broker.dispatcher.has("on_unsubscribe"):
        await broker.dispatcher.notify("on_unsubscribe", client=client, topic_filters=tuple(filters))
