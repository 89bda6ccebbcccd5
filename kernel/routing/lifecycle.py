"""Session lifecycle: attach at CONNECT, detach at close, wills, expiry, the store.

One object that owns the session table (``sessions``, shared with the router, which
reads it) and what happens to a session between connections: the will and expiry
timers and the session store's hooks. The broker builds it from its router,
dispatcher, scheduler, counters and publisher (which publishes wills).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import attrs
import trio

from ..codec import ReasonCode
from ..values.counters import Counters
from ..values.types import ClientInfo, Message, SessionSnapshot
from .journal import session_entries
from .session import AttachedConnection, Delivery, Session

if TYPE_CHECKING:
    from ..hooks.dispatch import HookDispatcher
    from ..values.config import Limits
    from .publisher import Publisher
    from .router import Router
    from .scheduler import Scheduler

log = logging.getLogger("ternmq.broker")

# How long a takeover waits for the old connection to finish its teardown.
TAKEOVER_WAIT = 5.0


class SessionLifecycle:
    """Session attach/detach, wills and expiry (module docstring).

    :param sessions: the session table, by client id (the router reads the same dict).
    """

    def __init__(
        self,
        sessions: dict[str, Session],
        router: Router,
        dispatcher: HookDispatcher,
        scheduler: Scheduler,
        counters: Counters,
        publisher: Publisher,
    ) -> None:
        self.sessions = sessions
        self.router = router
        self.dispatcher = dispatcher
        self.scheduler = scheduler
        self.counters = counters
        self.publisher = publisher

    async def restore_sessions(self, limits: Limits) -> None:
        """Load the session store's sessions (at start), with today's in-flight and
        queue limits (``restore_session``)."""
        snapshots = await self.dispatcher.provide("session_store_load_all", default=())
        for snapshot in snapshots:
            self.restore_session(snapshot, limits)
        if snapshots:
            log.info("restored %d sessions from the session store", len(snapshots))

    def restore_session(self, snapshot: SessionSnapshot, limits: Limits, *, stored: bool = True) -> bool:
        """A session the store keeps for this node (not yet, without ``stored``: the
        caller gives it to the store), made this node's, offline: its
        subscriptions, its messages where they were, its expiry running, and the will
        owed by a connection that ended without DISCONNECT (the broker, or the node that
        held it, stopped). False, with nothing changed, when there is a session already."""
        if snapshot.client_id in self.sessions:
            return False
        journal = self.router.journal
        session = self._session_from(snapshot, limits)
        if stored:
            session.stored = True
            if journal.active:
                session.journal = journal
        for entry in snapshot.messages:
            journal.restore(session, entry)
        # Saved while its client was connected: the client left when the broker did.
        session.disconnected_at = snapshot.disconnected_at or time.time()
        if snapshot.will is not None:
            self._owe_restored_will(session, snapshot.will)
        self._schedule_expiry(session)
        return True

    async def adopt_session(self, snapshot: SessionSnapshot, limits: Limits) -> bool:
        """A session another node held, handed over for its client connecting here (a
        takeover across a cluster): made this node's, to be resumed by the connection
        (its subscriptions, its messages queued), and given to the store at once (what
        it holds was acknowledged on the other node). False, with nothing changed, when
        this node has a session of that client id already."""
        if snapshot.client_id in self.sessions:
            return False
        session = self._session_from(snapshot, limits)
        for entry in snapshot.messages:  # where they were: in flight under their packet ids
            self.router.journal.restore(session, entry)
        session.disconnected_at = time.time()
        if session.persistent:
            await self.save_session(session)
        return True

    async def hand_over(
        self, client_id: str, *, clean_start: bool = False, deadline: float = math.inf
    ) -> SessionSnapshot | None:
        """The client connected to another node of the cluster: its session here ends.
        Its connection, if any, is closed with 0x8E (session taken over, as a takeover
        here); a persistent session comes back as a snapshot with its messages (in flight
        and queued, as ``messages`` entries: their QoS, flags and packet ids kept) for
        the other node to resume, and is forgotten here (and by a store). A will waiting
        for its delay is published when the client came back with ``clean_start`` (the
        session ends), and dropped otherwise. None when there is no session, or a clean
        one; and, with the session kept here, when its connection closed only after
        ``deadline`` (trio's clock): the other node no longer waits for it."""
        session = await self._taken_over(client_id)
        if session is None or trio.current_time() > deadline:
            return None
        await self._end_will_delay(session, publish_now=clean_start)
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
            session.expiry_timer = None
        snapshot = attrs.evolve(session.snapshot(with_queued=False), will=None, messages=session_entries(session))
        await self.end_session(session)
        return snapshot if snapshot.expiry_interval != 0 else None

    async def _taken_over(self, client_id: str) -> Session | None:
        """``client_id``'s session once its live connection, if any, is closed with 0x8E
        (session taken over) and gone; None when it has none (then, or after)."""
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            old = session.connection
            old.kick(ReasonCode.SESSION_TAKEN_OVER, "taken_over")
            with trio.move_on_after(TAKEOVER_WAIT):
                await old.closed.wait()
            session = self.sessions.get(client_id)
        return session

    def _session_from(self, snapshot: SessionSnapshot, limits: Limits) -> Session:
        """A session of this node from a snapshot: its subscriptions routed, its plain
        queued messages queued, with today's in-flight and queue limits."""
        session = self._new_session(
            snapshot.client_id,
            snapshot.username,
            snapshot.protocol_level,
            snapshot.expiry_interval,
            limits.max_inflight,
            limits.max_queued_messages,
            snapshot.mountpoint,
        )
        for subscription in snapshot.subscriptions:
            self.router.subscribe(session, subscription)
        for message in snapshot.queued:
            session.queue.append(Delivery(message, message.qos, message.retain, hooked=False))
        session.created_at = snapshot.created_at or session.created_at
        return session

    # -- sessions ----------------------------------------------------------------------

    def _new_session(
        self,
        client_id: str,
        username: str | None,
        level: int,
        expiry: int | None,
        max_inflight: int,
        max_queued: int,
        mountpoint: str,
    ) -> Session:
        session = Session(
            client_id,
            username=username,
            protocol_level=level,
            expiry_interval=expiry,
            max_inflight=max_inflight,
            max_queued=max_queued,
            mountpoint=mountpoint,
        )
        self.sessions[client_id] = session
        return session

    async def attach_session(
        self,
        conn: AttachedConnection,
        client_id: str,
        *,
        clean_start: bool,
        expiry_interval: int | None,
        username: str | None,
        max_inflight: int,
        max_queued: int,
    ) -> tuple[Session, bool]:
        """Take over any live connection of ``client_id``, then resume or create its session."""
        session = await self._taken_over(client_id)
        # Client ids are the broker's, not a mountpoint's: a client that comes back in
        # another mountpoint starts a new session there (its subscriptions were routed in
        # the old one).
        clean_start = clean_start or (session is not None and session.mountpoint != conn.client_info.mountpoint)
        if session is not None:
            # A new connection before the will delay passed: the will is not sent,
            # unless the session ends now (clean start), which also ends the delay.
            await self._end_will_delay(session, publish_now=clean_start)
            if session.expiry_timer is not None:
                session.expiry_timer.cancel()
                session.expiry_timer = None
        present = session is not None and not clean_start
        if session is not None and clean_start:
            await self.end_session(session)
            session = None
        if session is None:
            session = self.attach_new_session(
                conn,
                client_id,
                expiry_interval=expiry_interval,
                username=username,
                max_inflight=max_inflight,
                max_queued=max_queued,
            )
            return session, present
        session.username = username
        session.protocol_level = conn.protocol_level
        session.expiry_interval = expiry_interval
        session.max_inflight = max_inflight
        session.max_queued = max_queued
        session.connection = conn
        session.connected_at = time.time()
        session.disconnected_at = None
        self.counters.connections_accepted += 1
        return session, present

    def attach_new_session(
        self,
        conn: AttachedConnection,
        client_id: str,
        *,
        expiry_interval: int | None,
        username: str | None,
        max_inflight: int,
        max_queued: int,
    ) -> Session:
        """A new session for ``client_id``, which has none, attached to ``conn``."""
        session = self._new_session(
            client_id,
            username,
            conn.protocol_level,
            expiry_interval,
            max_inflight,
            max_queued,
            conn.client_info.mountpoint,
        )
        session.connection = conn
        session.connected_at = session.created_at
        self.counters.connections_accepted += 1
        return session

    async def session_online(self, conn: AttachedConnection, session: Session) -> None:
        """After CONNACK: resend what is in flight, drain the queue, fire wakeup."""
        # A new session has nothing in flight and nothing queued: skip the generators.
        if session.inflight:
            for delivery, status in list(session.resend_inflight()):
                await self.router.report(session, delivery.message, delivery.qos, status)
        if session.queue:
            if self.dispatcher.has("on_deliver"):
                await self._deliver_hook_on_offline_queue(session)
            await self.drain(session)
        if conn.will is not None and session.persistent and self.dispatcher.has("session_store_save"):
            await self.save_session(session)  # a crash of the broker owes this will
        if self.dispatcher.has("on_client_wakeup"):
            await self.dispatcher.notify("on_client_wakeup", client=conn.client_info)

    async def _deliver_hook_on_offline_queue(self, session: Session) -> None:
        """Run on_deliver over messages queued while offline (rewrite or drop them)."""
        kept = []
        for delivery in list(session.queue):
            if not delivery.hooked:
                message = await self.router.on_deliver(session, delivery.message, delivery.qos)
                if message is None:
                    session.forget(delivery)
                    continue  # dropped by the plugin (on_message_drop already fired)
                if message is not delivery.message:
                    delivery.message = message
                    if session.journal is not None:  # rewritten: the store keeps the new one
                        session.journal.save(session.client_id, delivery, "queued")
                delivery.hooked = True
            kept.append(delivery)
        session.queue.clear()
        session.queue.extend(kept)

    async def drain(self, session: Session) -> None:
        for delivery, status in list(session.drain()):
            await self.router.report(session, delivery.message, delivery.qos, status)

    def detach_at_once(self, conn: AttachedConnection) -> bool:
        """:meth:`connection_closed` for the common close, which awaits nothing: no will,
        no hook to call, no session store to update. False, with nothing changed, when
        there is something to await: then ``connection_closed`` must run (shielded).

        Why: the caller needs no cancel scope then, and on the connect+disconnect path a
        shielded scope costs more than the whole detach (about 7 µs of 100, measured).
        """
        session = conn.session
        if session is None or session.connection is not conn:
            return True
        if conn.will is not None:
            return False
        implemented = self.dispatcher.implemented
        persistent = session.persistent
        if persistent:
            if "session_store_save" in implemented or "on_client_offline" in implemented:
                return False
        elif session.stored or "on_client_gone" in implemented:
            return False
        session.connection = None
        if persistent:
            session.disconnected_at = time.time()
            self._schedule_expiry(session)  # save_session would save nothing
        else:
            self.forget_session(session)  # all of end_session when nothing is stored
        return True

    async def connection_closed(self, conn: AttachedConnection) -> None:
        """Detach a closed connection from its session: will, offline or gone, hooks."""
        if self.detach_at_once(conn):
            return
        session = conn.session
        assert session is not None  # detach_at_once handled the other cases
        session.connection = None
        session.disconnected_at = time.time()
        if self.sessions.get(session.client_id) is not session:
            return  # it ended while its connection closed (handed over): nothing to keep
        will = conn.will
        if will is not None:
            if self._owe_will(session, will, conn.client_info, conn.protocol_level):
                await self._publish_will(session, will, conn.client_info)
        reason = conn.disconnect_reason
        if session.persistent:
            self._schedule_expiry(session)
            await self.save_session(session)
            if self.dispatcher.has("on_client_offline"):
                await self.dispatcher.notify("on_client_offline", client=conn.client_info, reason=reason)
        else:
            await self.end_session(session)
            if self.dispatcher.has("on_client_gone"):
                await self.dispatcher.notify("on_client_gone", client=conn.client_info, reason=reason)

    def _owe_will(self, session: Session, will: Message, client: ClientInfo, level: int) -> bool:
        """A connection of ``session`` ended without DISCONNECT: start the will's delay
        (MQTT 5, capped by the session expiry); True when it is due now instead."""
        delay = will.properties.get("will_delay_interval", 0) if level == 5 else 0
        if session.expiry_interval is not None:
            delay = min(delay, session.expiry_interval)
        if delay <= 0:
            return True
        session.delayed_will = will
        session.will_timer = self.scheduler.call_later(delay, lambda: self._publish_will(session, will, client))
        return False

    def _owe_restored_will(self, session: Session, will: Message) -> None:
        """A will the last run owed: its delay starts now; one due at once is published
        once every session is back, so that their subscribers get it."""
        client = session.client_info(self.publisher.broker_client.node)
        if self._owe_will(session, will, client, session.protocol_level):
            session.delayed_will = will
            session.will_timer = self.scheduler.call_later(0, lambda: self._publish_will(session, will, client))

    async def _publish_will(self, session: Session, will: Message, client: ClientInfo) -> None:
        session.will_timer = None
        session.delayed_will = None
        self.counters.wills_published += 1
        # The will's created_at is now: its message expiry starts when it is published.
        await self.publisher.publish(attrs.evolve(will, created_at=time.time()), None, origin=client)
        if session.stored and session.connection is None and self.sessions.get(session.client_id) is session:
            await self.save_session(session)  # the will is no longer owed

    def _schedule_expiry(self, session: Session) -> None:
        if session.expiry_interval is None:
            return
        elapsed = time.time() - (session.disconnected_at or time.time())
        session.expiry_timer = self.scheduler.call_later(
            max(0.0, session.expiry_interval - elapsed), lambda: self._expire(session)
        )

    async def _expire(self, session: Session) -> None:
        session.expiry_timer = None
        if session.connection is not None or self.sessions.get(session.client_id) is not session:
            return
        self.counters.sessions_expired += 1
        await self._end_will_delay(session, publish_now=True)
        await self.end_session(session)
        if self.dispatcher.has("on_session_expired"):
            await self.dispatcher.notify(
                "on_session_expired", client_id=session.client_id, mountpoint=session.mountpoint
            )

    async def _end_will_delay(self, session: Session, *, publish_now: bool) -> None:
        """Stop a pending will's delay, if any; with ``publish_now`` the will goes out now."""
        timer, session.will_timer = session.will_timer, None
        if timer is None:
            return
        timer.cancel()
        if publish_now:
            await timer.callback()
        session.delayed_will = None  # not owed any more: a store must not keep it

    async def end_session(self, session: Session) -> None:
        self.forget_session(session)
        session.journal = None  # the store forgets the session's messages with it
        # Whenever a store holds it, also for a session made non-persistent later
        # (admin cleanup): its stored state must not come back after a restart.
        if session.stored:
            session.stored = False
            await self.dispatcher.provide("session_store_delete", client_id=session.client_id)

    async def store_changed(self) -> None:
        """A store plugin came or went (loaded, unloaded, reloaded at run time): every
        persistent session is given to the store there is now, with its messages, and
        none is left journaling into one that is gone."""
        for session in list(self.sessions.values()):
            session.stored = False
            session.journal = None
            if session.persistent:
                await self.save_session(session)

    def end_session_soon(self, session: Session) -> None:
        """``end_session`` for a caller that cannot await: run by the scheduler's task."""
        self.scheduler.call_later(0, lambda: self.end_session(session))

    def forget_session(self, session: Session) -> None:
        if session.subscriptions:  # the router holds nothing of a session without any
            self.router.remove_session(session)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    async def save_session(self, session: Session) -> None:
        if self.dispatcher.has("session_store_save"):
            if not session.stored:
                # A session new to the store replaces whatever it kept under the client id
                # (rows of a session it could not read at start, for one).
                await self.dispatcher.provide("session_store_delete", client_id=session.client_id)
            session.stored = True
            await self.dispatcher.provide("session_store_save", session=session.snapshot())
            journal = self.router.journal
            if session.journal is None and journal.active:
                journal.adopt(session)
