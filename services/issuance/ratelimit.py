"""Failure rate limiting against code guessing: each API key and each client address may fail
``burst`` validations or redemptions, refilled at ``per_minute``; past that, 429 with Retry-After.
Kept in the process (an attacker spread over N instances gets N times the budget: still far
too little against 60-bit codes)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    def __init__(self, per_minute: float = 30.0, burst: int = 30, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, Bucket] = {}

    def _bucket(self, who: str) -> Bucket:
        now = self.clock()
        b = self._buckets.get(who)
        if b is None:
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            b = self._buckets[who] = Bucket(float(self.burst), now)
        b.tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
        b.updated = now
        return b

    def retry_after(self, *who: str) -> int | None:
        """Seconds to wait if any of ``who`` has no failures left, else ``None``."""
        worst = None
        for w in who:
            b = self._bucket(w)
            if b.tokens < 1:
                wait = math.ceil((1 - b.tokens) / self.rate)
                worst = max(worst or 0, wait)
        return worst

    def failed(self, *who: str) -> None:
        for w in who:
            b = self._bucket(w)
            b.tokens = max(0.0, b.tokens - 1)
