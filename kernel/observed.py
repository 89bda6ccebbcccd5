"""What the service face reports of the kernel: its own metrics as ``Metric`` values
(``metric_list``), a loaded plugin as ``PluginInfo`` (``plugins``) and a session as
``SessionInfo`` (``sessions``)."""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING

import attrs
import pluggy

from .codec import PacketType
from .hooks.registries import Metric
from .values.info import PluginInfo, SessionInfo

if TYPE_CHECKING:
    from .hooks.dispatch import HookStats
    from .manager import LoadedPlugin
    from .protocol.ports import BrokerCore
    from .routing.session import Session


def kernel_metrics(broker: BrokerCore) -> tuple[Metric, ...]:
    """The broker's counters (values/counters.py), the router's and the sessions' figures,
    and the calls, errors and timeouts of every plugin's hooks."""
    counters = broker.metrics
    router = broker.router
    sessions = broker.sessions
    hook_stats = broker.dispatcher.stats
    packets = broker.packet_counts

    def offline() -> int:
        return sum(1 for s in sessions.values() if s.connection is None)

    def per_hook(field: str, help: str) -> Metric:
        return Metric(
            f"hook_{field}",
            "counter",
            lambda: {key: getattr(stats, field) for key, stats in hook_stats.items()},
            help,
            labels=("plugin", "hook"),
        )

    def counter(name: str) -> Metric:
        return Metric(name, "counter", lambda: int(getattr(counters, name)), name.replace("_", " "))

    return (
        *(counter(name) for name in attrs.fields_dict(type(counters))),
        Metric("messages_routed", "counter", lambda: router.messages_routed, "messages routed"),
        Metric("deliveries", "counter", lambda: router.deliveries, "messages delivered or queued"),
        Metric("messages_dropped", "counter", lambda: router.drops, "deliveries dropped"),
        Metric("sessions", "gauge", lambda: len(sessions), "sessions, online or not"),
        Metric("clients_online", "gauge", lambda: len(sessions) - offline(), "sessions with a connected client"),
        Metric("sessions_offline", "gauge", offline, "sessions without a connected client"),
        Metric("subscriptions", "gauge", lambda: len(router.trie), "subscriptions"),
        Metric(
            "packets_received",
            "counter",
            lambda: _by_type(packets.received),
            "MQTT packets received, by type",
            labels=("type",),
        ),
        Metric(
            "packets_sent", "counter", lambda: _by_type(packets.sent), "MQTT packets sent, by type", labels=("type",)
        ),
        Metric(
            "packet_bytes_received",
            "counter",
            lambda: _by_type(packets.received_bytes),
            "bytes of the MQTT packets received, by type",
            labels=("type",),
        ),
        Metric(
            "packet_bytes_sent",
            "counter",
            lambda: _by_type(packets.sent_bytes),
            "bytes of the MQTT packets sent, by type",
            labels=("type",),
        ),
        per_hook("calls", "calls of a plugin's hook implementation"),
        per_hook("errors", "calls that raised"),
        per_hook("timeouts", "calls that ran past their deadline"),
        per_hook("seconds", "seconds spent in the calls (divided by hook_calls: the mean latency)"),
    )


def _by_type(counts: list[int]) -> dict[tuple[str, ...], int]:
    return {(PacketType(number).name,): count for number, count in enumerate(counts) if count and number}


def plugin_info(
    loaded: LoadedPlugin, plugin_manager: pluggy.PluginManager, stats: Mapping[tuple[str, str], HookStats]
) -> PluginInfo:
    """One loaded plugin as ``plugin show`` lists it: hooks, VerneMQ's M:F/A, counts."""
    callers = sorted(plugin_manager.get_hookcallers(loaded.plugin) or [], key=lambda c: c.name)
    implementations = []
    for caller in callers:
        impl = next(i for i in caller.get_hookimpls() if i.plugin is loaded.plugin)
        function = impl.function
        implementations.append(f"{function.__module__}:{function.__qualname__}/{len(impl.argnames)}")
    own = [s for (plugin, _), s in stats.items() if plugin == loaded.name]
    return PluginInfo(
        name=loaded.name,
        kind="module" if isinstance(loaded.plugin, ModuleType) else "application",
        source=loaded.source,
        version=loaded.version,
        state=loaded.state,
        priority=loaded.settings.priority,
        hooks=tuple(caller.name for caller in callers),
        implementations=tuple(implementations),
        errors=sum(s.errors for s in own),
        timeouts=sum(s.timeouts for s in own),
        last_error=problem if isinstance(problem := getattr(loaded.plugin, "last_error", None), str) else None,
        table=dict(loaded.table) if loaded.table is not None else None,
        path=loaded.path,
    )


def session_info_of(session: Session, node: str) -> SessionInfo:
    """A session as ``SessionInfo`` (``sessions``, ``session_info``)."""
    conn = session.connection
    return SessionInfo(
        client_id=session.client_id,
        is_online=conn is not None,
        user=session.username,
        peer_host=conn.peer_host if conn else None,
        peer_port=conn.peer_port if conn else None,
        protocol=session.protocol_level,
        clean_session=not session.persistent,
        listener=conn.listener.name if conn else None,
        subscriptions=len(session.subscriptions),
        inflight=len(session.inflight),
        queued=len(session.queue),
        node=node,
        mountpoint=session.mountpoint,
        created_at=session.created_at,
        connected_at=session.connected_at,
        disconnected_at=session.disconnected_at,
        keep_alive=conn.keep_alive if conn else None,
        expiry_interval=session.expiry_interval,
        max_inflight=session.max_inflight,
        max_queued=session.max_queued,
    )
