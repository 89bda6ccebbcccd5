"""Calling endpoints: the HTTP requests, their deadlines, the auth cache and the counts.

Requests go through one httpx client (keep-alive connections pooled per endpoint host),
which runs on trio through anyio. Each request has the endpoint's ``response_timeout``
as a deadline for the whole exchange, and never outlives the deadline the broker gives
the hook that made it (``trio.current_effective_deadline``): a chain of slow endpoints
ends in its failure policy, not in the kernel's timeout.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import attrs
import httpx
import trio

from .endpoints import Endpoint
from .wire import BadReply, parse_json

log = logging.getLogger("ternmq.plugins.webhooks")

# Time kept back from the broker's hook deadline to apply the failure policy in.
DEADLINE_MARGIN = 0.05
HOOK_HEADER = "vernemq-hook"


@attrs.define
class Stats:
    """Counts of one hook at one endpoint."""

    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    cancelled: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    dropped: int = 0
    bytes_sent: int = 0
    latency_seconds: float = 0.0


class CallFailed(Exception):
    """The endpoint did not give a usable reply; ``timed_out`` tells a timeout apart."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@attrs.frozen
class Reply:
    """A reply with status 200 and a JSON object."""

    json: Mapping[str, Any]
    cache_control: str | None


class Caller:
    """Posts webhook bodies and counts what happens, per hook and endpoint."""

    def __init__(self, *, max_connections: int = 100, keepalive_expiry: float = 60.0) -> None:
        self.limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
        )
        self.client: httpx.AsyncClient | None = None
        self.stats: dict[tuple[str, str], Stats] = {}

    def stats_of(self, hook: str, url: str) -> Stats:
        stats = self.stats.get((hook, url))
        if stats is None:
            stats = self.stats[(hook, url)] = Stats()
        return stats

    async def post(self, endpoint: Endpoint, hook: str, body: Mapping[str, Any]) -> Reply:
        """POST ``body`` as VerneMQ does; the reply, or CallFailed (counted)."""
        client = self.client
        if client is None:
            raise CallFailed("the webhooks plugin is not serving")
        stats = self.stats_of(hook, endpoint.url)
        content = json.dumps(body, separators=(",", ":")).encode()
        timeout = endpoint.response_timeout / 1000
        budget = trio.current_effective_deadline() - trio.current_time() - DEADLINE_MARGIN
        if budget <= 0:  # the hook's deadline is (nearly) reached: no time for this one
            stats.timeouts += 1
            raise CallFailed(f"{endpoint.url}: no time left within the hook's deadline", timed_out=True)
        stats.requests += 1
        stats.bytes_sent += len(content)
        started = trio.current_time()
        response: httpx.Response | None = None  # None: no reply in time (either deadline)
        try:
            with trio.move_on_after(min(timeout, budget)):
                response = await client.post(
                    endpoint.url,
                    content=content,
                    headers={"content-type": "application/json", HOOK_HEADER: hook},
                    timeout=timeout,
                )
        except trio.Cancelled:
            stats.cancelled += 1  # the caller was cancelled: the client left
            raise
        except httpx.TimeoutException:
            pass
        except Exception as exc:  # httpx.HTTPError, and what a strange URL raises (InvalidURL, UnicodeError)
            stats.errors += 1
            raise CallFailed(f"{endpoint.url}: {type(exc).__name__}: {exc}") from None
        finally:
            stats.latency_seconds += trio.current_time() - started
        if response is None:
            stats.timeouts += 1
            raise CallFailed(f"{endpoint.url}: no reply within {endpoint.response_timeout} ms", timed_out=True)
        try:
            reply = parse_json(response.status_code, response.content)
        except BadReply as exc:
            stats.errors += 1
            raise CallFailed(f"{endpoint.url}: {exc}") from None
        return Reply(reply, response.headers.get("cache-control"))


def cache_key(hook: str, url: str, body: Mapping[str, Any]) -> tuple[str, str, str]:
    """What a cached answer is found by: VerneMQ's key, the request less its payload and
    the client's port (a client reconnecting from another port is the same request)."""
    kept = {key: value for key, value in body.items() if key not in ("payload", "peer_port")}
    return hook, url, json.dumps(kept, sort_keys=True, separators=(",", ":"))


class AnswerCache:
    """Answers of the auth hooks, each kept for the ``max-age`` its reply allowed, at most
    ``size`` of them (the least recently used go first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, Any]] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if trio.current_time() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    def put(self, key: tuple[str, str, str], answer: Any, max_age: int) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (trio.current_time() + max_age, answer)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def forget(self, hook: str, url: str) -> None:
        """Drop the answers of one endpoint of one hook (it was deregistered)."""
        for key in [key for key in self._entries if key[0] == hook and key[1] == url]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    def entries_by(self) -> dict[tuple[str, str], int]:
        """Live entries per (hook, endpoint); expired ones are removed on the way."""
        now = trio.current_time()
        for key in [key for key, (expires, _) in self._entries.items() if now >= expires]:
            del self._entries[key]
        counts: dict[tuple[str, str], int] = {}
        for hook, url, _ in self._entries:
            counts[(hook, url)] = counts.get((hook, url), 0) + 1
        return counts
