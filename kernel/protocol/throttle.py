"""A publisher's message rate limit (``[broker.limits] max_message_rate``, VerneMQ's
name): a token bucket per connection. Over the rate, the connection's reader waits
before it handles the next PUBLISH, so the client's further packets wait in its socket
and TCP slows the publisher down; nobody is disconnected, other clients are not touched.
"""

from __future__ import annotations

import trio


class Throttle:
    """Up to ``rate`` PUBLISH packets a second, in bursts of up to ``rate`` (at least 1)."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.last = trio.current_time()

    def delay(self) -> float:
        """Take one PUBLISH; how many seconds the reader waits before handling it."""
        now = trio.current_time()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate) - 1
        self.last = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
