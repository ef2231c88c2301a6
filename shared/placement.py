"""Where newly assigned partitions resume, for a service that keeps its own consumed offsets.

Such a service (segmentation) writes the offsets it applied in the transaction that applies them,
so it resumes after what its database holds whatever the group's committed offsets say (an
operator's reset to the earliest offsets is skipped rather than re-read; a restored database
resumes from its own state). Every partition of a new assignment is therefore sought before any
of its records is handed to the handler: to the service's start position, or, where it applied
nothing yet, to the group's committed offset (the log's beginning when there is none).

aiokafka completes an assignment before it calls the rebalance listener that seeks, so a
``getmany`` running meanwhile can return records fetched from the committed offsets. ``admit``
drops those — records of a partition not placed yet, or placed after the poll began — and seeks
their partition back to its place, so nothing is handed over out of place and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

log = logging.getLogger(__name__)

# Given the log-end offset of each newly assigned (registry topic, partition), where to start
# reading; partitions it leaves out start at the group's committed offset.
StartPositions = Callable[[dict[tuple[str, int], int]], Awaitable[dict[tuple[str, int], int]]]
Batch = dict[TopicPartition, list[ConsumerRecord]]


class Placement:
    def __init__(self, ask: StartPositions, group_id: str, max_backoff_s: float) -> None:
        self.ask = ask
        self.group_id = group_id
        self.max_backoff_s = max_backoff_s
        self._seeks = 0
        self._placed: dict[TopicPartition, tuple[int, int]] = {}  # partition -> (seek number, offset)

    def mark(self) -> int:
        """Taken before a poll: records of a partition placed after it are stale."""
        return self._seeks

    def is_placed(self, tp: TopicPartition) -> bool:
        return tp in self._placed

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._placed.pop(tp, None)

    async def place(self, consumer: AIOKafkaConsumer, partitions: dict[tuple[str, int], TopicPartition],
                    stopping: asyncio.Event) -> None:
        """Seeks each partition to where it resumes. The start positions come from the broker and
        the service's database: a failure of either is retried with backoff until it works (a
        partition left unplaced hands over nothing) or the consumer stops."""
        delay = 0.1
        while partitions:
            try:
                offsets = await self._starts(consumer, partitions)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stopping.is_set():
                    return
                log.warning("start positions unavailable; retrying",
                            extra={"group": self.group_id, "error": repr(exc), "retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        for tp, offset in offsets.items():
            consumer.seek(tp, offset)
            self._seeks += 1
            self._placed[tp] = (self._seeks, offset)

    async def _starts(self, consumer: AIOKafkaConsumer,
                      partitions: dict[tuple[str, int], TopicPartition]) -> dict[TopicPartition, int]:
        ends = await consumer.end_offsets(list(partitions.values()))
        starts = await self.ask({key: ends[tp] for key, tp in partitions.items()})
        out = {tp: starts[key] for key, tp in partitions.items() if key in starts}
        rest = [tp for tp in partitions.values() if tp not in out]
        beginnings = await consumer.beginning_offsets(rest) if rest else {}
        for tp in rest:
            committed = await consumer.committed(tp)
            out[tp] = committed if committed is not None else beginnings[tp]
        return out

    def admit(self, consumer: AIOKafkaConsumer, batch: Batch, mark: int) -> Batch:
        """The records of ``batch`` (polled after ``mark``) that were fetched from where their
        partition was placed; the partitions of the others are sought back to their place."""
        kept: Batch = {}
        for tp, records in batch.items():
            placed = self._placed.get(tp)
            if placed is None:  # its assignment is being placed (or was revoked): placing will seek it
                continue
            number, offset = placed
            if number > mark:  # placed while this poll was running: what it returned may predate the seek
                consumer.seek(tp, offset)
                continue
            kept[tp] = records
        return kept
