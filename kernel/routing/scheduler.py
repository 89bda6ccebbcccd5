"""Timers without a task per timer: delayed wills and session expiry share one task."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("ternmq.scheduler")


class Timer:
    """A scheduled callback; ``cancel()`` before it runs and it never will."""

    __slots__ = ("deadline", "order", "callback", "cancelled")

    def __init__(self, deadline: float, order: int, callback: Callable[[], Awaitable[None]]) -> None:
        self.deadline = deadline
        self.order = order
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return (self.deadline, self.order) < (other.deadline, other.order)


class Scheduler:
    """A heap of timers run one after another by ``run`` (start it in a nursery)."""

    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._order = itertools.count()
        self._wakeup = trio.Event()

    def call_later(self, delay: float, callback: Callable[[], Awaitable[None]]) -> Timer:
        """Run ``await callback()`` after ``delay`` seconds (trio clock)."""
        timer = Timer(trio.current_time() + delay, next(self._order), callback)
        heap = self._heap
        if not heap or timer < heap[0]:
            self._wakeup.set()
        heapq.heappush(heap, timer)
        return timer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        heap = self._heap
        task_status.started()
        while True:
            while heap and heap[0].cancelled:
                heapq.heappop(heap)
            deadline = heap[0].deadline if heap else math.inf
            if deadline <= trio.current_time():
                timer = heapq.heappop(heap)
                try:
                    await timer.callback()
                except Exception:
                    log.exception("timer callback failed")
                continue
            self._wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._wakeup.wait()
