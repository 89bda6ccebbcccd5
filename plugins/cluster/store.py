"""The cluster's store: sessions, their messages and plugins' records in Redis (``redis_store``).

The same provider hooks as the embedded ``sqlite_store``, kept in the Redis the cluster
runs on, so that what a node acknowledged outlives the node: a node killed with SIGKILL
loses no acknowledged QoS 1/2 message, and its clients resume their sessions on any
other node (``session_store_take``: the cluster plugin takes the session of a client whose
node is down when it connects elsewhere). Retained messages and the other plugins'
records are shared by every node: a node that joins late finds every retained message.

Keys (``PREFIX`` is the ``prefix`` key, "ternmq" by default):

* ``PREFIX:store:owners``: a hash, client id -> the node that keeps the session;
* ``PREFIX:store:session:CLIENT_ID``: the session (JSON, the messages apart);
* ``PREFIX:store:messages:CLIENT_ID``: a hash, entry id -> message entry (JSON);
* ``PREFIX:store:records:NAMESPACE``: a hash, key -> value.

Each node writes through one Lua script call per batch (a group commit: everything the
hooks handed over while the previous call ran). Every write of a session is made only by
the node that keeps it, checked in the script: a node that handed a session over (or was
thought down) and writes late cannot erase or resurrect what another node keeps now. A
node's start loads the sessions it keeps.

Durability is Redis': a node's crash loses nothing once ``store_commit`` returned; a
crash of Redis itself loses what it had not saved (run it with ``appendonly yes`` and
``appendfsync everysec`` or ``always``, as for any data kept in Redis).

Config keys (``[plugins.redis_store]``): ``redis_url`` (required; the cluster's),
``prefix`` ("ternmq"). Metrics as ``sqlite_store``'s: ``store_writes``, ``store_commits``,
``store_failures``, ``store_pending``. List it before the plugins that keep records
(the retainer, ``api``, ``banned``, ``webhooks``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from operator import attrgetter
from typing import Any

import attrs
import coredis
import trio
from coredis.tokens import PureToken

from ternmq.kernel import (
    UNREADABLE,
    GroupCommit,
    SessionSnapshot,
    StoredMessage,
    StoreError,
    entry_from_json,
    entry_to_json,
    hookimpl,
    session_from_json,
    session_to_json,
)

from .client import connect
from .state import COMMAND_TIMEOUT, RETRY_DELAY

log = logging.getLogger("ternmq.plugins.redis_store")

# One write: an operation and its three arguments (unused ones empty), as the script
# reads them four at a time.
Write = tuple[str, str, str | bytes, str | bytes]

# The writes of one batch, applied in order. ARGV: the prefix, this node, the store's
# epoch, then four per write. Nothing is applied, and 'epoch' comes back, when the epoch
# key is not the one the node knows: Redis lost what it kept (restarted empty).
# N: save a session new to this node's store (made this node's: what another node kept
# under the client id goes). S: save a session this node keeps. D: forget a session this
# node keeps, or nobody does. M / X: save / forget a message of a session this node
# keeps. R / Q: save / forget a record.
APPLY = """
local prefix, node = ARGV[1], ARGV[2]
if redis.call('GET', prefix .. ':store:epoch') ~= ARGV[3] then
    return 'epoch'
end
local owners = prefix .. ':store:owners'
for i = 4, #ARGV, 4 do
    local op, name, key, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    if op == 'R' then
        redis.call('HSET', prefix .. ':store:records:' .. name, key, value)
    elseif op == 'Q' then
        redis.call('HDEL', prefix .. ':store:records:' .. name, key)
    else
        local owner = redis.call('HGET', owners, name)
        local messages = prefix .. ':store:messages:' .. name
        if op == 'N' then
            if owner ~= node then
                redis.call('DEL', messages)
                redis.call('HSET', owners, name, node)
            end
            redis.call('SET', prefix .. ':store:session:' .. name, value)
        elseif op == 'D' then
            if owner == false or owner == node then
                redis.call('DEL', prefix .. ':store:session:' .. name, messages)
                redis.call('HDEL', owners, name)
            end
        elseif owner == node then
            if op == 'S' then
                redis.call('SET', prefix .. ':store:session:' .. name, value)
            elseif op == 'M' then
                redis.call('HSET', messages, key, value)
            elseif op == 'X' then
                redis.call('HDEL', messages, key)
            end
        end
    end
end
return 'ok'
"""
# Take a session another node keeps: made this node's and returned with its messages;
# or, with forget ('1'), forgotten. ARGV: the prefix, this node, the client id, forget.
TAKE = """
local prefix, node, name = ARGV[1], ARGV[2], ARGV[3]
local owners = prefix .. ':store:owners'
local owner = redis.call('HGET', owners, name)
if owner == false or owner == node then
    return false
end
local key, messages = prefix .. ':store:session:' .. name, prefix .. ':store:messages:' .. name
if ARGV[4] == '1' then
    redis.call('DEL', key, messages)
    redis.call('HDEL', owners, name)
    return false
end
local session = redis.call('GET', key)
if session == false then
    return false
end
redis.call('HSET', owners, name, node)
return {session, redis.call('HGETALL', messages)}
"""
# Sessions read per round trip at start.
LOAD_BATCH = 500
# Client ids kept as forgotten (a later save is a new session's), at most.
FORGOTTEN_KEPT = 100_000


@attrs.frozen
class Config:
    redis_url: str = attrs.field(validator=attrs.validators.instance_of(str))
    prefix: str = attrs.field(default="ternmq", validator=attrs.validators.min_len(1))

    def __attrs_post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url: not a redis://, rediss:// or unix:// URL: {self.redis_url!r}")


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def snapshot_from(client_id: str, session: bytes, messages: Mapping[bytes, bytes]) -> SessionSnapshot:
    """A stored session back, with its messages in entry order; the messages that do not
    read are logged and skipped; one of UNREADABLE when the session does not read."""
    entries = []
    for entry_id, body in messages.items():
        try:
            entries.append(entry_from_json(int(entry_id), json.loads(body)))
        except UNREADABLE as exc:
            log.error("store: message %r of session %r does not read (%r); skipped", entry_id, client_id, exc)
    entries.sort(key=attrgetter("entry_id"))
    return session_from_json(client_id, json.loads(session), tuple(entries))


class Plugin:
    """The Redis store (module docstring)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node = ""
        self.redis: coredis.Redis[bytes] | None = None
        self.writer: GroupCommit[Write] = GroupCommit(
            self._apply, f"Redis at {config.redis_url}", retry_delay=RETRY_DELAY
        )
        self._apply_script: Any = None
        self._take_script: Any = None
        self.service: Any = None
        self.epoch = b""
        self.resets = 0  # times Redis was found to have lost the store
        # Client ids this node told the store to forget: a save of one of them after
        # that is a session new to the store (the kernel forgets before a first save).
        self._forgotten: set[str] = set()

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.config.prefix}:store:{kind}{':' + name if name else ''}"

    @hookimpl
    def register_metrics(self, registry: Any) -> None:
        self.writer.register_metrics(registry)
        registry.counter("store_resets", lambda: self.resets, "times Redis was found to have lost the store")

    async def serve(self, service: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.node = service.node_name
        failure: Exception | None = None
        redis = connect(self.config.redis_url)
        async with redis:
            try:
                with trio.fail_after(COMMAND_TIMEOUT):
                    await redis.ping()
            except trio.TooSlowError:
                failure = ConnectionError(f"Redis at {self.config.redis_url}: no answer in {COMMAND_TIMEOUT} s")
            except Exception as exc:  # refused, a password refused: raised below, outside coredis
                failure = ConnectionError(f"cannot reach Redis at {self.config.redis_url}: {exc}")
            if failure is None:
                try:
                    with trio.fail_after(COMMAND_TIMEOUT):
                        await self._read_epoch(redis)
                except Exception as exc:
                    failure = ConnectionError(f"Redis at {self.config.redis_url}: {exc!r}")
            if failure is None:
                self.redis = redis
                self.service = service
                self._apply_script = redis.register_script(APPLY)
                self._take_script = redis.register_script(TAKE)
                log.info("store: Redis at %s (prefix %s)", self.config.redis_url, self.config.prefix)
                task_status.started()
                try:
                    await self.writer.run()
                finally:
                    self.redis = None
        if failure is not None:
            raise failure

    async def _read_epoch(self, redis: coredis.Redis[bytes]) -> None:
        """The store's epoch in Redis, made if missing: a key every batch checks, so that a
        Redis that restarted empty is noticed (the sessions are written again)."""
        await redis.set(self._key("epoch"), f"{time.time_ns():x}".encode(), condition=PureToken.NX)
        epoch = await redis.get(self._key("epoch"))
        self.epoch = epoch or b""

    async def _apply(self, batch: list[Write]) -> None:
        redis = self._redis()
        if await self._apply_in_epoch(redis, batch):
            return
        # Redis lost what the store kept (it restarted empty): this node's sessions are
        # given to the store again, and the batch goes again in the new epoch with those
        # writes after it (what no longer has an owner there is skipped and written again
        # by them), so that what waits for this batch is durable.
        log.warning("store: Redis at %s lost the store; this node's sessions are written again", self.config.redis_url)
        self.resets += 1
        assert self.service is not None
        await self.service.store_lost()
        taken = self.writer.take_pending()
        try:
            if not await self._apply_in_epoch(redis, batch + taken):
                raise StoreError(f"Redis at {self.config.redis_url}: the store's epoch keeps changing")
        except BaseException:
            self.writer.pending[:0] = taken  # back, after this batch (the writer puts it back)
            raise

    async def _apply_in_epoch(self, redis: coredis.Redis[bytes], batch: list[Write]) -> bool:
        """Apply ``batch``: True, or False (nothing applied, the new epoch read) when
        Redis has another epoch than this node knew."""
        args: list[str | bytes] = [self.config.prefix, self.node, self.epoch]
        for write in batch:
            args.extend(write)
        # Shielded with a deadline: a batch sent is either answered or counted failed (and
        # tried again: every write in it is idempotent), never left half known.
        with trio.CancelScope(shield=True), trio.fail_after(COMMAND_TIMEOUT):
            if await self._apply_script(args=args) != b"epoch":
                return True
            await self._read_epoch(redis)
        return False

    def _redis(self) -> coredis.Redis[bytes]:
        if self.redis is None:
            raise ConnectionError("the store is not connected")
        return self.redis

    @hookimpl
    async def store_commit(self) -> None:
        await self.writer.commit()

    # -- sessions and their messages ----------------------------------------------------

    @hookimpl
    async def session_store_load_all(self) -> list[SessionSnapshot]:
        """The sessions this node keeps (those of the other nodes are theirs)."""
        redis = self._redis()
        await self.writer.flush()
        node = self.node.encode()
        mine = [name.decode() async for name, owner in redis.hscan_iter(self._key("owners")) if owner == node]
        snapshots = []
        for start in range(0, len(mine), LOAD_BATCH):
            names = mine[start : start + LOAD_BATCH]
            async with redis.pipeline(transaction=False) as pipe:
                requests = [
                    (pipe.get(self._key("session", name)), pipe.hgetall(self._key("messages", name))) for name in names
                ]
            for name, (session_request, messages_request) in zip(names, requests, strict=True):
                session, messages = await session_request, await messages_request
                if session is None:
                    continue
                try:
                    snapshots.append(snapshot_from(name, session, messages))
                except UNREADABLE as exc:
                    log.error("store: session %r does not read (%r); skipped", name, exc)
        return snapshots

    @hookimpl
    async def session_store_take(self, client_id: str, forget: bool) -> SessionSnapshot | None:
        self._redis()
        # Shielded: once Redis took it over, this node has it (or, cancelled, the
        # answer would be lost with the session).
        with trio.CancelScope(shield=True), trio.fail_after(COMMAND_TIMEOUT):
            taken = await self._take_script(args=[self.config.prefix, self.node, client_id, "1" if forget else "0"])
        if not taken:
            return None
        session, flat = taken
        messages = dict(zip(flat[::2], flat[1::2], strict=True))
        try:
            return snapshot_from(client_id, session, messages)
        except UNREADABLE as exc:
            log.error("store: session %r does not read (%r); not taken", client_id, exc)
            return None

    @hookimpl
    def session_store_save(self, session: SessionSnapshot) -> None:
        client_id = session.client_id
        new = client_id in self._forgotten
        self._forgotten.discard(client_id)
        self.writer.write(("N" if new else "S", client_id, "", _json(session_to_json(session))))

    @hookimpl
    def session_store_delete(self, client_id: str) -> None:
        if len(self._forgotten) > FORGOTTEN_KEPT:  # forgotten and never saved again
            self._forgotten.clear()
        self._forgotten.add(client_id)
        self.writer.write(("D", client_id, "", ""))

    @hookimpl
    def message_store_save(self, client_id: str, entry: StoredMessage) -> None:
        self.writer.write(("M", client_id, str(entry.entry_id), _json(entry_to_json(entry))))

    @hookimpl
    def message_store_delete(self, client_id: str, entry_id: int) -> None:
        self.writer.write(("X", client_id, str(entry_id), ""))

    # -- plugins' records ---------------------------------------------------------------

    @hookimpl
    async def record_load(self, namespace: str) -> Mapping[str, bytes]:
        redis = self._redis()
        await self.writer.flush()
        with trio.fail_after(COMMAND_TIMEOUT):
            records = await redis.hgetall(self._key("records", namespace))
        return {key.decode(): bytes(value) for key, value in sorted(records.items())}

    @hookimpl
    def record_save(self, namespace: str, key: str, value: bytes) -> None:
        if not isinstance(namespace, str) or not isinstance(key, str) or not isinstance(value, bytes | bytearray):
            raise TypeError(f"record_save({namespace!r}, {key!r}, ...): namespace and key are str, value bytes")
        self.writer.write(("R", namespace, key, bytes(value)))

    @hookimpl
    def record_delete(self, namespace: str, key: str) -> None:
        self.writer.write(("Q", namespace, key, ""))
