"""The broker: root nursery, listeners, session registry, and the service API.

Plugins reach the kernel only through the public methods of :class:`Broker` marked
"service API" below (publish, disconnect, listings) and receive frozen snapshots, never
the live session objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pluggy
import trio

from ternmq.plugins import ESSENTIAL

from . import hookspecs
from .admin import AdminRegistry
from .codec import ReasonCode
from .hooks.dispatch import HookDispatcher
from .hooks.registries import MetricsRegistry, SettingsRegistry
from .manager import PluginManager
from .plugin_lookup import PluginError
from .protocol.subscriptions import after_subscribe, after_unsubscribe
from .routing.lifecycle import SessionLifecycle
from .routing.router import Router
from .routing.scheduler import Scheduler
from .routing.session import AttachedConnection, Session
from .routing.topics import validate_topic_filter, validate_topic_name
from .service import Service
from .transport.listeners import RunningListener, serve_listener
from .values.config import BrokerSettings, Config, ConfigError, ListenerConfig
from .values.counters import Counters
from .values.types import ClientInfo, Message, SessionSnapshot, TopicSubscription

if TYPE_CHECKING:
    from .transport.connection import Connection

log = logging.getLogger("ternmq.broker")
WATCHDOG_INTERVAL = 0.25  # seconds: the precision of connect timeout and keep-alive


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
        self.metrics = Counters()
        self.lifecycle = SessionLifecycle(
            self.sessions, self.router, self.dispatcher, self.scheduler, self.metrics, self._publish_will
        )
        self.admin = AdminRegistry()
        self.plugin_metrics = MetricsRegistry()
        self.plugin_settings = SettingsRegistry()
        self.plugins = PluginManager(self)
        self.service = Service(self)
        self.listeners: dict[str, RunningListener] = {}
        self.connections: set[Connection] = set()
        self.started_at = time.time()
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()

    @property
    def node_name(self) -> str:
        return self.settings.node_name

    @property
    def retain_available(self) -> bool:
        return "retain_store" in self.dispatcher.implemented

    # -- lifetime ----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[Broker] = trio.TASK_STATUS_IGNORED) -> None:
        """Load plugins, restore sessions, start listeners, then run until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.scheduler.run)
                nursery.start_soon(self._watchdog)
                await self.plugins.start(nursery)
                await self._load_essential_plugins()
                await self.plugins.load_configured(e for e in self.config.plugins if e.name not in ESSENTIAL)
                await self.lifecycle.restore_sessions(self.settings.limits)
                for listener in self.config.listeners:
                    await self.start_listener(listener)
                task_status.started(self)
                await self._stopped.wait()
                # Clients learn why they go (v5 DISCONNECT 0x8B; hooks see "shutdown").
                connections = [s.connection for s in self.sessions.values() if s.connection is not None]
                for conn in connections:
                    conn.kick(ReasonCode.SERVER_SHUTTING_DOWN, "shutdown")
                with trio.move_on_after(2):
                    for conn in connections:
                        await conn.closed.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self._shutdown()

    async def _load_essential_plugins(self) -> None:
        """Load ``admin`` (the admin commands and the control socket) before any other
        plugin, with its ``[plugins.admin]`` table if the configuration has one."""
        source = self.config.source
        for name in ESSENTIAL:
            entry = next((e for e in self.config.plugins if e.name == name), None)
            if entry is not None and not entry.enabled:
                raise ConfigError(source, f"plugins.{name}", "enabled", "an essential plugin cannot be disabled")
            try:
                await self.plugins.load(name, entry.settings if entry else {}, source_name=source)
            except PluginError as exc:
                # The control socket taken by another broker stops the start as it is.
                if isinstance(exc.__cause__, OSError):
                    raise exc.__cause__ from None
                raise ConfigError(source, f"plugins.{name}", None, exc.reason) from None

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
                await self.lifecycle.save_session(session)

    async def start_listener(self, config: ListenerConfig) -> RunningListener:
        """Bind and serve one listener (also at run time)."""
        assert self._nursery is not None
        if config.name in self.listeners and self.listeners[config.name].status == "running":
            raise ValueError(f"listener {config.name} is already running")
        running = RunningListener(config, live=self.connections)
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

    # -- publishing --------------------------------------------------------------------

    async def publish(
        self,
        message: Message,
        conn: AttachedConnection | None,
        origin: ClientInfo | None = None,
        on_matched: Callable[[int], None] | None = None,
    ) -> int:
        """Retain, route and announce an authorized message; returns deliveries.

        ``on_matched`` (the publisher's acknowledgement) is called with the number of
        matching subscribers before any of them gets the message (Router.route).
        """
        dispatcher = self.dispatcher
        if message.retain:
            if not message.payload:
                await dispatcher.provide("retain_delete", topic=message.topic)
            else:
                await dispatcher.provide("retain_store", message=message)
        origin_id = conn.client_info.client_id if conn is not None else None
        count = await self.router.route(message, origin_id, on_matched)
        announce = dispatcher.has("on_publish")
        forward = dispatcher.has("cluster_forward")
        if announce or forward:
            client = conn.client_info if conn is not None else origin or self.service_client
            if announce:
                await dispatcher.notify("on_publish", client=client, message=message)
            if forward:
                await dispatcher.provide("cluster_forward", message=message, origin=client)
        return count

    async def _publish_will(self, will: Message, client: ClientInfo) -> int:
        return await self.publish(will, None, origin=client)

    @property
    def service_client(self) -> ClientInfo:
        return ClientInfo(f"$broker/{self.node_name}", node=self.node_name)

    # -- the operations behind the service face (kernel/service.py) -----------------------

    async def publish_message(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: dict[str, Any] | None = None,
    ) -> int:
        """Service API: publish as the broker itself (no authorization hooks)."""
        validate_topic_name(topic)
        if retain and not self.retain_available:
            retain = False
        return await self.publish(Message(topic, payload, qos, retain, properties or {}), None)

    def disconnect_client(
        self, client_id: str, reason_code: int = ReasonCode.ADMINISTRATIVE_ACTION, *, cleanup: bool = False
    ) -> bool:
        """Service API: close a client's connection (v5 DISCONNECT ``reason_code``)."""
        session = self.sessions.get(client_id)
        if session is None:
            return False
        if cleanup:
            session.expiry_interval = 0
        if session.connection is not None:
            session.connection.kick(reason_code, "kicked")  # its teardown ends the session
        elif cleanup and self._nursery is not None:
            self._nursery.start_soon(self.lifecycle.end_session, session)
        return True

    def list_sessions(self) -> list[dict[str, Any]]:
        """Service API: one row per session (online or not), as plain values."""
        rows = []
        for session in self.sessions.values():
            conn = session.connection
            rows.append(
                {
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
                }
            )
        return rows

    async def subscribe_client(self, client_id: str, subscriptions: Sequence[TopicSubscription]) -> bool:
        """Service API: subscribe a session on its client's behalf (online or offline).

        As the broker itself, so no auth_on_subscribe and no subscription quota; the
        rest is a SUBSCRIBE's: the session is stored, on_subscribe fires, retained
        messages follow retain handling. False when there is no such session; a bad
        filter or QoS raises TopicError or ValueError before anything changes.
        """
        session = self.sessions.get(client_id)
        if session is None:
            return False
        for subscription in subscriptions:
            validate_topic_filter(subscription.topic_filter, self.settings.limits.max_topic_levels)
            if subscription.qos not in (0, 1, 2) or subscription.retain_handling not in (0, 1, 2):
                raise ValueError(f"{subscription.topic_filter}: qos and retain_handling must be 0, 1 or 2")
        fresh = [(subscription, self.router.subscribe(session, subscription)) for subscription in subscriptions]
        await after_subscribe(self, session, self._client_of(session), list(subscriptions), fresh)
        return True

    async def unsubscribe_client(self, client_id: str, topic_filters: Sequence[str]) -> list[bool] | None:
        """Service API: remove subscriptions of a session; per filter, whether it existed.

        No auth_on_unsubscribe (the broker acts); None when there is no such session.
        """
        session = self.sessions.get(client_id)
        if session is None:
            return None
        existed = [self.router.unsubscribe(session, topic_filter) for topic_filter in topic_filters]
        await after_unsubscribe(self, session, self._client_of(session), list(topic_filters))
        return existed

    def _client_of(self, session: Session) -> ClientInfo:
        """Who hooks are told about: the connection's client, or the offline session's."""
        if session.connection is not None:
            return session.connection.client_info
        return ClientInfo(
            session.client_id, session.username, protocol_level=session.protocol_level, node=self.node_name
        )

    def session_snapshot(self, client_id: str) -> SessionSnapshot | None:
        """Service API: a frozen view of one session."""
        session = self.sessions.get(client_id)
        return session.snapshot() if session else None

    def subscriptions_of(self, client_id: str) -> tuple[TopicSubscription, ...]:
        session = self.sessions.get(client_id)
        return tuple(session.subscriptions.values()) if session else ()
