"""Per-key token buckets: a key may burst, then is held to its steady rate (429 + Retry-After)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """A key's bucket: `tokens` of at most `capacity`, refilled at `rate` a second since `updated`."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; returns 0 when admitted, else the seconds until a token is due."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key id, held in this process's memory.

    Buckets are state of one process only (like a cache): several worker processes or replicas
    each admit a key's full rate. Idle buckets are dropped once full again, so memory stays
    bounded by the keys active in the last `capacity / rate` seconds.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self._last_sweep = clock()

    def check(self, key_id: str, rate: float | None = None) -> int:
        """0 when the request is admitted, else the whole seconds to wait (for Retry-After)."""
        now = self.clock()
        rate = rate or self.rate
        capacity = max(self.burst, rate)
        bucket = self.buckets.get(key_id)
        if bucket is None or bucket.rate != rate:
            bucket = self.buckets[key_id] = TokenBucket(rate, capacity, capacity, now)
        wait = bucket.take(now)
        self._sweep(now)
        return math.ceil(wait) if wait else 0

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for key_id, bucket in list(self.buckets.items()):
            if bucket.tokens + (now - bucket.updated) * bucket.rate >= bucket.capacity:
                del self.buckets[key_id]
