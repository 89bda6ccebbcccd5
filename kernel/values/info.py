"""What the service face returns about the broker: frozen views of a session, a
listener, a plugin, a node, as ``session show``, ``listener show``, ``plugin show`` and
``cluster show`` list them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .config import ListenerConfig


@attrs.frozen
class SessionInfo:
    """One session, online or not, as ``session show`` lists it."""

    client_id: str
    is_online: bool
    user: str | None
    peer_host: str | None
    peer_port: int | None
    protocol: int
    clean_session: bool
    listener: str | None
    subscriptions: int
    inflight: int
    queued: int
    node: str
    mountpoint: str = ""
    # Wall-clock times (time.time()): the session's start, its client's last connect
    # (None if none has connected since a restore), its last client's leaving.
    created_at: float = 0.0
    connected_at: float | None = None
    disconnected_at: float | None = None
    keep_alive: int | None = None  # of the connected client
    # Seconds the session outlives its connection; None: never expires.
    expiry_interval: int | None = 0
    max_inflight: int = 0
    max_queued: int = 0


@attrs.frozen
class ListenerInfo:
    """One listener, running or stopped."""

    name: str
    type: str
    status: str
    address: str
    port: int
    max_connections: int
    active_connections: int
    total_connections: int
    mountpoint: str = ""
    config: ListenerConfig | None = None  # everything it was started with


@attrs.frozen
class PluginInfo:
    """One loaded plugin, as ``plugin show`` lists it (in calling order)."""

    name: str
    kind: str  # "module" (a module of hook functions) or "application" (a plugin object)
    source: str
    version: str
    state: str
    priority: int | None
    hooks: tuple[str, ...]
    # VerneMQ's M:F/A per hook: module:function/number of declared arguments.
    implementations: tuple[str, ...]
    errors: int
    timeouts: int
    # What the plugin says is wrong now (its ``last_error`` attribute, when it has one:
    # a file that did not load, say), or None.
    last_error: str | None = None
    # The table it was loaded with (its [plugins.NAME] keys), None for a plugin
    # registered as a ready object.
    table: Mapping[str, Any] | None = None
    path: str | None = None  # the module:object it was loaded from, when not by name


@attrs.frozen
class NodeInfo:
    """One node of the cluster, as ``cluster show`` lists it (VerneMQ's Node, Running)."""

    name: str
    running: bool


@attrs.frozen
class NodePlugins:
    """The plugins loaded on one node, in its calling order (``plugin show`` across a
    cluster)."""

    node: str
    plugins: tuple[PluginInfo, ...]


@attrs.frozen
class MetricReading:
    """One metric of one node, read (``metrics show`` across a cluster).

    ``samples``: the value per label values, in the order ``labels`` names them (one
    sample under ``()`` for a metric without labels); None when the metric's reader
    failed (``Metric.reading()``)."""

    kind: str  # "counter" or "gauge"
    name: str
    help: str = ""
    labels: tuple[str, ...] = ()
    samples: Mapping[tuple[str, ...], int | float] | None = None


@attrs.frozen
class NodeMetrics:
    """Every metric of one node, read at once."""

    node: str
    metrics: tuple[MetricReading, ...]
