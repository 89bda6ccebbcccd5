"""The kernel's own metrics, as ``Metric`` values (the service face's ``metric_list``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .hooks.registries import Metric

if TYPE_CHECKING:
    from .protocol.ports import BrokerCore


def kernel_metrics(broker: BrokerCore) -> tuple[Metric, ...]:
    """The broker's counters (values/counters.py), the router's and the sessions' figures,
    and the calls, errors and timeouts of every plugin's hooks."""
    counters = broker.metrics
    router = broker.router
    sessions = broker.sessions
    hook_stats = broker.dispatcher.stats

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
        Metric(
            "clients_online",
            "gauge",
            lambda: sum(1 for s in sessions.values() if s.connection is not None),
            "sessions with a connected client",
        ),
        Metric("subscriptions", "gauge", lambda: len(router.trie), "subscriptions"),
        per_hook("calls", "calls of a plugin's hook implementation"),
        per_hook("errors", "calls that raised"),
        per_hook("timeouts", "calls that ran past their deadline"),
    )
