"""Pure analytics: redemption rates with Wilson 95 % intervals, thresholds, burn rate."""

from __future__ import annotations

import math

THRESHOLDS = (50, 80, 100)


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (well-behaved for small counts and 0 or 1)."""
    if trials == 0:
        return (0.0, 0.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def crossed(limit: int, used: int, already: set[int]) -> list[int]:
    """Thresholds (percent of the limit reserved or spent) newly reached."""
    if limit <= 0:
        return []
    return [t for t in THRESHOLDS if t not in already and used * 100 >= t * limit]


def burn_rate(samples: list[tuple[float, int]]) -> float:
    """Minor units per second over the samples (time in seconds, used amount), 0 if flat."""
    if len(samples) < 2:
        return 0.0
    (t0, u0), (t1, u1) = samples[0], samples[-1]
    return max(0.0, (u1 - u0) / (t1 - t0)) if t1 > t0 else 0.0


def time_to_exhaustion(remaining: int, rate: float) -> float | None:
    return remaining / rate if rate > 0 else None
