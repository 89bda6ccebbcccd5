"""The cluster part of the service face: what a cluster plugin does with this node, and
the listings and actions that span the cluster.

Without a cluster plugin the broker is one node: ``nodes()`` is this one, and the
cluster-wide listings are this node's. The hooks behind them are ``cluster_nodes``,
``cluster_sessions``, ``cluster_disconnect``, ``cluster_plugins`` and
``cluster_metrics`` (docs/hooks.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .routing.topics import mounted_filter
from .values.info import MetricReading, NodeInfo, NodeMetrics, NodePlugins, PluginInfo, SessionInfo

if TYPE_CHECKING:
    from .hooks.registries import Metric
    from .protocol.ports import BrokerCore
    from .values.types import Message, SessionSnapshot


log = logging.getLogger("ternmq.cluster")


class ClusterFace:
    """Service's cluster methods (a base class of Service, which sets ``_broker``)."""

    __slots__ = ()
    _broker: BrokerCore

    if TYPE_CHECKING:  # Service's, which these methods use

        @property
        def node_name(self) -> str: ...

        def sessions(self) -> tuple[SessionInfo, ...]: ...

        def disconnect(self, client_id: str, reason_code: int = ..., *, cleanup: bool = False) -> bool: ...

        def plugins(self, *, internal: bool = False) -> tuple[PluginInfo, ...]: ...

        def metric_list(self) -> tuple[Metric, ...]: ...

    async def nodes(self) -> tuple[NodeInfo, ...]:
        """Every node of the cluster (``cluster show``): a cluster plugin's answer, or
        this node alone."""
        alone = (NodeInfo(self.node_name, True),)
        return tuple(await self._broker.dispatcher.provide("cluster_nodes", default=alone))

    async def all_sessions(self) -> tuple[SessionInfo, ...]:
        """Every session of the cluster: this node's (``sessions()``), then the other
        nodes' (``cluster_sessions``; none without a cluster plugin)."""
        others = await self._broker.dispatcher.provide("cluster_sessions", default=())
        return (*self.sessions(), *others)

    async def disconnect_anywhere(self, client_id: str, *, cleanup: bool = False) -> bool:
        """``disconnect`` (reason 0x98), on whichever node holds the client: this one, or
        another through a cluster plugin (``cluster_disconnect``). False when no node
        has a session of it."""
        if self.disconnect(client_id, cleanup=cleanup):
            return True
        done = await self._broker.dispatcher.provide("cluster_disconnect", client_id=client_id, cleanup=cleanup)
        return bool(done)

    async def all_plugins(self, *, internal: bool = False) -> tuple[NodePlugins, ...]:
        """The plugins of every node (``plugin show``): this node's (``plugins()``), then
        the other nodes' (``cluster_plugins``; none without a cluster plugin)."""
        here = NodePlugins(self.node_name, self.plugins(internal=internal))
        others = await self._broker.dispatcher.provide("cluster_plugins", default=(), internal=internal)
        return (here, *others)

    def metric_readings(self) -> tuple[MetricReading, ...]:
        """Every metric of this node (``metric_list()``), read now: frozen values a
        cluster plugin can send to another node."""
        readings = []
        for metric in self.metric_list():
            reading = metric.reading()
            samples: dict[tuple[str, ...], int | float] | None = None
            if isinstance(reading, dict):
                samples = dict(reading)
            elif reading is not None:
                samples = {(): reading}
            readings.append(MetricReading(metric.kind, metric.name, metric.help, metric.labels, samples))
        return tuple(readings)

    async def all_metrics(self) -> tuple[NodeMetrics, ...]:
        """The metrics of every node (``metrics show``): this node's
        (``metric_readings()``), then the other nodes' (``cluster_metrics``; none without
        a cluster plugin)."""
        others = await self._broker.dispatcher.provide("cluster_metrics", default=())
        return (NodeMetrics(self.node_name, self.metric_readings()), *others)

    async def store_retained(self, message: Message) -> bool:
        """For a cluster plugin: retain ``message`` on this node without routing it (what
        a node that joined late was not sent), through the retainer (``retain_store``).
        False when nothing was kept: no retainer, an empty payload (which only clears),
        or the retainer failed."""
        broker = self._broker
        if not (broker.retain_available and message.payload):
            return False
        return bool(await broker.dispatcher.provide("retain_store", default=True, failed=False, message=message))

    async def leave_cluster(self, node: str) -> int:
        """Remove ``node``, a node that is down, from the cluster (``cluster leave``):
        this node takes over the sessions it held (``cluster_leave``); returns how many.
        ValueError, with nothing done, for this node, a running node, an unknown one, or
        no cluster plugin."""
        if not self._broker.dispatcher.has("cluster_leave"):
            raise ValueError(f"{self.node_name} runs as a single node: leaving a cluster needs a cluster plugin")
        if node == self.node_name:
            raise ValueError(f"{node} is this node: a node leaves the cluster when it stops")
        known = {info.name: info.running for info in await self.nodes()}
        if node not in known:
            raise ValueError(f"no node {node} in the cluster (nodes: {', '.join(sorted(known))})")
        if known[node]:
            raise ValueError(f"{node} is running: stop it, and it leaves the cluster as it stops")
        failed = object()
        taken = await self._broker.dispatcher.provide("cluster_leave", failed=failed, node=node)
        if taken is failed or taken is None:
            raise ValueError(f"{node} could not be removed (see the log)")
        return int(taken)

    async def restore_session(self, snapshot: SessionSnapshot, *, in_store: bool = True) -> bool:
        """For a cluster plugin: make a session this node's while its client is away, as
        a restart restores its own: subscriptions routed, messages where they were,
        expiry running, a will owed published. ``in_store``: taken from the store
        (``take_stored_session``), which keeps it for this node already; else (handed
        over by another node) it is given to the store now. False when this node has a
        session of the client id."""
        lifecycle = self._broker.lifecycle
        if not lifecycle.restore_session(snapshot, self._broker.settings.limits, stored=in_store):
            return False
        if not in_store:
            await lifecycle.save_session(self._broker.sessions[snapshot.client_id])
        return True

    async def route_forwarded(
        self,
        message: Message,
        origin_client_id: str | None = None,
        shared_groups: frozenset[tuple[str, str]] = frozenset(),
    ) -> int:
        """Deliver a message another node routed (a cluster plugin's inbox) to this node's
        matching subscribers, as the router delivers any message; returns the count. Its
        topic is as routed (under the publisher's mountpoint). A retained one is also
        retained here: every node keeps every retained message (VerneMQ replicates them
        too). Of the shared subscriptions, only the groups in ``shared_groups`` ((group,
        filter) pairs, filters as routed) are served here: the publisher's node chose one
        node per group. No hook fires: ``on_publish`` and ``cluster_forward`` fired on
        its node."""
        if message.retain:
            await self._retain_copy(message)
        return await self._broker.router.route(message, origin_client_id, shared_groups=shared_groups)

    async def _retain_copy(self, message: Message) -> None:
        """Retain a forwarded retained message here too (an empty one clears)."""
        broker = self._broker
        if broker.retain_available:
            if message.payload:
                await broker.dispatcher.provide("retain_store", message=message)
            else:
                await broker.dispatcher.provide("retain_delete", topic=message.topic)

    async def route_forwarded_all(
        self, forwarded: Iterable[tuple[Message, str | None, frozenset[tuple[str, str]]]]
    ) -> int:
        """``route_forwarded`` for each (message, origin client id, shared groups) of a
        frame, in order, in one call (a cluster plugin's receiving path: one await fewer
        per message); returns the deliveries. A message that cannot be delivered is
        logged and the others go on."""
        route = self._broker.router.route
        delivered = 0
        for message, origin_client_id, shared_groups in forwarded:
            try:
                if message.retain:
                    await self._retain_copy(message)
                delivered += await route(message, origin_client_id, shared_groups=shared_groups)
            except Exception:
                log.exception("a message forwarded from another node could not be delivered (%s)", message.topic)
        return delivered

    async def hand_over(
        self, client_id: str, *, clean_start: bool = False, deadline: float = math.inf
    ) -> SessionSnapshot | None:
        """For a cluster plugin: ``client_id`` connected to another node, so its session
        here ends (its connection gets DISCONNECT 0x8E); a persistent one is returned,
        with its messages, for that node to resume (``cluster_register``). None when
        there is no session, or a clean one. At start, it waits until the store's
        sessions are restored (a cluster plugin answers before that). Past ``deadline``
        (``trio.current_time()``: the other node stops waiting then) the session stays
        here, and None is returned."""
        await self._broker.sessions_restored.wait()
        return await self._broker.lifecycle.hand_over(client_id, clean_start=clean_start, deadline=deadline)

    def subscribed_filters(self) -> frozenset[str]:
        """Every topic filter this node's sessions subscribe to, as routed (under their
        mountpoints; shared ones as ``$share/GROUP/FILTER``): what a cluster plugin tells
        the other nodes this node wants."""
        return frozenset(
            mounted_filter(session.mountpoint, topic_filter)
            for session in self._broker.sessions.values()
            for topic_filter in session.subscriptions
        )
