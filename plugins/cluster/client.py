"""The Redis client of the cluster plugin: coredis, with what its failed connections
leave behind cleaned up.

coredis makes every connection with anyio memory streams that only its run closes: a
connection that never ran (Redis down, a refused connect) leaves them to the garbage
collector, which warns (``ResourceWarning``, an error under ``-W error``) for each.
:class:`ClosingPool` closes them when a connection cannot be made. And no command is
retried by coredis (``NoRetryPolicy``): the plugin waits for Redis itself.
"""

from __future__ import annotations

from typing import Any

import coredis
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from coredis.retry import NoRetryPolicy


def _close_streams(connection: object) -> None:
    for value in vars(connection).values():
        if isinstance(value, MemoryObjectSendStream | MemoryObjectReceiveStream):
            value.close()


class ClosingPool(coredis.ConnectionPool):  # type: ignore[type-arg]  # generic in coredis' stubs only
    """A connection pool that closes what a connection that could not be made holds."""

    _last_made: object | None = None

    async def _construct_connection(self) -> Any:
        connection = await super()._construct_connection()
        self._last_made = connection
        return connection

    async def get_connection(self, **kwargs: Any) -> Any:
        self._last_made = None
        try:
            return await super().get_connection(**kwargs)
        except Exception:
            if self._last_made is not None:
                _close_streams(self._last_made)
            raise


def connect(url: str) -> coredis.Redis[bytes]:
    """A client for ``url`` (bytes in, bytes out), not yet entered."""
    pool = ClosingPool.from_url(url, decode_responses=False)
    client: coredis.Redis[bytes] = coredis.Redis(connection_pool=pool, retry_policy=NoRetryPolicy())
    return client
