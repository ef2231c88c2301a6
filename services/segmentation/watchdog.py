"""Stalled-partition detection for the faust worker.

Under kill -9, broker restarts and rebalances, faust-streaming (0.15.3) has been seen to leave one
assigned partition unprocessed for minutes while the others flow (the chaos runs in
``docs/reliability.md``). Nothing is lost — its offsets are not committed — but a customer's
voucher would be late. The detector notices a partition with messages waiting and no progress;
the service then logs why (faust's and aiokafka's view of the partition), resumes it, and, if it
stays stuck, stops so that its supervisor starts a fresh worker.

Pure logic, no Kafka: the service feeds it the offsets it handled and the partitions' end
offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable


@dataclass
class Stall:
    tp: Hashable
    waiting: int  # messages at or after the next offset to handle (at least this many)
    idle_s: float  # since the partition last made progress (or was first watched)
    strikes: int  # consecutive checks that found it stalled


@dataclass
class _Watch:
    next_offset: int | None  # the next offset to handle; None until one was handled here
    first_end: int  # the end offset when first watched
    since: float  # the last progress (or when watching started)
    strikes: int = 0


@dataclass
class StallDetector:
    timeout_s: float
    _watch: dict[Hashable, _Watch] = field(default_factory=dict)

    def handled(self, tp: Hashable, offset: int, now: float) -> None:
        w = self._watch.get(tp)
        if w is None:
            self._watch[tp] = _Watch(offset + 1, offset + 1, now)
        elif w.next_offset is None or offset + 1 > w.next_offset:
            w.next_offset, w.since, w.strikes = offset + 1, now, 0

    def reset(self, now: float) -> None:
        """After a rebalance, a recovery or the broker away: every partition's clock starts again.
        What was handled here stays known: a message handled just before a broker restart whose
        offset commit was lost with it is not waiting (the chaos run of 2026-11-29 19:02 stopped
        a healthy worker over one such message)."""
        for w in self._watch.values():
            w.since, w.strikes = now, 0

    def check(self, ends: dict[Hashable, int], now: float,
              committed: dict[Hashable, int] | None = None) -> list[Stall]:
        """``ends``: each assigned partition's end offset; ``committed``: the group's committed
        offsets, where a partition nothing was handled on yet starts. Partitions no longer
        assigned are forgotten; a partition with nothing waiting is never stalled."""
        committed = committed or {}
        for tp in list(self._watch):
            if tp not in ends:
                del self._watch[tp]
        stalls = []
        for tp, end in ends.items():
            w = self._watch.get(tp)
            if w is None:
                self._watch[tp] = _Watch(None, end, now)
                continue
            # Waiting: past the next offset to handle here and past the committed offset (another
            # worker may have handled more while the partition was away); for a partition nothing
            # was handled on yet, past its committed offset (or, without one, what arrived since
            # it was watched).
            known = [o for o in (w.next_offset, committed.get(tp)) if o is not None]
            start = max(known) if known else w.first_end
            waiting = end - start
            if waiting <= 0:
                w.since, w.strikes = now, 0
                continue
            if now - w.since >= self.timeout_s:
                w.strikes += 1
                stalls.append(Stall(tp, waiting, now - w.since, w.strikes))
        return stalls
