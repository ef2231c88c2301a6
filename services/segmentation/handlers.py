"""Segmentation's use case: apply one consumed batch exactly once.

In one transaction: lock the batch's customer partitions, read how far each input partition was
applied, drop what is below (a redelivery or a replay), load the customers the rest touches,
decide (``engine.apply_batch``), write the changed customers, the events to emit (outbox) and the
new offsets. A crash anywhere before the commit leaves nothing; after it, the redelivered batch
finds its offsets applied and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from services.segmentation import engine, rules, store
from services.segmentation.metrics import SegmentationMetrics
from shared import db, erasure
from shared import events as ev
from shared.datakeys import DataKeys
from shared.erasure import subject_hash
from shared.kafka import Message
from shared.outbox import enqueue, event_record

log = logging.getLogger(__name__)
SOURCE = "voucherstream/segmentation"
CONSENT_TOPICS = ("consent-changed", "consent-state")
# What carries no trigger: a batch of only these needs no consent marks.
NO_TRIGGER = {"consent-state", "erasure-requested", "export-requested"}
EndOffsets = Callable[[list[tuple[str, int]]], Awaitable[dict[tuple[str, int], int]]]


class SegmentationHandlers:
    def __init__(self, schema: str, metrics: SegmentationMetrics, ruleset: Callable[[], rules.RuleSet],
                 end_offsets: EndOffsets, pseudonym_key: bytes, keys: DataKeys) -> None:
        self.schema = schema
        self.keys = keys
        self.pseudonym_key = pseudonym_key
        self.metrics = metrics
        self.ruleset = ruleset
        self.end_offsets = end_offsets
        self.handled = 0  # messages applied or found already applied (tests and benchmarks read it)

    async def on_batch(self, pool: asyncpg.Pool, messages: list[Message]) -> None:
        # The marks are read from Kafka while the database works: one round trip less per batch.
        marks = asyncio.ensure_future(self.consent_marks(messages))
        try:
            async with db.batch_transaction(pool) as conn:
                outcome, fresh = await self.apply(conn, messages, marks)
        finally:
            if not marks.done():
                marks.cancel()
            elif not marks.cancelled():
                marks.exception()  # retrieved: a failure of the marks already failed the batch
        self._count(messages, fresh, outcome)

    async def consent_marks(self, messages: list[Message]) -> dict[int, ev.ConsentMarks]:
        """Read after the batch was fetched: where consent-changed and consent-state end on each
        partition that may trigger. Every consent decision published before a trigger of the batch
        lies below them, and issuance decides that trigger only once consent has applied them."""
        partitions = sorted({m.partition for m in messages if m.topic not in NO_TRIGGER})
        if not partitions:
            return {}
        started = time.perf_counter()
        ends = await self.end_offsets([(t, p) for p in partitions for t in CONSENT_TOPICS])
        self.metrics.consent_marks.observe(time.perf_counter() - started)
        return {p: ev.ConsentMarks(partition=p, changed=ends[("consent-changed", p)], state=ends[("consent-state", p)])
                for p in partitions}

    async def apply(self, conn: asyncpg.Connection, messages: list[Message],
                    marks: Awaitable[dict[int, ev.ConsentMarks]] | None = None) -> tuple[engine.Outcome | None, list[Message]]:
        await store.lock_partitions(conn, self.schema, {m.partition for m in messages})
        applied = await store.next_offsets(conn, {(m.topic, m.partition) for m in messages})
        fresh = [m for m in messages if m.offset >= applied.get((m.topic, m.partition), 0)]
        outcome = None
        if fresh:
            ticks = {m.event.partition for m in fresh if isinstance(m.event, ev.SegmentationTick)}
            ids = {m.key for m in fresh if m.key is not None and (m.event is None or m.event.KEY_FIELD == "customer_id")}
            stored = await store.load(conn, ids, ticks)
            subjects = {subject_hash(self.pseudonym_key, cid): cid for cid in ids}
            erased = {subjects[h]: at for h, at in (await erasure.erased(conn, subjects)).items()}
            outcome = engine.apply_batch(stored, engine.in_time_order(fresh), self.ruleset(), ev.now_utc(),
                                         erased=erased, marks=await marks if marks is not None else None)
            await erasure.remember(conn, [(subject_hash(self.pseudonym_key, cid), at)
                                               for cid, at in outcome.newly_erased.items()])
            await store.save(conn, {cid: outcome.customers[cid] for cid in outcome.changed})
            await enqueue(conn, [event_record(topic, e, source=SOURCE, traceparent=cause)
                                 for (topic, e), cause in zip(outcome.emit, outcome.causes, strict=True)],
                          keys=self.keys)
            # After what this batch sealed for them: an erased customer's key goes, and with it
            # every copy of their sealed fields on Kafka.
            await self.keys.destroy(conn, outcome.newly_erased)
        offsets: dict[tuple[str, int], int] = {}
        for m in fresh:
            offsets[(m.topic, m.partition)] = max(offsets.get((m.topic, m.partition), 0), m.offset + 1)
        await store.save_offsets(conn, offsets)
        return outcome, fresh

    async def start_positions(self, pool: asyncpg.Pool, ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Where a newly assigned partition resumes: after what this service applied, whatever the
        group's committed offset says (a restored database resumes from its own state; an
        operator's reset to the earliest offsets is skipped quickly rather than re-read)."""
        async with pool.acquire() as conn:
            applied = await store.next_offsets(conn, ends)
        beyond = {tp: offset for tp, offset in applied.items() if offset > ends[tp]}
        if beyond:
            log.error("applied offsets beyond the end of their partitions: was the topic recreated while the database "
                      "was kept? Those partitions' messages below the applied offsets are skipped; drop the "
                      "segmentation schema to start over", extra={"partitions": sorted(f"{t}:{p}" for t, p in beyond)})
        return {tp: offset for tp, offset in applied.items() if tp not in beyond}

    def _count(self, messages: list[Message], fresh: list[Message], outcome: engine.Outcome | None) -> None:
        self.handled += len(messages)
        if len(fresh) < len(messages):
            seen = {(m.topic, m.partition, m.offset) for m in fresh}
            for m in messages:
                if (m.topic, m.partition, m.offset) not in seen:
                    self.metrics.already_applied.labels(m.topic).inc()
        if outcome is None:
            return
        for (topic, what), n in outcome.counts.items():
            self.metrics.events.labels(topic, what).inc(n)
        for segment, n in outcome.entries.items():
            self.metrics.entries.labels(segment).inc(n)
