"""Client ids across the cluster: which node holds each, claimed in batches.

A client id is unique in the cluster: the hash ``PREFIX:clients`` says which node holds
it. A CONNECT claims it (``cluster_register``); a node that held it before hands its
session over (``Service.hand_over``) through a control frame, and the new node resumes
it. A clean-start CONNECT does not wait for its claim (``cluster_claim``: there is
nothing to resume), and the node that held the client id is told within milliseconds.
Each claim carries the time of its CONNECT (``PREFIX:claimed_at``), so of two CONNECTs of
one client id on two nodes the later one is kept, whichever claim reaches Redis first:
the node whose claim is older disconnects its client (0x8E, as a takeover would). Client ids of clients gone
are given back by a sweep every ``claim_sweep_interval``, not at each disconnect.

Claims and releases are batched: whatever arrives within ``linger`` goes to Redis in one
Lua script call (one command for many clients), so a connect in cluster mode costs one
Redis command shared with every connect around it, not one of its own. While no CONNECT
waits for its claim (clean starts, releases), a batch gathers for CLAIM_LINGER: fewer,
larger calls.
"""

from __future__ import annotations

import time

import attrs
import trio

from ternmq.kernel import SessionSnapshot

# KEYS: the holders, the claim times. ARGV: this node, then a client id and its CONNECT's
# time (Unix seconds) for each claim. A claim older than the one another node holds is
# not written: that node's CONNECT came later and is kept ("!" and that node come back).
# Otherwise the claim is written, and the node that held the client id comes back.
CLAIM = """
local previous = {}
for i = 2, #ARGV, 2 do
    local holder = redis.call('HGET', KEYS[1], ARGV[i]) or ''
    local since = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0') or 0
    if holder ~= '' and holder ~= ARGV[1] and since > tonumber(ARGV[i + 1]) then
        previous[#previous + 1] = '!' .. holder
    else
        redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
        redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
        previous[#previous + 1] = holder
    end
end
return previous
"""
# KEYS: the holders, the claim times. ARGV: client id, the holder it must still have,
# this node, the CONNECT's time. 1 when written.
CLAIM_OVER = """
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then
    return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return 1
"""
# Only what the node still holds: a client that moved on is another node's now.
RELEASE = """
local released = 0
for i = 2, #ARGV do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then
        redis.call('HDEL', KEYS[1], ARGV[i])
        redis.call('HDEL', KEYS[2], ARGV[i])
        released = released + 1
    end
end
return released
"""


# Seconds a batch of claims nobody waits for gathers more before it goes to Redis.
CLAIM_LINGER = 0.01


def clients_key(prefix: str) -> str:
    return f"{prefix}:clients"


def claimed_at_key(prefix: str) -> str:
    return f"{prefix}:claimed_at"


@attrs.define
class Claim:
    """One CONNECT's claim of its client id, answered by the registrar."""

    client_id: str
    clean_start: bool
    at: float = attrs.field(factory=time.time)  # when its CONNECT came
    again: bool = False  # a claim written again (Redis lost the claims), not a CONNECT's
    done: trio.Event = attrs.field(factory=trio.Event)
    session: SessionSnapshot | None = None  # handed over by the node that held it
    abandoned: bool = False  # its CONNECT stopped waiting for it


class Batches:
    """The claims and releases waiting for the registrar's next Redis call."""

    def __init__(self) -> None:
        self.claims: list[Claim] = []
        self.releases: set[str] = set()
        # Client id -> when a CONNECT without clean start last claimed it (monotonic): the
        # sweep leaves those still under way alone (claimed, the session not attached
        # yet: it may be on its way from another node).
        self.recent: dict[str, float] = {}
        self.ready = trio.Event()
        self.awaited = trio.Event()  # a CONNECT waits for a claim of this batch

    def claim(self, client_id: str, clean_start: bool, *, at: float | None = None) -> Claim:
        claim = Claim(client_id, clean_start, at or time.time(), again=at is not None)
        self.claims.append(claim)
        if not clean_start:  # (a clean start's session is attached before its claim lands)
            self.recent[client_id] = time.monotonic()
        self.releases.discard(client_id)
        self.ready.set()
        if not clean_start:
            self.awaited.set()
        return claim

    def claimed_lately(self, within: float) -> set[str]:
        """The client ids claimed within the last ``within`` seconds (older ones are
        forgotten here)."""
        since = time.monotonic() - within
        self.recent = {client_id: at for client_id, at in self.recent.items() if at >= since}
        return set(self.recent)

    def release(self, client_id: str) -> None:
        self.releases.add(client_id)
        self.ready.set()

    def take(self) -> tuple[list[Claim], list[str]]:
        claims, self.claims = self.claims, []
        releases, self.releases = sorted(self.releases), set()
        self.ready = trio.Event()
        self.awaited = trio.Event()
        return claims, releases
