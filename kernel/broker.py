"""The broker: root nursery, listeners, session registry, and the service API.

Plugins reach the kernel only through the public methods of :class:`Broker` marked
"service API" below (publish, disconnect, listings) and receive frozen snapshots, never
the live session objects.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import attrs
import pluggy
import trio

from . import hookspecs
from .admin import AdminRegistry
from .admin_commands import register_kernel_commands
from .config import BrokerSettings, Config, ListenerConfig
from .control import control_socket_path, serve_control
from .dispatch import HookDispatcher
from .listeners import RunningListener, serve_listener
from .manager import PluginManager
from .registries import MetricsRegistry, SettingsRegistry
from .router import Router
from .scheduler import Scheduler
from .session import Delivery, Session
from .topics import validate_topic_name
from .types import ClientInfo, Message, SessionSnapshot, TopicSubscription

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("ternmq.broker")
WATCHDOG_INTERVAL = 0.25  # seconds: the precision of connect timeout and keep-alive


@attrs.define
class Metrics:
    """Kernel counters (the metrics plugin exports them; ``node status`` shows them)."""

    connections_accepted: int = 0
    connect_refused: int = 0
    publish_received: int = 0
    publish_denied: int = 0
    bytes_sent: int = 0
    wills_published: int = 0
    sessions_expired: int = 0


class Broker:
    """A ternmq broker; ``await nursery.start(broker.serve)`` runs it.

    :param config: the configuration (``load_config()`` for the embedded default).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config.broker
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self.dispatcher = HookDispatcher(
            self.plugin_manager,
            hook_timeout=self.settings.hook_timeout,
            notification_timeout=self.settings.notification_timeout,
        )
        self.dispatcher.rebuild()
        self.sessions: dict[str, Session] = {}
        self.router = Router(self.sessions, self.dispatcher)
        self.scheduler = Scheduler()
        self.metrics = Metrics()
        self.admin = AdminRegistry()
        self.plugin_metrics = MetricsRegistry()
        self.plugin_settings = SettingsRegistry()
        register_kernel_commands(self.admin)
        self.plugins = PluginManager(self)
        self.listeners: dict[str, RunningListener] = {}
        self.connections: set[Connection] = set()
        self.started_at = time.time()
        self.control_socket: str | None = None
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()

    @property
    def node_name(self) -> str:
        return self.settings.node_name

    @property
    def retain_available(self) -> bool:
        return self.dispatcher.has("retain_store")

    # -- lifetime ----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED) -> None:
        """Load plugins, restore sessions, start listeners, then run until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.scheduler.run)
                nursery.start_soon(self._watchdog)
                await self.plugins.start(nursery)
                await self.plugins.load_configured(self.config.plugins)
                await self._restore_sessions()
                socket_path = control_socket_path(self.settings)
                if socket_path is not None:
                    self.control_socket = await nursery.start(serve_control, self, socket_path)
                for listener in self.config.listeners:
                    await self.start_listener(listener)
                task_status.started(self)
                await self._stopped.wait()
                # Clients learn why they go (v5 DISCONNECT 0x8B; hooks see "shutdown").
                connections = [s.connection for s in self.sessions.values() if s.connection is not None]
                for conn in connections:
                    conn.kick(0x8B, "shutdown")
                with trio.move_on_after(2):
                    for conn in connections:
                        await conn.closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self._shutdown()

    async def _watchdog(self) -> None:
        """Close connections past their deadline (connect timeout, keep-alive).

        One task scanning every connection a few times a second costs less than a
        cancel scope per connection whose deadline moves with every read.
        """
        while True:
            await trio.sleep(WATCHDOG_INTERVAL)
            now = trio.current_time()
            for conn in [c for c in self.connections if c.deadline <= now]:
                conn.timed_out()

    def stop(self) -> None:
        """Ask ``serve`` to shut down cleanly."""
        self._stopped.set()

    async def _shutdown(self) -> None:
        for session in list(self.sessions.values()):
            if session.persistent:
                await self.save_session(session)

    async def start_listener(self, config: ListenerConfig) -> RunningListener:
        """Bind and serve one listener (also at run time)."""
        assert self._nursery is not None
        if config.name in self.listeners and self.listeners[config.name].status == "running":
            raise ValueError(f"listener {config.name} is already running")
        running = RunningListener(config)
        self.listeners[config.name] = running
        await self._nursery.start(serve_listener, self, running)
        return running

    def stop_listener(self, name: str, *, kill_sessions: bool = False) -> bool:
        """Stop accepting on a listener; its clients stay unless ``kill_sessions``."""
        running = self.listeners.get(name)
        if running is None or running.status != "running":
            return False
        running.stop(kill_sessions)
        return True

    def apply_settings(self, settings: BrokerSettings) -> None:
        """Live settings (``set``): new connections and hook calls use them at once."""
        self.settings = settings
        self.config = attrs.evolve(self.config, broker=settings)
        self.dispatcher.hook_timeout = settings.hook_timeout
        self.dispatcher.notification_timeout = settings.notification_timeout

    def port(self, listener: str | None = None) -> int:
        """The bound port of a listener (the first one by default)."""
        if listener is None:
            return next(iter(self.listeners.values())).port
        return self.listeners[listener].port

    async def _restore_sessions(self) -> None:
        snapshots = await self.dispatcher.provide("session_store_load_all", default=())
        for snapshot in snapshots:
            session = self._new_session(snapshot.client_id, snapshot.username, snapshot.protocol_level,
                                        snapshot.expiry_interval, self.settings.limits.max_inflight,
                                        self.settings.limits.max_queued_messages)
            session.stored = True
            for subscription in snapshot.subscriptions:
                self.router.subscribe(session, subscription)
            for message in snapshot.queued:
                session.queue.append(Delivery(message, message.qos, message.retain, hooked=False))
            session.disconnected_at = snapshot.disconnected_at
            self._schedule_expiry(session)
        if snapshots:
            log.info("restored %d sessions from the session store", len(snapshots))

    # -- sessions ----------------------------------------------------------------------

    def _new_session(self, client_id: str, username: str | None, level: int, expiry: int | None,
                     max_inflight: int, max_queued: int) -> Session:
        session = Session(client_id, username=username, protocol_level=level, expiry_interval=expiry,
                          max_inflight=max_inflight, max_queued=max_queued)
        self.sessions[client_id] = session
        return session

    async def attach_session(
        self, conn: Connection, client_id: str, *, clean_start: bool, expiry_interval: int | None,
        username: str | None, max_inflight: int, max_queued: int,
    ) -> tuple[Session, bool]:
        """Take over any live connection of ``client_id``, then resume or create its session."""
        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            old = session.connection
            old.kick(0x8E, "taken_over")
            with trio.move_on_after(5):
                await old.closed.wait()
            session = self.sessions.get(client_id)
        if session is not None:
            if session.will_timer is not None:
                # A new connection before the will delay passed: the will is not sent,
                # unless the session ends now (clean start), which also ends the delay.
                timer, session.will_timer = session.will_timer, None
                timer.cancel()
                if clean_start:
                    await timer.callback()
            if session.expiry_timer is not None:
                session.expiry_timer.cancel()
                session.expiry_timer = None
        present = session is not None and not clean_start
        if session is not None and clean_start:
            await self._end_session(session)
            session = None
        if session is None:
            session = self._new_session(client_id, username, conn.protocol_level, expiry_interval,
                                        max_inflight, max_queued)
        else:
            session.username = username
            session.protocol_level = conn.protocol_level
            session.expiry_interval = expiry_interval
            session.max_inflight = max_inflight
            session.max_queued = max_queued
        session.connection = conn
        session.disconnected_at = None
        self.metrics.connections_accepted += 1
        return session, present

    async def session_online(self, conn: Connection, session: Session) -> None:
        """After CONNACK: resend what is in flight, drain the queue, fire wakeup."""
        for delivery, status in list(session.resend_inflight()):
            await self.router.report(session, delivery.message, delivery.qos, status)
        if self.dispatcher.has("on_deliver"):
            await self._deliver_hook_on_offline_queue(session)
        await self.drain(session)
        if self.dispatcher.has("on_client_wakeup"):
            await self.dispatcher.notify("on_client_wakeup", client=conn.client_info)

    async def _deliver_hook_on_offline_queue(self, session: Session) -> None:
        """Run on_deliver over messages queued while offline (rewrite or drop them)."""
        kept = []
        for delivery in list(session.queue):
            if not delivery.hooked:
                message = await self.router.on_deliver(session, delivery.message, delivery.qos)
                if message is None:
                    continue  # dropped by the plugin (on_message_drop already fired)
                delivery.message = message
                delivery.hooked = True
            kept.append(delivery)
        session.queue.clear()
        session.queue.extend(kept)

    async def drain(self, session: Session) -> None:
        for delivery, status in list(session.drain()):
            await self.router.report(session, delivery.message, delivery.qos, status)

    async def connection_closed(self, conn: Connection) -> None:
        """Detach a closed connection from its session: will, offline or gone, hooks."""
        session = conn.session
        if session is None or session.connection is not conn:
            return
        session.connection = None
        session.disconnected_at = time.time()
        will = conn.will
        if will is not None:
            delay = will.properties.get("will_delay_interval", 0) if conn.protocol_level == 5 else 0
            if session.expiry_interval is not None:
                delay = min(delay, session.expiry_interval)
            if delay > 0:
                session.will_timer = self.scheduler.call_later(
                    delay, lambda: self._publish_will(session, will, conn.client_info))
            else:
                await self._publish_will(session, will, conn.client_info)
        reason = conn.disconnect_reason
        if session.persistent:
            self._schedule_expiry(session)
            await self.save_session(session)
            if self.dispatcher.has("on_client_offline"):
                await self.dispatcher.notify("on_client_offline", client=conn.client_info, reason=reason)
        else:
            await self._end_session(session)
            if self.dispatcher.has("on_client_gone"):
                await self.dispatcher.notify("on_client_gone", client=conn.client_info, reason=reason)

    async def _publish_will(self, session: Session, will: Message, client: ClientInfo) -> None:
        session.will_timer = None
        self.metrics.wills_published += 1
        # The will's created_at is now: its message expiry starts when it is published.
        await self.publish(attrs.evolve(will, created_at=time.time()), None, origin=client)

    def _schedule_expiry(self, session: Session) -> None:
        if session.expiry_interval is None:
            return
        elapsed = time.time() - (session.disconnected_at or time.time())
        session.expiry_timer = self.scheduler.call_later(
            max(0.0, session.expiry_interval - elapsed), lambda: self._expire(session))

    async def _expire(self, session: Session) -> None:
        session.expiry_timer = None
        if session.connection is not None or self.sessions.get(session.client_id) is not session:
            return
        self.metrics.sessions_expired += 1
        if session.will_timer is not None:
            timer, session.will_timer = session.will_timer, None
            timer.cancel()
            await timer.callback()
        await self._end_session(session)
        if self.dispatcher.has("on_session_expired"):
            await self.dispatcher.notify("on_session_expired", client_id=session.client_id)

    async def _end_session(self, session: Session) -> None:
        self.router.remove_session(session)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        # Whenever a store holds it, also for a session made non-persistent later
        # (admin cleanup): its stored state must not come back after a restart.
        if session.stored:
            session.stored = False
            await self.dispatcher.provide("session_store_delete", client_id=session.client_id)

    async def save_session(self, session: Session) -> None:
        if self.dispatcher.has("session_store_save"):
            session.stored = True
            await self.dispatcher.provide("session_store_save", session=session.snapshot())

    # -- publishing --------------------------------------------------------------------

    async def publish(self, message: Message, conn: Connection | None, origin: ClientInfo | None = None) -> int:
        """Retain, route and announce an authorized message; returns deliveries."""
        dispatcher = self.dispatcher
        if message.retain:
            if not message.payload:
                await dispatcher.provide("retain_delete", topic=message.topic)
            else:
                await dispatcher.provide("retain_store", message=message)
        origin_id = conn.client_info.client_id if conn is not None else None
        count = await self.router.route(message, origin_id)
        if dispatcher.has("on_publish"):
            client = conn.client_info if conn is not None else origin or self.service_client
            await dispatcher.notify("on_publish", client=client, message=message)
        if dispatcher.has("cluster_forward"):
            await dispatcher.provide("cluster_forward", message=message,
                                     origin=conn.client_info if conn is not None else origin or self.service_client)
        return count

    @property
    def service_client(self) -> ClientInfo:
        return ClientInfo(f"$broker/{self.node_name}", node=self.node_name)

    # -- service API for plugins -------------------------------------------------------

    async def publish_message(
        self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
        properties: dict[str, Any] | None = None,
    ) -> int:
        """Service API: publish as the broker itself (no authorization hooks)."""
        validate_topic_name(topic)
        if retain and not self.retain_available:
            retain = False
        return await self.publish(Message(topic, payload, qos, retain, properties or {}), None)

    def disconnect_client(self, client_id: str, reason_code: int = 0x98, *, cleanup: bool = False) -> bool:
        """Service API: close a client's connection (v5 DISCONNECT ``reason_code``)."""
        session = self.sessions.get(client_id)
        if session is None:
            return False
        if cleanup:
            session.expiry_interval = 0
        if session.connection is not None:
            session.connection.kick(reason_code, "kicked")  # its teardown ends the session
        elif cleanup and self._nursery is not None:
            self._nursery.start_soon(self._end_session, session)
        return True

    def list_sessions(self) -> list[dict[str, Any]]:
        """Service API: one row per session (online or not), as plain values."""
        rows = []
        for session in self.sessions.values():
            conn = session.connection
            rows.append({
                "client_id": session.client_id,
                "is_online": conn is not None,
                "user": session.username,
                "peer_host": conn.peer_host if conn else None,
                "peer_port": conn.peer_port if conn else None,
                "protocol": session.protocol_level,
                "clean_session": not session.persistent,
                "listener": conn.listener.name if conn else None,
                "subscriptions": len(session.subscriptions),
                "inflight": len(session.inflight),
                "queued": len(session.queue),
                "node": self.node_name,
            })
        return rows

    def session_snapshot(self, client_id: str) -> SessionSnapshot | None:
        """Service API: a frozen view of one session."""
        session = self.sessions.get(client_id)
        return session.snapshot() if session else None

    def subscriptions_of(self, client_id: str) -> tuple[TopicSubscription, ...]:
        session = self.sessions.get(client_id)
        return tuple(session.subscriptions.values()) if session else ()
