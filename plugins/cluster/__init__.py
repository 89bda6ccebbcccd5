"""Several ternmq nodes as one broker, through Redis (the ``cluster`` plugin).

Turned on by a ``[cluster]`` table in the configuration (loaded before every
``[plugins.NAME]`` one). Every node of a cluster points at the same Redis (7, or
Valkey); nothing else joins them.

* **Nodes.** Each node writes a heartbeat into the hash ``PREFIX:nodes`` every
  ``heartbeat_interval`` seconds; a node whose last heartbeat is older than
  ``node_timeout`` is shown as not running (``cluster show``, VerneMQ's Node/Running)
  and gets nothing forwarded.
* **Routes.** Each node keeps the topic filters its sessions subscribe to in Redis and
  announces changes (routes.py); the others keep a local copy, so a message goes only to
  the nodes with a matching subscriber. A new subscription is announced within a few
  milliseconds; a removed one within ``route_sweep_interval`` (until then the other
  node may still be sent messages nobody there wants: harmless, and cheap).
* **Forwarding.** ``cluster_forward`` (after local routing) queues the message for each
  node that wants it: one bounded queue and one forwarder task per peer node, which
  waits ``linger`` seconds after the first message and sends everything queued by then
  in one frame (frames.py), one Redis PUBLISH for many messages. A full queue drops the
  message and counts it (``cluster_dropped``). The receiving node delivers each to its
  own subscribers as its router delivers any message. Retained messages go to every
  node, and every node retains them (VerneMQ replicates retained messages too).

* **Client ids.** A client id is unique in the cluster (registry.py): a CONNECT claims
  it, in batches, and a node that held it hands its session over (the old connection gets
  DISCONNECT 0x8E; a persistent session's subscriptions and queued messages move with
  it, and the CONNACK says session present).
* **Redis lost.** Every node keeps serving its own clients. The plugin waits for Redis
  (a socket probe every 0.25 s), then subscribes again and republishes and rereads
  routes and heartbeats; frames wait in the peer's bounded queue meanwhile. Frames are
  acknowledged by the node that delivered them and sent again until they are
  (forwarding.py), so a restart of Redis loses no forwarded message.

* **Shared subscriptions.** A group with members on several nodes gets each message
  once: the publisher's node chooses a node with members, in turn
  (``cluster_shared_here`` for its own members, ``cluster_forward`` for the others), and
  the frame names the groups the receiving node serves.

* **Cluster-wide admin.** Each node is asked through its inbox (questions.py):
  ``session show`` lists every node's sessions (``cluster_sessions``), ``plugin show``
  their plugins (``cluster_plugins``), ``metrics show`` sums their metrics
  (``cluster_metrics``), EMQX's ``/api/v5/clients`` pages over every node's clients, and
  ``session disconnect`` reaches the node holding the client (``cluster_disconnect``).
  A node that joins copies the retained messages it has none of from a running node.

* **Netsplit.** While Redis is lost, VerneMQ's ``allow_*_during_netsplit`` switches
  decide (netsplit.py, loaded only then).

* **Sessions that outlive their node.** With the Redis store (store.py, the plugin
  ``redis_store``), a client whose node is down resumes its session on the node it
  connects to (registrar.py takes it from the store: ``Service.take_stored_session``).

Config keys (``[cluster]``): ``redis_url`` (required), ``prefix`` ("ternmq"),
``heartbeat_interval`` (1.0), ``node_timeout`` (5.0), ``linger`` (0.001),
``max_frame_messages`` (500), ``forward_queue`` (10000 per peer),
``route_sweep_interval`` (2.0), ``claim_sweep_interval`` (10.0).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio
from coredis.retry import NoRetryPolicy

from ternmq.kernel import NodeInfo, Service, hookimpl

from . import netsplit
from .client import connect
from .forwarding import Forwarding
from .frames import inbox_channel
from .questions import Questions
from .registrar import Registrar
from .routes import RemoteRoutes, notice, routes_key
from .state import COMMAND_TIMEOUT, REDIS_DOWN, RETRY_DELAY, Config

__all__ = ["Config", "Plugin"]

log = logging.getLogger("ternmq.plugins.cluster")

# The plugin that holds VerneMQ's netsplit switches while Redis is lost (netsplit.py).
GUARD = "cluster-netsplit"
GUARD_PATH = "ternmq.plugins.cluster.netsplit:Guard"
# Seconds after a resynchronisation when the other nodes' routes are read once more.
RESYNC_AGAIN = 1.0
# A node Redis no longer knows is forgotten after this many node timeouts of silence.
FORGET_AFTER = 10


class Plugin(Registrar, Questions, Forwarding):
    """The cluster plugin (module docstring)."""

    # -- start and stop -----------------------------------------------------------------

    async def serve(self, service: Service, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.service = service
        self.node = service.node_name
        self.routes = RemoteRoutes(self.node)
        config = self.config
        with trio.move_on_after(config.node_timeout) as waiting:
            if not await self.reachable(once=True):
                raise ConnectionError(f"cannot reach Redis at {config.redis_url}: connection refused")
        if waiting.cancelled_caught:
            raise ConnectionError(f"cannot reach Redis at {config.redis_url}: no answer in {config.node_timeout} s")
        failure: Exception | None = None
        redis = connect(config.redis_url)
        async with redis:
            self.redis = redis
            try:
                with trio.fail_after(config.node_timeout):
                    await redis.ping()
            except trio.TooSlowError:
                failure = ConnectionError(f"Redis at {config.redis_url}: no answer in {config.node_timeout} s")
            except Exception as exc:  # a password refused, not a Redis...: raised below, outside
                failure = ConnectionError(f"Redis at {config.redis_url} does not serve us: {exc}")
            if failure is None:
                try:
                    await self._no_other_node_named_so()
                except ConnectionError as exc:
                    failure = exc
            if failure is None:
                await self._run(task_status)
        if failure is not None:
            # Out here, not in coredis' nursery: the load fails with this one error.
            raise failure

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        """Join and serve, once Redis answers; leave when cancelled."""
        config = self.config
        try:
            await self._heartbeat()
            await self._publish_routes(reset=True)
            await self._load_routes()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._listen)
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._route_sync)
                nursery.start_soon(self._registrar)
                nursery.start_soon(self._sweep_claims)
                nursery.start_soon(self._acknowledge)
                nursery.start_soon(self._resend_overdue)
                log.info("cluster: node %s joined through %s", self.node, config.redis_url)
                self.alive = True
                task_status.started()
        finally:
            self.alive = False
            with trio.CancelScope(shield=True):
                await self._netsplit(False)
            with trio.move_on_after(2) as leaving:
                leaving.shield = True
                await self._leave()

    async def _no_other_node_named_so(self) -> None:
        """A running node of this name refuses the start (ConnectionError): two would share
        one inbox and erase each other's routes. A heartbeat that stops changing is a node
        that was killed (restarted here): it is waited out, node_timeout at most."""
        assert self.redis is not None
        key = f"{self.config.prefix}:nodes"
        first = await self.redis.hget(key, self.node)
        if first is None:
            return
        await trio.sleep(self.config.heartbeat_interval * 1.5)
        with trio.move_on_after(self.config.node_timeout):
            if await self.redis.hget(key, self.node) == first:
                return  # nobody beats under this name any more
        # Beating still (or Redis did not answer): another node.
        raise ConnectionError(f"a running node is named {self.node} already: give each node its own node_name")

    async def _leave(self) -> None:
        """Unloaded or stopped: this node's routes and heartbeat go (a killed node's stay
        until its heartbeat is too old). On a connection of its own: the plugin's are
        being cancelled with it."""
        try:
            async with connect(self.config.redis_url) as redis:
                await self._remove_node(redis, self.node)
        except Exception as exc:
            log.warning("cluster: could not leave cleanly: %s", exc)

    # -- nodes --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        assert self.redis is not None
        key = f"{self.config.prefix}:nodes"
        await self.redis.hset(key, {self.node: repr(time.time())})
        beats = await self.redis.hgetall(key)
        # Merged with what is known: a Redis that restarted empty has lost the other
        # nodes' beats, and they must not count as down until they beat again. A node
        # Redis does not know and that has been silent long is forgotten.
        heartbeats = dict(self.heartbeats)
        in_redis = set()
        for name, value in beats.items():
            try:
                node, beat = name.decode(), float(value)
            except (UnicodeDecodeError, ValueError):  # not a heartbeat: not a node's
                continue
            in_redis.add(node)
            heartbeats[node] = max(heartbeats.get(node, 0.0), beat)
        now, forgotten_after = time.time(), FORGET_AFTER * self.config.node_timeout
        self.heartbeats = {n: b for n, b in heartbeats.items() if n in in_redis or now - b < forgotten_after}

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.config.heartbeat_interval)
            try:
                with trio.fail_after(COMMAND_TIMEOUT):
                    await self._heartbeat()
            except (*REDIS_DOWN, trio.TooSlowError) as exc:
                log.warning("cluster: heartbeat failed: %s", exc)
                await self.reachable()
            except Exception as exc:
                log.warning("cluster: heartbeat failed: %s", exc)

    @hookimpl
    def cluster_nodes(self) -> list[NodeInfo]:
        now = time.time()
        nodes = {self.node, *self.heartbeats}
        return [NodeInfo(name, name == self.node or self.running(name, now)) for name in sorted(nodes)]

    # -- routes -------------------------------------------------------------------------

    async def _load_routes(self, *, merge: bool = False) -> None:
        """Every other node's filters, read from Redis (at start; merged in after a gap
        or a reconnection, see RemoteRoutes.replace)."""
        assert self.redis is not None
        for node in list(self.heartbeats):
            if node != self.node:
                members = await self.redis.smembers(routes_key(self.config.prefix, node))
                self.routes.replace(node, (member.decode() for member in members), merge=merge)

    async def _publish_routes(self, *, reset: bool = False) -> None:
        """Bring this node's filters in Redis up to date and announce the change."""
        assert self.redis is not None and self.service is not None
        current = self.service.subscribed_filters()
        key = routes_key(self.config.prefix, self.node)
        added, removed = current - self.published, self.published - current
        if not (added or removed or reset):
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            if reset:
                pipe.delete([key])
                added, removed = current, frozenset()
            if added:
                pipe.sadd(key, list(added))
            if removed:
                pipe.srem(key, list(removed))
            pipe.publish(f"{self.config.prefix}:routes", notice(self.node, added=added, removed=removed, reset=reset))
        self.published = current

    async def _route_sync(self) -> None:
        """Announce new subscriptions at once, removed ones at the next sweep; after a
        reconnection to Redis, everything again (a restarted Redis has lost the routes
        and heartbeats; messages announced meanwhile were lost)."""
        while True:
            with trio.move_on_after(self.config.route_sweep_interval):
                await self._routes_changed.wait()
            self._routes_changed = trio.Event()
            try:
                if self._resync:
                    self._resync = False
                    self.resyncs += 1
                    await self._heartbeat()
                    await self._publish_routes(reset=True)
                    await self._load_routes(merge=True)
                    await self._claim_again()
                    log.info("cluster: routes resynchronised after a reconnection to Redis")
                    # Read once more a moment later: a node that came back after this one
                    # read may have announced its routes before this node listened again.
                    assert self._nursery is not None
                    self._nursery.start_soon(self._load_routes_later)
                else:
                    await self._publish_routes()
            except Exception as exc:
                self._resync = True
                log.warning("cluster: routes not published: %s", exc)
                await trio.sleep(RETRY_DELAY)

    async def _load_routes_later(self) -> None:
        await trio.sleep(RESYNC_AGAIN)
        try:
            await self._load_routes(merge=True)
        except Exception as exc:
            log.warning("cluster: routes not read again: %s", exc)

    async def _claim_again(self) -> None:
        """This node's client ids, claimed again with their clients' CONNECT times (a
        restarted Redis has lost them; one a later CONNECT elsewhere claimed meanwhile
        stays that node's, and the client here goes)."""
        assert self.service is not None
        for info in self.service.sessions():
            self.batches.claim(info.client_id, True, at=info.connected_at or info.created_at)

    @hookimpl
    def on_subscribe(self) -> None:
        self._routes_changed.set()

    @hookimpl
    def on_unsubscribe(self) -> None:
        # At once, not at the next sweep: a shared group's node must not keep its turn.
        self._routes_changed.set()

    # -- receiving ----------------------------------------------------------------------

    async def _listen(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """This node's inbox and the route announcements; subscribed again (and the
        routes resynchronised) once a lost Redis is back."""
        assert self.redis is not None
        prefix = self.config.prefix
        inbox, routes = inbox_channel(prefix, self.node), f"{prefix}:routes"
        started = False
        while True:
            try:
                async with self.redis.pubsub(channels=[inbox, routes], retry_policy=NoRetryPolicy()) as pubsub:
                    if not started:
                        started = True
                        task_status.started()
                    else:
                        self._resync = True
                        self._routes_changed.set()
                    await self._dispatch(pubsub, inbox)
            except* REDIS_DOWN as lost:
                # Torn down with the plugin (unloaded, stopping), coredis' tasks close their
                # streams under each other: that is no lost Redis, and the cancellation
                # ends this task below.
                if trio.current_effective_deadline() != -math.inf:
                    log.warning("cluster: lost Redis (%r); waiting for it", lost.exceptions[0])
            if not started:
                raise ConnectionError("cannot subscribe to the cluster's channels")
            await self._netsplit(True)
            await self.reachable()
            await self._netsplit(False)

    async def _netsplit(self, split: bool) -> None:
        """Put VerneMQ's netsplit switches in force while Redis is lost (netsplit.py)."""
        assert self.service is not None
        loaded = GUARD in {info.name for info in self.service.plugins()}
        try:
            if split and not loaded:
                await self.service.load_plugin(GUARD, {"priority": netsplit.PRIORITY}, path=GUARD_PATH)
                log.warning("cluster: netsplit: the allow_*_during_netsplit switches decide now")
            elif not split and loaded:
                await self.service.unload_plugin(GUARD)
                log.info("cluster: the netsplit is over")
        except Exception:  # the switches are a policy: without them clients are served
            log.exception("cluster: the netsplit switches could not be %s", "set" if split else "lifted")

    async def _dispatch(self, pubsub: Any, inbox: str) -> None:
        async for item in pubsub:
            try:
                await self._item(item, inbox)
            except Exception:  # whatever comes from Redis, the inbox goes on
                log.exception("cluster: a message on %r could not be read", item.get("channel"))

    async def _item(self, item: Any, inbox: str) -> None:
        if item["type"] != "message":
            return
        channel = item["channel"].decode() if isinstance(item["channel"], bytes) else item["channel"]
        data = item["data"]
        if not isinstance(data, bytes):
            return
        if channel == inbox:
            await self._receive(data)
        else:
            try:
                sender = self.routes.apply(data)
            except ValueError as exc:
                log.warning("cluster: a route notice that does not read: %s", exc)
                return
            if sender is None:
                return
            node, leaving = sender
            if leaving:
                self.heartbeats.pop(node, None)
                self._forget_peer(node)
            else:  # a node that speaks runs (its heartbeat may not have been read yet)
                self.heartbeats[node] = max(self.heartbeats.get(node, 0.0), time.time())

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        registry.counter("cluster_forwarded", lambda: self.forwarded, "messages forwarded to other nodes")
        registry.counter("cluster_received", lambda: self.received, "messages received from other nodes")
        registry.counter("cluster_dropped", lambda: self.dropped, "messages not forwarded (full queue, Redis down)")
        registry.counter("cluster_frame_gaps", lambda: self.gaps, "frames from other nodes found missing")
        registry.counter(
            "cluster_resent", lambda: self.resent, "messages sent again to a node that did not acknowledge them"
        )
        registry.counter("cluster_resyncs", lambda: self.resyncs, "route resynchronisations after Redis came back")
        registry.counter("cluster_takeovers", lambda: self.takeovers, "sessions taken over from another node")
