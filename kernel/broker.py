"""The broker: root nursery, listeners, session registry, and the service API.

Plugins reach the kernel only through the public methods of :class:`Broker` marked
"service API" below (publish, disconnect, listings) and receive frozen snapshots, never
the live session objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import pluggy
import trio

from ternmq.plugins import ESSENTIAL

from . import hookspecs
from .admin import AdminRegistry
from .codec import ReasonCode
from .hooks.dispatch import HookDispatcher
from .hooks.registries import ApiRoutes, MetricsRegistry, SettingsRegistry
from .manager import PluginManager
from .plugin_lookup import PluginError
from .protocol.throttle import Throttle
from .routing.lifecycle import SessionLifecycle
from .routing.publisher import Publisher
from .routing.router import Router
from .routing.scheduler import Scheduler
from .routing.session import Session
from .service import Service
from .transport.listeners import RunningListener, serve_listener
from .values.config import BrokerSettings, Config, ConfigError, ListenerConfig
from .values.counters import Counters, PacketCounts

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
        self.publisher = Publisher(self.router, self.dispatcher, self.settings.node_name)
        self.lifecycle = SessionLifecycle(
            self.sessions, self.router, self.dispatcher, self.scheduler, self.metrics, self.publisher
        )
        self.admin = AdminRegistry()
        self.plugin_metrics = MetricsRegistry()
        self.plugin_settings = SettingsRegistry()
        self.api_routes = ApiRoutes()
        self.packet_counts = PacketCounts()
        self.plugins = PluginManager(self)
        self.service = Service(self)
        self.listeners: dict[str, RunningListener] = {}
        self.connections: set[Connection] = set()
        self.started_at = time.time()
        self._nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        # Set once the store's sessions are restored (a cluster plugin, loaded before,
        # must not hand over a session this node has not read back yet).
        self.sessions_restored = trio.Event()
        self._saved = False  # the sessions were saved at shutdown

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
                self.sessions_restored.set()
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
                # While the plugins still run: the store's writer is one of them.
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await self._shutdown()
                nursery.cancel_scope.cancel()
        finally:
            if not self._saved:
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

    async def store_changed(self) -> None:
        await self.lifecycle.store_changed()

    def stop(self) -> None:
        """Ask ``serve`` to shut down cleanly."""
        self._stopped.set()

    async def _shutdown(self) -> None:
        """Save every persistent session, and wait until the store has written them."""
        self._saved = True
        for session in list(self.sessions.values()):
            if session.persistent:
                await self.lifecycle.save_session(session)
        await self.router.journal.commit()

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
        """Live settings (``set``): new connections and hook calls use them at once; a
        new max_message_rate reaches the connections already open too (an operator
        slowing a flood means the flood that runs)."""
        rate = settings.limits.max_message_rate
        if rate != self.settings.limits.max_message_rate:
            for connection in self.connections:
                connection.throttle = Throttle(rate) if rate else None
        self.settings = settings
        self.config = attrs.evolve(self.config, broker=settings)
        self.dispatcher.hook_timeout = settings.hook_timeout
        self.dispatcher.notification_timeout = settings.notification_timeout

    def start_soon(self, task: Callable[[], Awaitable[object]], name: str) -> None:
        """A task in the root nursery; an Exception from it is logged (Service.start_soon).
        A broker that is not running, or is shutting down, logs that and runs nothing."""

        async def contained() -> None:
            try:
                await task()
            except Exception:
                log.exception("task %s failed", name)

        try:
            if self._nursery is None:
                raise RuntimeError("the broker is not running")
            self._nursery.start_soon(contained, name=name)
        except RuntimeError as exc:  # trio refuses new tasks in a nursery that is closing
            log.warning("task %s not started: %s", name, exc)

    def port(self, listener: str | None = None) -> int:
        """The bound port of a listener (the first one by default)."""
        if listener is None:
            return next(iter(self.listeners.values())).port
        return self.listeners[listener].port
