"""A group commit for store plugins: the store's synchronous hooks hand writes over, one
writer task applies them in batches.

The store hooks on the delivery path (``message_store_save``, ``record_save``...) may not
wait for a disk or a network: they append to :class:`GroupCommit`'s pending batch. The
store's ``serve`` runs :meth:`GroupCommit.run`, which applies everything pending with the
store's own ``apply`` (one transaction, one Redis call) whenever there is something, and
its ``store_commit`` hook awaits :meth:`GroupCommit.commit`. Writes that arrive while a
batch is applied go together into the next one: the cost of one apply is shared by every
write of a burst. A batch that fails stays pending, in order, and is tried again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import trio

from .values.stored import StoreError

log = logging.getLogger("ternmq.store")

W = TypeVar("W")


class GroupCommit(Generic[W]):
    """Pending writes of type ``W`` and the writer that applies them (module docstring).

    :param apply: applies one batch, all or nothing (raises when it did not).
    :param describe: names the store in log lines ("data/ternmq.db", "Redis at ...").
    :param retry_delay: seconds between tries of a batch that failed.
    :param max_batch: writes applied in one batch at most (a store that was away for a
        while catches up in several).
    """

    def __init__(
        self,
        apply: Callable[[list[W]], Awaitable[None]],
        describe: str,
        *,
        retry_delay: float = 1.0,
        max_batch: int = 5000,
    ) -> None:
        self.apply = apply
        self.describe = describe
        self.retry_delay = retry_delay
        self.max_batch = max_batch
        self._failed_at = -math.inf
        self.pending: list[W] = []
        self.lock = trio.Lock()  # one batch (or a store's read) at a time, in order
        self.writes = 0  # applied
        self.commits = 0  # batches applied
        self.failures = 0  # batches that failed (and were tried again)
        self._queued = 0  # writes handed over since the start
        self._committed = 0  # of those, how many are applied
        self._wakeup = trio.Event()

    def register_metrics(self, registry: Any) -> None:
        """The writer's metrics, for the store's ``register_metrics`` hook."""
        registry.counter("store_writes", lambda: self.writes, "writes the store applied")
        registry.counter("store_commits", lambda: self.commits, "batches (transactions) the store applied")
        registry.counter("store_failures", lambda: self.failures, "store batches that failed (tried again)")
        registry.gauge("store_pending", lambda: len(self.pending), "writes waiting for the store's next batch")

    def write(self, item: W) -> None:
        """Hand one write over (synchronous: for the store's hooks)."""
        self.pending.append(item)
        self._queued += 1
        if not self._wakeup.is_set():
            self._wakeup.set()

    def take_pending(self) -> list[W]:
        """The writes handed over and not applied yet, taken out: for an ``apply`` that
        must include them in its batch (a store that was given everything again while
        it applied one)."""
        pending, self.pending = self.pending, []
        return pending

    async def flush(self) -> None:
        """Apply what is pending now, in batches of at most ``max_batch`` writes; on
        failure the batch stays pending, first, and the error is logged and raised."""
        async with self.lock:
            target, count = self._queued, len(self.pending)
            while count:
                batch = self.pending[: min(count, self.max_batch)]
                del self.pending[: len(batch)]
                try:
                    await self.apply(batch)
                except Exception:
                    self.pending[:0] = batch
                    self.failures += 1
                    self._failed_at = trio.current_time()
                    log.exception("store: %d writes to %s failed", len(batch), self.describe)
                    raise
                # (what pending held at the start, less what went: an apply may have taken
                # more of it with ``take_pending``)
                count = min(count - len(batch), len(self.pending))
                self.writes += len(batch)
                self.commits += 1
            self._committed = target
            self._failed_at = -math.inf

    async def commit(self) -> None:
        """Return once every write handed over so far is applied (the store's
        ``store_commit``); raises when a batch fails, and at once while the last one
        failed less than ``retry_delay`` ago (the writer tries again then: one try per
        delay, not one per waiting PUBLISH)."""
        target = self._queued
        while self._committed < target:
            if trio.current_time() - self._failed_at < self.retry_delay:
                raise StoreError(f"{self.describe}: failing; tried again within {self.retry_delay} s")
            await self.flush()

    async def run(self) -> None:
        """The writer: applies what is pending until cancelled; then, shielded, one last
        time (what the broker handed over before it stopped is still written)."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                try:
                    await self.flush()
                except Exception:  # logged by flush; the batch waits for the next try
                    await trio.sleep(self.retry_delay)
                    self._wakeup.set()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.flush()
                except Exception:
                    log.error("store: %d writes to %s not applied at unload", len(self.pending), self.describe)
