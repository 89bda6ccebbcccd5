"""The service face: everything a plugin may do with the running broker.

A plugin's ``serve(service, *, task_status)`` gets a :class:`Service`, never the
:class:`~ternmq.kernel.broker.Broker` (only what :class:`ServedBroker` lists of it). Its operations are the documented ones
(docs/plugins.md, "The service face"): publish, subscribe and unsubscribe on behalf of a
client, disconnect a client, query sessions, subscriptions, listeners, retained
messages and plugins, load, unload and reload plugins, read and set live settings, read
metrics, run admin commands. What they return are frozen values: a plugin cannot change the broker by
holding on to them, only by calling the service again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import live_settings
from .acting import Outcome, publish_for
from .cluster_face import ClusterFace
from .codec import ReasonCode
from .hooks.registries import ApiRoute, Metric
from .observed import kernel_metrics, plugin_info, session_info_of
from .plugin_lookup import plugin_error
from .protocol.ports import BrokerCore
from .protocol.subscriptions import after_subscribe, after_unsubscribe
from .records_face import RecordsFace
from .routing.topics import validate_topic_filter, validate_topic_name
from .values.config import EMBEDDED_DEFAULT, BrokerSettings, ConfigError, ListenerConfig
from .values.info import ListenerInfo, PluginInfo, SessionInfo
from .values.types import ClientInfo, Message, SessionSnapshot, TopicSubscription

if TYPE_CHECKING:
    import pluggy

    from .hooks.registries import ApiRoutes, MetricsRegistry, SettingsRegistry
    from .manager import LoadedPlugin, PluginManager
    from .transport.listeners import RunningListener
    from .values.output import Table, Text

__all__ = ["Service", "SessionInfo", "ListenerInfo", "PluginInfo"]


class CommandRunner(Protocol):
    """The admin command tree as the service runs it (admin.py's AdminRegistry)."""

    async def run(self, service: Service, argv: Sequence[str]) -> Table | Text: ...

    def parse(self, argv: Sequence[str]) -> tuple[Any, Any, bool]: ...


class ServedBroker(BrokerCore, Protocol):
    """What the service face uses of the broker it serves (broker.py's Broker): its
    parts, as the protocol layer sees them (BrokerCore), and these."""

    @property
    def node_name(self) -> str: ...

    @property
    def admin(self) -> CommandRunner: ...

    @property
    def plugin_manager(self) -> pluggy.PluginManager: ...

    @property
    def plugins(self) -> PluginManager: ...

    @property
    def plugin_settings(self) -> SettingsRegistry: ...

    @property
    def plugin_metrics(self) -> MetricsRegistry: ...

    @property
    def api_routes(self) -> ApiRoutes: ...

    @property
    def listeners(self) -> dict[str, RunningListener]: ...

    def apply_settings(self, settings: BrokerSettings) -> None: ...

    async def start_listener(self, config: ListenerConfig) -> RunningListener: ...

    def stop_listener(self, name: str, *, kill_sessions: bool = False) -> bool: ...

    def start_soon(self, task: Callable[[], Awaitable[object]], name: str) -> None: ...


class Service(RecordsFace, ClusterFace):
    """The operations plugins (and admin commands) may call (see module docstring)."""

    __slots__ = ("_broker",)
    _broker: ServedBroker

    def __init__(self, broker: ServedBroker) -> None:
        self._broker = broker

    # -- the node ------------------------------------------------------------------------

    @property
    def node_name(self) -> str:
        return self._broker.node_name

    @property
    def settings(self) -> BrokerSettings:
        """The live ``[broker]`` settings (a frozen value: set them with ``apply_settings``)."""
        return self._broker.settings

    def apply_settings(self, settings: BrokerSettings) -> None:
        """Replace the live settings: new connections and hook calls use them at once."""
        self._broker.apply_settings(settings)

    @property
    def config_file(self) -> str | None:
        """The configuration file the broker was started with (None: the embedded default)."""
        source = self._broker.config.source
        return None if source == EMBEDDED_DEFAULT else source

    @property
    def data_dir(self) -> Path:
        """Where plugins keep their files: ``[broker] data_dir``, a relative one joined to
        the configuration file's folder (to the working directory without a file)."""
        data_dir = Path(self._broker.settings.data_dir)
        if not data_dir.is_absolute() and self.config_file:
            data_dir = Path(self.config_file).parent / data_dir
        return data_dir

    def live_settings(self) -> dict[str, Any]:
        """Every live setting by name (``show``): the live ``[broker]`` keys, the
        ``[broker.limits]`` keys, then the settings plugins registered, sorted."""
        return live_settings.read(self._broker)

    def set_live_settings(self, values: Mapping[str, Any]) -> None:
        """Change live settings (``set``). An unknown name raises ``KeyError`` before
        anything changes; plugins' settings are written first (one that refuses its value
        raises ``ValueError`` "name: why"), then the ``[broker]`` and limits ones,
        checked as the configuration file's (``ConfigError`` naming the key)."""
        live_settings.write(self._broker, values)

    def parse_command(self, argv: Sequence[str]) -> tuple[tuple[str, ...], Mapping[str, str]]:
        """The command words and the ``name=value`` arguments of a command line, read as
        ``run_command`` reads it, without running it; a bad one raises ``CommandError``.
        Words ``()`` for a request for help."""
        command, arguments, wants_help = self._broker.admin.parse(argv)
        return (() if command is None or wants_help else tuple(command.path)), dict(arguments.keys)

    async def run_command(self, argv: Sequence[str]) -> Table | Text:
        """Run one admin command line (what ``ternmq-admin`` sends); a bad one raises
        ``CommandError`` with the command's usage."""
        return await self._broker.admin.run(self, argv)

    def metrics(self) -> dict[str, int | float]:
        """``{"counter.NAME": value, 'gauge.NAME{label="x"}': value}`` of every metric
        (``metrics show``)."""
        return {f"{m.kind}.{sample}": value for m in self.metric_list() for sample, value in m.samples().items()}

    def metric_list(self) -> tuple[Metric, ...]:
        """Every metric, with kind, help and labels (Prometheus): the kernel's counters and
        gauges, then those plugins registered."""
        return (*kernel_metrics(self._broker), *self._broker.plugin_metrics.entries.values())

    # -- messages ------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Mapping[str, Any] | None = None,
    ) -> int:
        """Publish as the broker itself, through a client's publish path after
        authorization (retain, route, ``on_publish``, ``cluster_forward``); returns the
        number of subscribers it was delivered or queued to. An invalid topic name raises
        ``TopicError``; a QoS outside 0–2 ``ValueError``."""
        if type(qos) is not int or qos not in (0, 1, 2):  # 1.0 == 1, but no encoder takes it
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        validate_topic_name(topic)
        broker = self._broker
        retain = retain and broker.retain_available
        message = Message(topic, bytes(payload), qos, retain, dict(properties or {}))
        return await broker.publisher.publish(message, None)

    async def publish_for(self, client: ClientInfo, password: bytes | None, message: Message) -> Outcome:
        """Publish for a client without an MQTT connection (HTTP publish): through
        ``auth_on_register`` and ``auth_on_publish`` as a client's CONNECT and PUBLISH,
        then a client's path (acting.py). Validate the topic first (``TopicError``)."""
        validate_topic_name(message.topic)
        return await publish_for(self._broker, client, password, message)

    async def retained(self, topic_filter: str = "#") -> tuple[Message, ...]:
        """The retained messages matching ``topic_filter`` by topic (empty without a
        retainer; expired ones are left out). A bad filter raises ``TopicError``."""
        validate_topic_filter(topic_filter)
        broker = self._broker
        if not broker.retain_available:
            return ()
        messages = await broker.dispatcher.provide("retain_lookup", default=(), topic_filter=topic_filter)
        return tuple(sorted((m for m in messages if not m.expired()), key=lambda m: m.topic))

    async def delete_retained(self, topic: str) -> None:
        """Forget the retained message of one topic (nothing without a retainer)."""
        await self._broker.dispatcher.provide("retain_delete", topic=topic)

    @property
    def retain_available(self) -> bool:
        return self._broker.retain_available

    # -- sessions and subscriptions ------------------------------------------------------

    def sessions(self) -> tuple[SessionInfo, ...]:
        """Every session, online or not (``session show``)."""
        node = self._broker.node_name
        return tuple(session_info_of(session, node) for session in self._broker.sessions.values())

    def session_info(self, client_id: str) -> SessionInfo | None:
        """One session as ``sessions()`` lists it; None when there is none."""
        session = self._broker.sessions.get(client_id)
        return session_info_of(session, self._broker.node_name) if session else None

    def session(self, client_id: str) -> SessionSnapshot | None:
        """A frozen view of one session; None when there is none."""
        session = self._broker.sessions.get(client_id)
        return session.snapshot() if session else None

    def subscriptions(self, client_id: str) -> tuple[TopicSubscription, ...]:
        session = self._broker.sessions.get(client_id)
        return tuple(session.subscriptions.values()) if session else ()

    async def subscribe(self, client_id: str, subscriptions: Sequence[TopicSubscription]) -> bool:
        """Subscribe a session on its client's behalf (online or offline), as the broker:
        no ``auth_on_subscribe``, no subscription quota; the rest is a SUBSCRIBE's (the
        session is stored, ``on_subscribe`` fires, retained messages follow retain
        handling). False when there is no such session; a bad filter or QoS raises
        ``TopicError`` or ``ValueError`` before anything changes."""
        broker = self._broker
        session = broker.sessions.get(client_id)
        if session is None:
            return False
        for subscription in subscriptions:
            validate_topic_filter(subscription.topic_filter, broker.settings.limits.max_topic_levels)
            if any(type(v) is not int or v not in (0, 1, 2) for v in (subscription.qos, subscription.retain_handling)):
                raise ValueError(f"{subscription.topic_filter}: qos and retain_handling must be 0, 1 or 2")
        fresh = [(subscription, broker.router.subscribe(session, subscription)) for subscription in subscriptions]
        await after_subscribe(broker, session, session.client_info(self._broker.node_name), list(subscriptions), fresh)
        return True

    async def unsubscribe(self, client_id: str, topic_filters: Sequence[str]) -> list[bool] | None:
        """Remove subscriptions, as the broker (no ``auth_on_unsubscribe``); per filter
        whether it existed, None when there is no such session."""
        broker = self._broker
        session = broker.sessions.get(client_id)
        if session is None:
            return None
        existed = [broker.router.unsubscribe(session, topic_filter) for topic_filter in topic_filters]
        await after_unsubscribe(broker, session, session.client_info(self._broker.node_name), list(topic_filters))
        return existed

    def disconnect(
        self, client_id: str, reason_code: int = ReasonCode.ADMINISTRATIVE_ACTION, *, cleanup: bool = False
    ) -> bool:
        """Close the client's connection (MQTT 5: DISCONNECT ``reason_code``); with
        ``cleanup`` its session ends too. False when there is no such session."""
        session = self._broker.sessions.get(client_id)
        if session is None:
            return False
        if cleanup:
            session.expiry_interval = 0
        if session.connection is not None:
            session.connection.kick(reason_code, "kicked")  # its teardown ends the session
        elif cleanup:
            self._broker.lifecycle.end_session_soon(session)
        return True

    # -- listeners -----------------------------------------------------------------------

    def listeners(self) -> tuple[ListenerInfo, ...]:
        return tuple(
            ListenerInfo(
                name,
                running.config.type,
                running.status,
                running.config.address,
                running.port,
                running.config.max_connections,
                running.active,
                running.total,
                running.config.mountpoint,
                running.config,
            )
            for name, running in self._broker.listeners.items()
        )

    async def start_listener(self, config: ListenerConfig) -> ListenerInfo:
        """Start a listener; one that cannot start (``ConfigError``, ``ValueError``,
        ``OSError``) leaves the listeners as they were."""
        broker = self._broker
        previous = broker.listeners.get(config.name)
        try:
            running = await broker.start_listener(config)
        except (ConfigError, ValueError, OSError):
            # start_listener lists the listener before it binds: take the failed one out
            # again (or put back the stopped one it replaced).
            failed = broker.listeners.get(config.name)
            if failed is not None and failed is not previous and failed.status != "running":
                if previous is None:
                    del broker.listeners[config.name]
                else:
                    broker.listeners[config.name] = previous
            raise
        return next(info for info in self.listeners() if info.name == running.config.name)

    def stop_listener(self, name: str, *, kill_sessions: bool = False) -> bool:
        return self._broker.stop_listener(name, kill_sessions=kill_sessions)

    async def listener_stopped(self, name: str) -> None:
        """Wait until a stopped listener has closed its port (at once if there is none)."""
        running = self._broker.listeners.get(name)
        if running is not None:
            await running.stopped.wait()

    # -- plugins -------------------------------------------------------------------------

    def plugins(self, *, internal: bool = False) -> tuple[PluginInfo, ...]:
        """The loaded plugins in calling order; the essential built-in ones (``admin``)
        only with ``internal``."""
        from ternmq.plugins import ESSENTIAL

        broker = self._broker
        loaded = broker.plugins.loaded
        return tuple(
            self._plugin_info(loaded[name])
            for name in broker.dispatcher.calling_order()
            if name in loaded and (internal or name not in ESSENTIAL)
        )

    def api_route(self, method: str, path: str) -> ApiRoute | None:
        """The route a plugin registered for ``method`` and ``path`` (register_api_routes)."""
        return self._broker.api_routes.find(method, path)

    def plugin_name_of(self, plugin: object) -> str | None:
        """The name ``plugin`` (the object a plugin was registered as) is loaded under."""
        return next((name for name, loaded in self._broker.plugins.loaded.items() if loaded.plugin is plugin), None)

    def start_soon(self, task: Callable[[], Awaitable[object]], name: str) -> None:
        """Run ``task()`` in the broker's own nursery: it outlives the plugin that started
        it (an HTTP request that unloads the very plugin serving it answers first and
        leaves the unload to this). Its exceptions are logged, never raised."""
        self._broker.start_soon(task, name)

    def _plugin_info(self, loaded: LoadedPlugin) -> PluginInfo:
        broker = self._broker
        return plugin_info(loaded, broker.plugin_manager, broker.dispatcher.stats)

    async def load_plugin(
        self,
        name: str,
        settings: Mapping[str, Any] | None = None,
        *,
        path: str | None = None,
        source_name: str = "api",
    ) -> PluginInfo:
        """Load a plugin (built-in name, entry point, or ``path`` ``module:object``);
        raises ``PluginError`` (``ConfigError`` for a bad table, naming ``source_name``)
        and leaves nothing registered when it cannot load."""
        loaded = await self._broker.plugins.load(name, settings, path=path, source_name=source_name)
        return self._plugin_info(loaded)

    async def unload_plugin(self, name: str) -> None:
        """Unload a plugin; an essential one (``admin``) is refused with ``PluginError``."""
        from ternmq.plugins import ESSENTIAL

        if name in ESSENTIAL:
            raise plugin_error(
                name,
                "is an essential built-in plugin (the admin commands and the control socket of ternmq-admin) "
                "and cannot be disabled",
            )
        await self._broker.plugins.unload(name)

    async def reload_plugin(self, name: str, settings: Mapping[str, Any] | None = None) -> PluginInfo:
        """Load a plugin again, with the table it was loaded with or ``settings`` (files it
        reads are read again). When the new instance cannot load, the old one stays and
        ``PluginError`` (``ConfigError`` for a bad table) says why."""
        loaded = await self._broker.plugins.reload(name, settings, source_name="api" if settings is not None else None)
        return self._plugin_info(loaded)
