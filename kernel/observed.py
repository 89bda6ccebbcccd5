"""The kernel's own metrics, as ``Metric`` values (the service face's ``metric_list``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .hooks.registries import Metric

if TYPE_CHECKING:
    from .protocol.ports import BrokerCore


def kernel_metrics(broker: BrokerCore) -> tuple[Metric, ...]:
    """The broker's counters (values/counters.py), the router's and the sessions' figures."""
    counters = broker.metrics
    router = broker.router
    sessions = broker.sessions

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
    )
