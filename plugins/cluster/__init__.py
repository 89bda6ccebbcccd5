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
  routes and heartbeats; frames wait in the peer's bounded queue meanwhile.

* **Shared subscriptions.** A group with members on several nodes gets each message
  once: the publisher's node chooses a node with members, in turn
  (``cluster_shared_here`` for its own members, ``cluster_forward`` for the others), and
  the frame names the groups the receiving node serves.

* **Cluster-wide admin.** ``session show`` lists every node's sessions
  (``cluster_sessions``: each node asked through its inbox) and ``session disconnect``
  reaches the node holding the client (``cluster_disconnect``).

* **Netsplit.** While Redis is lost, VerneMQ's ``allow_*_during_netsplit`` switches
  decide (netsplit.py, loaded only then).

What this plugin does not do yet: sessions and queued messages kept in Redis (a node
that dies takes its sessions with it), the other listings cluster-wide (``plugin show``, ``metrics show``, EMQX's ``/clients``).

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
from urllib.parse import urlsplit

import anyio
import attrs
import coredis
import trio
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.retry import NoRetryPolicy

from ternmq.kernel import (
    ClientInfo,
    Message,
    NodeInfo,
    Service,
    SessionInfo,
    SessionSnapshot,
    hookimpl,
    session_from_json,
    session_to_json,
)

from . import netsplit
from .client import connect
from .frames import Control, Forwarded, Group, decode_frame, encode_control, encode_frame, inbox_channel
from .registry import CLAIM, RELEASE, Batches, Claim, clients_key
from .routes import RemoteRoutes, notice, routes_key

log = logging.getLogger("ternmq.plugins.cluster")

# Seconds between tries when Redis cannot be reached: short, so a restarted Redis is met
# again within a quarter second. The plugin waits for Redis itself (a plain socket,
# reachable()) rather than through coredis' retries: its pub/sub reconnects silently
# (what was published meanwhile is lost, unannounced) with a backoff growing to 16 s, and
# each failed connection attempt leaves streams unclosed.
RETRY_DELAY = 0.25
# The plugin that holds VerneMQ's netsplit switches while Redis is lost (netsplit.py).
GUARD = "cluster-netsplit"
GUARD_PATH = "ternmq.plugins.cluster.netsplit:Guard"
# Seconds after a resynchronisation when the other nodes' routes are read once more.
RESYNC_AGAIN = 1.0
# Seconds one Redis command may take before it counts as failed (a lost connection).
COMMAND_TIMEOUT = 2.0
# Seconds a question to another node (a takeover, session show) waits for its answer.
ASK_TIMEOUT = 2.0
# Bytes of payload in one frame, about: far under Redis' 32 MB pub/sub output limit.
MAX_FRAME_BYTES = 4 * 1024 * 1024
NO_GROUPS: frozenset[Group] = frozenset()
# Errors of a lost or refused Redis connection, as coredis and anyio raise them.
REDIS_DOWN = (RedisConnectionError, OSError, anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)


def _positive(instance: Any, attribute: Any, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"must be a number > 0, not {value!r}")


@attrs.frozen
class Config:
    redis_url: str = attrs.field(validator=attrs.validators.instance_of(str))
    prefix: str = attrs.field(default="ternmq", validator=attrs.validators.min_len(1))
    heartbeat_interval: float = attrs.field(default=1.0, validator=_positive)
    node_timeout: float = attrs.field(default=5.0, validator=_positive)
    linger: float = attrs.field(default=0.001, validator=attrs.validators.ge(0))
    max_frame_messages: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    forward_queue: int = attrs.field(default=10_000, validator=attrs.validators.ge(1))
    route_sweep_interval: float = attrs.field(default=2.0, validator=_positive)
    claim_sweep_interval: float = attrs.field(default=10.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url: not a redis://, rediss:// or unix:// URL: {self.redis_url!r}")
        if self.node_timeout <= self.heartbeat_interval:
            raise ValueError("node_timeout must be longer than heartbeat_interval")


class Plugin:
    """The cluster plugin (module docstring)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node = ""
        self.redis: coredis.Redis[bytes] | None = None
        self.routes = RemoteRoutes("")
        self.heartbeats: dict[str, float] = {}  # node -> its last heartbeat (Unix time)
        self.published: frozenset[str] = frozenset()  # this node's filters as Redis has them
        self.service: Service | None = None
        self._nursery: trio.Nursery | None = None
        self._peers: dict[str, trio.MemorySendChannel[Forwarded]] = {}
        # Shared groups: whose turn it is, and the node chosen per group for a message
        # being routed here (cluster_shared_here, then cluster_forward, in one publish).
        self._turns: dict[Group, int] = {}
        self._choices: dict[int, dict[Group, str]] = {}
        # The other nodes' matches of the message being routed here, read once for both
        # cluster_shared_here and cluster_forward.
        self._match_cache: tuple[Message, tuple[set[str], dict[Group, list[str]]]] | None = None
        self._sequences: dict[str, int] = {}  # sending node -> the last frame's sequence
        self._routes_changed = trio.Event()
        self._resync = False  # the subscriber reconnected: Redis may have lost everything
        self.batches = Batches()
        self._questions: dict[str, tuple[trio.Event, list[dict[str, Any]]]] = {}  # request id -> answer
        self._next_request = 0
        self.takeovers = 0
        self.alive = False  # its tasks run (False once they ended: the plugin failed or stops)
        self.resyncs = 0
        self.forwarded = 0
        self.received = 0
        self.dropped = 0
        self.gaps = 0

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
        with trio.move_on_after(self.config.node_timeout + self.config.heartbeat_interval):
            while True:
                await trio.sleep(self.config.heartbeat_interval * 1.5)
                if await self.redis.hget(key, self.node) == first:
                    return  # nobody beats under this name any more
                raise ConnectionError(f"a running node is named {self.node} already: give each node its own node_name")
        # Still beating after node_timeout: another node.
        raise ConnectionError(f"a running node is named {self.node} already: give each node its own node_name")

    async def _leave(self) -> None:
        """Unloaded or stopped: this node's routes and heartbeat go (a killed node's stay
        until its heartbeat is too old). On a connection of its own: the plugin's are
        being cancelled with it."""
        prefix = self.config.prefix
        try:
            async with connect(self.config.redis_url) as redis:
                await redis.delete([routes_key(prefix, self.node)])
                await redis.hdel(f"{prefix}:nodes", [self.node])
                await redis.publish(f"{prefix}:routes", notice(self.node, leaving=True))
        except Exception as exc:
            log.warning("cluster: could not leave cleanly: %s", exc)

    # -- nodes --------------------------------------------------------------------------

    def running(self, node: str, now: float | None = None) -> bool:
        beat = self.heartbeats.get(node)
        return beat is not None and (now or time.time()) - beat < self.config.node_timeout

    async def _heartbeat(self) -> None:
        assert self.redis is not None
        key = f"{self.config.prefix}:nodes"
        await self.redis.hset(key, {self.node: repr(time.time())})
        beats = await self.redis.hgetall(key)
        heartbeats = {}
        for name, value in beats.items():
            try:
                heartbeats[name.decode()] = float(value)
            except (UnicodeDecodeError, ValueError):  # not a heartbeat: not a node's
                continue
        self.heartbeats = heartbeats

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
        """This node's client ids, written again (a restarted Redis has lost them)."""
        assert self.redis is not None and self.service is not None
        held = {info.client_id: self.node for info in self.service.sessions()}
        if held:
            await self.redis.hset(clients_key(self.config.prefix), held)

    @hookimpl
    def on_subscribe(self) -> None:
        self._routes_changed.set()

    @hookimpl
    def on_unsubscribe(self) -> None:
        # At once, not at the next sweep: a shared group's node must not keep its turn.
        self._routes_changed.set()

    # -- client ids ---------------------------------------------------------------------

    @hookimpl
    async def cluster_register(self, client: ClientInfo, clean_start: bool) -> SessionSnapshot | None:
        claim = self.batches.claim(client.client_id, clean_start)
        if not self.alive:
            return None  # the plugin's tasks ended (it failed): as a single node
        await claim.done.wait()
        if claim.session is not None:
            self._routes_changed.set()  # its subscriptions come here with it
        return claim.session

    async def _sweep_claims(self) -> None:
        """Give back, now and then, the client ids this node claimed and holds no session
        of any more (gone clients): cheaper than a Redis write at every disconnect."""
        assert self.redis is not None and self.service is not None
        key = clients_key(self.config.prefix)
        node = self.node.encode()
        while True:
            await trio.sleep(self.config.claim_sweep_interval)
            try:
                mine = [field.decode() async for field, holder in self.redis.hscan_iter(key) if holder == node]
            except Exception as exc:
                log.warning("cluster: client ids not swept: %s", exc)
                continue
            for client_id in mine:
                if self.service.session_info(client_id) is None:
                    self.batches.release(client_id)

    async def _registrar(self) -> None:
        """Claims and releases, batched (registry.py); takeovers of claims another node
        held."""
        assert self.redis is not None and self._nursery is not None
        key = clients_key(self.config.prefix)
        claim_script = self.redis.register_script(CLAIM)
        release_script = self.redis.register_script(RELEASE)
        while True:
            await self.batches.ready.wait()
            if self.config.linger:
                await trio.sleep(self.config.linger)
            claims, releases = self.batches.take()
            previous: list[Any] = []
            try:
                if releases:
                    await release_script(keys=[key], args=[self.node, *releases])
                if claims:
                    previous = await claim_script(keys=[key], args=[self.node, *(c.client_id for c in claims)])
            except Exception as exc:  # Redis down: they connect as on one node
                log.warning("cluster: %d client ids not claimed: %s", len(claims), exc)
                for claim in claims:
                    claim.done.set()
                # Until Redis is back, claims are answered at once (claimed again then).
                with trio.CancelScope() as waiting:
                    self._nursery.start_soon(self._answer_claims_meanwhile, waiting)
                    await self.reachable()
                waiting.cancel()
                self._resync = True
                self._routes_changed.set()
                continue
            for claim, owner in zip(claims, previous or (), strict=False):
                held = owner.decode("utf-8", "replace") if isinstance(owner, bytes) else str(owner or "")
                if held and held != self.node and self.running(held):
                    self._nursery.start_soon(self._take_over, claim, held)
                    if claim.clean_start:
                        claim.done.set()  # nothing to resume: the old node is told meanwhile
                else:
                    claim.done.set()

    async def _answer_claims_meanwhile(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await self.batches.ready.wait()
                for claim in self.batches.take()[0]:
                    claim.done.set()

    async def _take_over(self, claim: Claim, node: str) -> None:
        """Ask ``node`` for ``claim``'s session (a question, as _ask's); no answer in time:
        the client connects as if new."""
        try:
            answer = await self._ask(node, "takeover", client_id=claim.client_id, clean_start=claim.clean_start)
            if answer is not None and answer["session"] is not None and not claim.clean_start:
                claim.session = session_from_json(claim.client_id, answer["session"])
        except Exception as exc:
            log.warning("cluster: %s not taken over from %s: %s", claim.client_id, node, exc)
        finally:
            claim.done.set()
        self.takeovers += 1

    # -- asking other nodes -------------------------------------------------------------

    async def _ask(self, node: str, kind: str, **body: Any) -> dict[str, Any] | None:
        """Ask ``node`` a question (a control frame); its answer's body, or None when it
        does not answer within the node timeout."""
        assert self.redis is not None
        self._next_request += 1
        request = f"{self.node}/{self._next_request}"
        answered = trio.Event()
        answers: list[dict[str, Any]] = []
        self._questions[request] = (answered, answers)
        try:
            question = encode_control(kind, self.node, id=request, **body)
            await self.redis.publish(inbox_channel(self.config.prefix, node), question)
            with trio.move_on_after(self._ask_timeout):
                await answered.wait()
        finally:
            self._questions.pop(request, None)
        return answers[0] if answers else None

    @property
    def _ask_timeout(self) -> float:
        # Well inside the hook timeout of what asks (a CONNECT, session show): a node that
        # died a moment ago, not yet counted down, costs this much and no more.
        return min(self.config.node_timeout, ASK_TIMEOUT)

    async def _answer(self, control: Control, **body: Any) -> None:
        assert self.redis is not None
        frame = encode_control("answer", self.node, id=control.body["id"], **body)
        await self.redis.publish(inbox_channel(self.config.prefix, control.node), frame)

    @hookimpl
    async def cluster_sessions(self) -> list[SessionInfo]:
        found: list[SessionInfo] = []

        async def ask(node: str) -> None:
            answer = await self._ask(node, "sessions")
            if answer is None:
                log.warning("cluster: %s did not list its sessions in time", node)
                return
            found.extend(SessionInfo(**fields) for fields in answer["sessions"])

        now = time.time()
        async with trio.open_nursery() as nursery:
            for node in sorted(self.heartbeats):
                if node != self.node and self.running(node, now):
                    nursery.start_soon(ask, node)
        return sorted(found, key=lambda info: (info.node, info.client_id))

    @hookimpl
    async def cluster_disconnect(self, client_id: str, cleanup: bool) -> bool:
        assert self.redis is not None
        holder = await self.redis.hget(clients_key(self.config.prefix), client_id)
        node = holder.decode() if isinstance(holder, bytes) else None
        if node is None or node == self.node or not self.running(node):
            return False
        answer = await self._ask(node, "disconnect", client_id=client_id, cleanup=cleanup)
        return bool(answer and answer.get("done"))

    async def _control(self, control: Control) -> None:
        assert self.redis is not None and self.service is not None
        body = control.body
        if control.kind == "answer":
            waiting = self._questions.get(str(body["id"]))
            if waiting is not None:
                waiting[1].append(body)
                waiting[0].set()
        elif control.kind == "sessions":
            await self._answer(control, sessions=[attrs.asdict(info) for info in self.service.sessions()])
        elif control.kind == "disconnect":
            done = self.service.disconnect(str(body["client_id"]), cleanup=bool(body["cleanup"]))
            await self._answer(control, done=done)
        elif control.kind == "takeover":
            assert self._nursery is not None
            self._nursery.start_soon(self._hand_over, control)  # the inbox goes on meanwhile

    # -- forwarding ---------------------------------------------------------------------

    @hookimpl
    def cluster_shared_here(self, group: str, topic_filter: str, message: Message) -> bool:
        """One node per shared group and message, in turn among the running nodes with
        members (this one has some: the router asks); the choice goes with the message
        (cluster_forward)."""
        remote = self._targets(message)[1].get((group, topic_filter), [])
        chosen = self._choose((group, topic_filter), [self.node, *remote])
        if len(self._choices) > 10_000:  # cluster_forward takes them; this one never came
            self._choices.clear()
        self._choices.setdefault(id(message), {})[(group, topic_filter)] = chosen
        return chosen == self.node

    def _targets(self, message: Message) -> tuple[set[str], dict[Group, list[str]]]:
        cached = self._match_cache
        if cached is not None and cached[0] is message:
            return cached[1]
        targets = self.routes.targets(message.topic)
        self._match_cache = (message, targets)
        return targets

    def _choose(self, group: Group, candidates: list[str]) -> str:
        now = time.time()
        running = sorted({node for node in candidates if node == self.node or self.running(node, now)})
        turn = self._turns.get(group, 0)
        self._turns[group] = turn + 1
        return running[turn % len(running)]

    @hookimpl
    def cluster_forward(self, message: Message, origin: ClientInfo) -> None:
        choices = self._choices.pop(id(message), None) if self._choices else None
        if message.topic.startswith("$SYS/"):
            self._match_cache = None
            return  # each node's $SYS tree is its own (the same topics on every node)
        plain, groups = self._targets(message)
        self._match_cache = None
        if not plain and not groups and not message.retain:
            return  # the common case of a topic nobody elsewhere wants: nothing to do
        now = time.time()
        targets: dict[str, set[Group]] = {node: set() for node in plain if self.running(node, now)}
        if message.retain:  # every node retains it
            targets.update({node: set() for node in self.heartbeats if node != self.node and self.running(node, now)})
        for group, members in groups.items():
            chosen = choices.get(group) if choices else None
            if chosen is None:  # no member here: one of the other nodes'
                candidates = [node for node in members if self.running(node, now)]
                if not candidates:
                    continue
                chosen = self._choose(group, candidates)
            if chosen != self.node:
                targets.setdefault(chosen, set()).add(group)
        origin_id = origin.client_id
        for node, served in targets.items():
            send = self._peers.get(node) or self._start_peer(node)
            try:
                send.send_nowait((message, origin_id, frozenset(served) if served else NO_GROUPS))
            except trio.WouldBlock:
                self.dropped += 1

    def _start_peer(self, node: str) -> trio.MemorySendChannel[Forwarded]:
        assert self._nursery is not None
        send, receive = trio.open_memory_channel[Forwarded](self.config.forward_queue)
        self._peers[node] = send
        self._nursery.start_soon(self._forward, node, receive)
        return send

    async def _hand_over(self, control: Control) -> None:
        assert self.redis is not None and self.service is not None
        body = control.body
        try:
            snapshot = await self.service.hand_over(str(body["client_id"]), clean_start=bool(body.get("clean_start")))
            session = None if snapshot is None else session_to_json(snapshot, with_messages=True)
            await self._answer(control, client_id=body["client_id"], session=session)
        except Exception:
            log.exception("cluster: hand-over of %r to %s failed", body.get("client_id"), control.node)

    async def _forward(self, node: str, receive: trio.MemoryReceiveChannel[Forwarded]) -> None:
        """The forwarder of one peer node: frames of everything queued within ``linger``."""
        assert self.redis is not None
        config = self.config
        channel = inbox_channel(config.prefix, node)
        sequence = 0
        async for first in receive:
            batch = [first]
            size = len(first[0].payload)
            if config.linger:
                await trio.sleep(config.linger)
            # A frame stays well under Redis' pub/sub output limit (32 MB by default: a
            # subscriber past it is dropped by Redis, and with it every frame).
            while len(batch) < config.max_frame_messages and size < MAX_FRAME_BYTES:
                try:
                    forwarded = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(forwarded)
                size += len(forwarded[0].payload)
            sequence += 1
            await self._send(node, channel, encode_frame(self.node, sequence, batch), len(batch))

    async def _send(self, node: str, channel: str, frame: bytes, count: int) -> None:
        """One frame to a peer. Redis down: the frame waits and is tried again every
        RETRY_DELAY (what comes meanwhile waits in the peer's bounded queue); a peer that
        is down by then gets nothing, and the frame's messages are counted as dropped."""
        assert self.redis is not None
        while True:
            try:
                # A connection Redis lost may never answer (coredis has no deadline of
                # its own here): after COMMAND_TIMEOUT the frame is tried again.
                with trio.fail_after(COMMAND_TIMEOUT):
                    receivers = await self.redis.publish(channel, frame)
                if not receivers:  # the peer is not subscribed (yet: it reconnects)
                    raise ConnectionError(f"{node} does not listen")
            except Exception as exc:  # TooSlowError too
                if not self.running(node):
                    self.dropped += count
                    log.warning("cluster: %d messages for %s dropped: %s", count, node, exc)
                    return
                await self.reachable()
                await trio.sleep(RETRY_DELAY)
            else:
                self.forwarded += count
                return

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

    async def reachable(self, *, once: bool = False) -> bool:
        """Return once Redis accepts a connection again (tried every RETRY_DELAY); with
        ``once``, whether it does now."""
        url = urlsplit(self.config.redis_url)
        while True:
            try:
                if url.scheme == "unix":
                    stream: trio.abc.Stream = await trio.open_unix_socket(url.path)
                else:
                    stream = await trio.open_tcp_stream(url.hostname or "localhost", url.port or 6379)
                await stream.aclose()
                return True
            except OSError:
                if once:
                    return False
                await trio.sleep(RETRY_DELAY)

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
                self._sequences.pop(node, None)  # back under that name, it counts from 1
            else:  # a node that speaks runs (its heartbeat may not have been read yet)
                self.heartbeats[node] = max(self.heartbeats.get(node, 0.0), time.time())

    async def _receive(self, data: bytes) -> None:
        assert self.service is not None
        try:
            frame = decode_frame(data)
        except ValueError as exc:
            log.warning("cluster: a frame that does not read: %s", exc)
            return
        if isinstance(frame, Control):
            try:
                await self._control(frame)
            except Exception:  # one bad request must not stop the inbox
                log.exception("cluster: control frame %r from %s failed", frame.kind, frame.node)
            return
        last = self._sequences.get(frame.node)
        # A sequence 1 is a node that started again (killed: it could not say it left).
        if last is not None and frame.sequence != last + 1 and frame.sequence != 1:
            self.gaps += 1
            log.warning("cluster: frames from %s lost (%d after %d)", frame.node, frame.sequence, last)
            # What else was lost may be route notices too: everything is read again.
            self._resync = True
            self._routes_changed.set()
        self._sequences[frame.node] = frame.sequence
        route = self.service.route_forwarded
        for message, origin, groups in frame.messages:
            self.received += 1
            try:
                await route(message, origin, groups)
            except Exception:  # one message that cannot be delivered must not stop the inbox
                log.exception("cluster: a message from %s could not be delivered", frame.node)

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        registry.counter("cluster_forwarded", lambda: self.forwarded, "messages forwarded to other nodes")
        registry.counter("cluster_received", lambda: self.received, "messages received from other nodes")
        registry.counter("cluster_dropped", lambda: self.dropped, "messages not forwarded (full queue, Redis down)")
        registry.counter("cluster_frame_gaps", lambda: self.gaps, "frames from other nodes found missing")
        registry.counter("cluster_resyncs", lambda: self.resyncs, "route resynchronisations after Redis came back")
        registry.counter("cluster_takeovers", lambda: self.takeovers, "sessions taken over from another node")
