"""Routing: who gets a message, at which QoS, with which flags, encoded once.

For each routed message the router looks the topic up in the subscription trie, merges
overlapping subscriptions of one client (one copy at the highest QoS, or one copy per
subscription when subscription identifiers ask for it), applies no-local and
retain-as-published, picks one member of each shared-subscription group, and hands
each delivery to its session. All deliveries of one message share a wire cache, so a
fan-out to a thousand subscribers encodes each distinct wire form once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..hooks.dispatch import PLUGIN_FAILURE
from ..values.types import Allow, Deny, Message, TopicSubscription
from .journal import MessageJournal
from .session import Delivered, Session, WireCache
from .topics import SubscriptionTrie, mounted_filter, unmounted

if TYPE_CHECKING:
    from ..hooks.dispatch import HookDispatcher


# What ``on_matched`` gets when the store failed to write the message (Router.route).
NOT_STORED = -1


class Router:
    """The subscription trie plus the delivery rules (see module docstring)."""

    def __init__(self, sessions: dict[str, Session], dispatcher: HookDispatcher) -> None:
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.journal = MessageJournal(dispatcher)
        self.trie: SubscriptionTrie[str, TopicSubscription] = SubscriptionTrie()
        self._shared_turn: dict[tuple[str, str], itertools.count[int]] = {}
        self.messages_routed = 0
        self.deliveries = 0
        self.drops = 0

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(self, session: Session, subscription: TopicSubscription) -> bool:
        """Add or replace a subscription; True if it is new for this session."""
        session.subscriptions[subscription.topic_filter] = subscription
        topic_filter = mounted_filter(session.mountpoint, subscription.topic_filter)
        return self.trie.add(topic_filter, session.client_id, subscription)

    def unsubscribe(self, session: Session, topic_filter: str) -> bool:
        """Remove a subscription; True if it existed."""
        session.subscriptions.pop(topic_filter, None)
        return self.trie.remove(mounted_filter(session.mountpoint, topic_filter), session.client_id)

    def remove_session(self, session: Session) -> None:
        """Forget every subscription of a session that ends."""
        self.trie.remove_key(session.client_id)
        session.subscriptions.clear()

    # -- routing -----------------------------------------------------------------------

    async def route(
        self,
        message: Message,
        origin_client_id: str | None,
        on_matched: Callable[[int], None] | None = None,
        shared_groups: frozenset[tuple[str, str]] | None = None,
    ) -> int:
        """Deliver ``message`` to every matching subscription; returns the count.

        ``on_matched`` is called with the number of matching subscribers once they are
        known and before any of them is handed the message: the publisher's PUBACK or
        PUBREC goes out before a copy reaches a subscriber on the same connection. Not
        when a store keeps the message (a QoS 1/2 message for a stored session, or a
        retained one): then it is called after the store's commit, and so after the
        copies (an acknowledged message is a written one), with ``NOT_STORED`` when the
        store failed to commit.

        Shared subscriptions: each matching group gets one copy, from one member. In a
        cluster the node that serves a group is the cluster plugin's choice
        (``cluster_shared_here``); a message forwarded from another node names the groups
        this node serves (``shared_groups``: (group, filter) pairs), and no other.
        """
        plain, shared = self.trie.match(message.topic)
        self.messages_routed += 1
        if not plain and not shared:
            if on_matched is not None:
                if self._kept(message, ()):  # the retained copy is written first
                    on_matched(0 if await self.journal.commit() else NOT_STORED)
                else:
                    on_matched(0)
            return 0
        targets = self._merge(plain, origin_client_id, message)
        if shared:
            here = "cluster_shared_here" in self.dispatcher.implemented and shared_groups is None
            for group_key, members in shared.items():
                if shared_groups is not None and group_key not in shared_groups:
                    continue  # another node serves it
                if here and not self.dispatcher.provide_now(
                    "cluster_shared_here", group=group_key[0], topic_filter=group_key[1], message=message
                ):
                    continue
                chosen = self._choose_shared(group_key, members, message.qos)
                if chosen is not None:
                    targets.append(chosen)
        dispatcher = self.dispatcher
        after_commit = None
        if on_matched is not None:
            if self._kept(message, targets):
                after_commit = on_matched
            else:
                on_matched(len(targets))
        wire_cache: WireCache = {}
        # In a mountpoint the topic is the one its clients see: one copy of the message
        # (and of its wire forms) per mountpoint.
        mounted_copies: dict[str, tuple[Message, WireCache]] | None = None
        sessions = self.sessions
        rewrite = "on_deliver" in dispatcher.implemented
        count = 0
        for client_id, qos, retain, sub_ids in targets:
            session = sessions.get(client_id)
            if session is None:
                continue
            base, cache = message, wire_cache
            if session.mountpoint:
                mounted_copies = mounted_copies or {}
                copy = mounted_copies.get(session.mountpoint)
                if copy is None:
                    unmounted_message = _with(message, topic=unmounted(session.mountpoint, message.topic))
                    copy = mounted_copies[session.mountpoint] = (unmounted_message, {})
                base, cache = copy
            out_message = base
            if rewrite and session.connection is not None:
                rewritten = await self.on_deliver(session, out_message, qos)
                if rewritten is None:
                    continue
                out_message = rewritten
            status = session.deliver(out_message, qos, retain, sub_ids, cache if out_message is base else None)
            if status.counted:
                count += 1  # delivered now or later: a matching subscriber (no PUBACK 0x10)
            if not status.quiet:
                await self.report(session, out_message, qos, status)
        self.deliveries += count
        if after_commit is not None:
            after_commit(len(targets) if await self.journal.commit() else NOT_STORED)
        return count

    def _kept(self, message: Message, targets: Sequence[tuple[str, int, bool, tuple[int, ...]]]) -> bool:
        """Whether a store keeps ``message``, so that its acknowledgement waits for the
        commit: a QoS 1/2 message that is retained, or goes at QoS > 0 to a session a
        store keeps."""
        if not message.qos or "store_commit" not in self.dispatcher.implemented:
            return False
        if message.retain:
            return True
        sessions = self.sessions
        for client_id, qos, _, _ in targets:
            if qos and (session := sessions.get(client_id)) is not None and session.journal is not None:
                return True
        return False

    def _merge(
        self, plain: list[tuple[str, TopicSubscription]], origin: str | None, message: Message
    ) -> list[tuple[str, int, bool, tuple[int, ...]]]:
        """One target per client (or per subscription where identifiers ask for it)."""
        targets: list[tuple[str, int, bool, tuple[int, ...]]] = []
        msg_qos = message.qos
        msg_retain = message.retain
        if len(plain) == 1:
            client_id, sub = plain[0]
            if not (sub.no_local and client_id == origin):
                sid = sub.subscription_identifier
                targets.append(
                    (client_id, min(msg_qos, sub.qos), msg_retain and sub.retain_as_published, (sid,) if sid else ())
                )
            return targets
        by_client: dict[str, list[TopicSubscription]] = {}
        for client_id, sub in plain:
            if sub.no_local and client_id == origin:
                continue
            by_client.setdefault(client_id, []).append(sub)
        for client_id, subs in by_client.items():
            if len(subs) == 1 or not any(s.subscription_identifier for s in subs):
                qos = min(msg_qos, max(s.qos for s in subs))
                retain = msg_retain and any(s.retain_as_published for s in subs)
                sid = subs[0].subscription_identifier if len(subs) == 1 else None
                targets.append((client_id, qos, retain, (sid,) if sid else ()))
            else:
                for sub in subs:
                    sid = sub.subscription_identifier
                    targets.append(
                        (
                            client_id,
                            min(msg_qos, sub.qos),
                            msg_retain and sub.retain_as_published,
                            (sid,) if sid else (),
                        )
                    )
        return targets

    def _choose_shared(
        self, group_key: tuple[str, str], members: list[tuple[str, TopicSubscription]], msg_qos: int
    ) -> tuple[str, int, bool, tuple[int, ...]] | None:
        """Round robin over the group, preferring members that are online."""
        turn = self._shared_turn.get(group_key)
        if turn is None:
            turn = self._shared_turn[group_key] = itertools.count()
        sessions = self.sessions
        online = [m for m in members if (s := sessions.get(m[0])) is not None and s.connection is not None]
        pool = online or members
        if not pool:
            return None
        client_id, sub = pool[next(turn) % len(pool)]
        sid = sub.subscription_identifier
        return (client_id, min(msg_qos, sub.qos), False, (sid,) if sid else ())

    async def deliver_retained(
        self, session: Session, subscription: TopicSubscription, messages: Iterable[Message]
    ) -> None:
        """Send retained messages to a new subscription (retain flag set, as the spec says)."""
        sid = subscription.subscription_identifier
        sub_ids = (sid,) if sid else ()
        # Offline: on_deliver runs over the queue when the client is back.
        rewrite = session.connection is not None and self.dispatcher.has("on_deliver")
        for message in messages:
            if message.expired():
                continue
            qos = min(message.qos, subscription.qos)
            out_message = message
            if session.mountpoint:
                out_message = _with(message, topic=unmounted(session.mountpoint, message.topic))
            if rewrite:
                rewritten = await self.on_deliver(session, out_message, qos)
                if rewritten is None:
                    continue
                out_message = rewritten
            status = session.deliver(out_message, qos, True, sub_ids, None)
            if not status.quiet:
                await self.report(session, out_message, qos, status)

    async def on_deliver(self, session: Session, message: Message, qos: int) -> Message | None:
        """Let ``on_deliver`` rewrite or drop one delivery; None means dropped."""
        connection = session.connection
        assert connection is not None
        client = connection.client_info
        delivered = message if message.qos == qos else _with(message, qos=qos)
        answer, plugin_name = await self.dispatcher.decide_with_plugin("on_deliver", client=client, message=delivered)
        if answer is None or answer is PLUGIN_FAILURE:
            return message  # a broken plugin must not swallow messages
        if isinstance(answer, Deny):
            await self.report(session, message, qos, Delivered.DROPPED_DENIED)
            return None
        if isinstance(answer, Allow) and answer.modifiers:
            modifiers = dict(answer.modifiers)
            changes: dict[str, Any] = {}
            if "topic" in modifiers:
                changes["topic"] = str(modifiers.pop("topic"))
            if "payload" in modifiers:
                changes["payload"] = bytes(modifiers.pop("payload"))
            if "properties" in modifiers:
                changes["properties"] = {**message.properties, **modifiers.pop("properties")}
            if modifiers:
                # Unknown modifiers: an error of the plugin (counted), and the message goes
                # out unchanged rather than half-rewritten.
                self.dispatcher.count_error(plugin_name or "", "on_deliver", f"unknown modifiers {sorted(modifiers)}")
                return message
            return _with(message, **changes)
        return message

    async def report(self, session: Session, message: Message, qos: int, status: Delivered) -> None:
        """Fire the hook an undelivered message deserves (none for a quiet ``status``)."""
        if status.quiet:
            return
        dispatcher = self.dispatcher
        if status is Delivered.QUEUED_OFFLINE:
            if dispatcher.has("on_offline_message"):
                await dispatcher.notify(
                    "on_offline_message",
                    client_id=session.client_id,
                    message=_with(message, qos=qos) if message.qos != qos else message,
                    mountpoint=session.mountpoint,
                )
            return
        self.drops += 1
        if dispatcher.has("on_message_drop"):
            await dispatcher.notify(
                "on_message_drop", client_id=session.client_id, message=message, reason=status.reason
            )


def _with(message: Message, **changes: Any) -> Message:
    """A copy of ``message`` with some fields changed (keeps ``created_at``)."""
    return attrs.evolve(message, **changes)
