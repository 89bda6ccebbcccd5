"""What the parts of the cluster plugin share: its configuration, its state, and the
wait for Redis (the parts: registry.py, questions.py, forwarding.py; __init__.py joins
them)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import attrs
import coredis
import trio
from coredis.exceptions import ConnectionError as RedisConnectionError

from ternmq.kernel import Message, Service

from .frames import Group
from .registry import Batches
from .routes import RemoteRoutes, notice, routes_key

if TYPE_CHECKING:
    from .forwarding import Peer
    from .frames import Control

# Seconds between tries when Redis cannot be reached: short, so a restarted Redis is met
# again within a quarter second. The plugin waits for Redis itself (a plain socket,
# reachable()) rather than through coredis' retries: its pub/sub reconnects silently
# (what was published meanwhile is lost, unannounced) with a backoff growing to 16 s, and
# each failed connection attempt leaves streams unclosed.
RETRY_DELAY = 0.25
# Seconds one Redis command may take before it counts as failed (a lost connection).
COMMAND_TIMEOUT = 2.0
# Seconds a question to another node (a takeover, session show) waits for its answer.
ASK_TIMEOUT = 2.0
# Bytes of payload in one frame, about: far under Redis' 32 MB pub/sub output limit.
MAX_FRAME_BYTES = 4 * 1024 * 1024
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


class NodeState:
    """The state of one node's cluster plugin, which its parts share."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.node = ""
        self.redis: coredis.Redis[bytes] | None = None
        self.routes = RemoteRoutes("")
        self.heartbeats: dict[str, float] = {}  # node -> its last heartbeat (Unix time)
        self.published: frozenset[str] = frozenset()  # this node's filters as Redis has them
        self.service: Service | None = None
        self._nursery: trio.Nursery | None = None
        self._peers: dict[str, Peer] = {}
        # This run of the node, in every frame it sends: a peer tells a node that started
        # again (its sequence numbers start again) from frames sent once more.
        self.incarnation = f"{time.time_ns():x}"
        # Shared groups: whose turn it is, and the node chosen per group for a message
        # being routed here (cluster_shared_here, then cluster_forward, in one publish).
        self._turns: dict[Group, int] = {}
        self._choices: dict[int, dict[Group, str]] = {}
        # The other nodes' matches of the message being routed here, read once for both
        # cluster_shared_here and cluster_forward.
        self._match_cache: tuple[Message, tuple[set[str], dict[Group, list[str]]]] | None = None
        # Sending node -> (its incarnation, the last frame delivered here in sequence).
        self._sequences: dict[str, tuple[str, int]] = {}
        self._acks_due: dict[str, bool] = {}  # sending node -> whether it must resend
        self._acks_wakeup = trio.Event()
        # (asking node, filter) -> (when read, the retained messages, their topics), while
        # a node that joins pages through them.
        self._retained_snapshots: dict[tuple[str, str], tuple[float, list[Message], list[str]]] = {}
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
        self.resent = 0

    def running(self, node: str, now: float | None = None) -> bool:
        beat = self.heartbeats.get(node)
        return beat is not None and (now or time.time()) - beat < self.config.node_timeout

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

    async def _remove_node(self, redis: coredis.Redis[bytes], node: str) -> None:
        """``node``'s routes and heartbeat out of Redis, and the others told it left."""
        prefix = self.config.prefix
        await redis.delete([routes_key(prefix, node)])
        await redis.hdel(f"{prefix}:nodes", [node])
        await redis.publish(f"{prefix}:routes", notice(node, leaving=True))

    if TYPE_CHECKING:  # methods of one part that another part calls

        async def _ask(self, node: str, kind: str, **body: Any) -> dict[str, Any] | None: ...

        async def _control(self, control: Control) -> None: ...

        async def _hand_over(self, control: Control) -> None: ...

        def _forget_peer(self, node: str) -> None: ...
