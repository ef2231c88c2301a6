"""The outbox relay: publishes the rows services enqueue (``shared.outbox``).

:class:`OutboxRelay` publishes a schema's unsent outbox rows to Kafka in id order and marks them
sent. Guarantees:

- **nothing lost**: a row is deleted (marked sent for good) only after the broker acknowledged it
  (acks=all), in the transaction that read it;
- **in order per key**: rows are published in id order, with an explicit partition (Kafka's
  murmur2 of the key) through an idempotent producer; ids follow commit order per key (how the
  writers ensure it: ``shared.outbox``);
- **once**: every record carries ``outbox.source`` and ``outbox.id`` headers. After a crash or a
  failed round (published, not yet marked sent), the relay reads back the tail of the partitions
  its unsent rows map to and marks the ones already there as sent instead of publishing them
  again;
- **one relay at a time** per schema: the relay that holds a session advisory lock publishes, the
  others stand by. A relay that takes the lock over reads the partition tails back first (its
  predecessor may have died between publishing a round and marking it sent), so a ``kill -9``
  of the publishing replica never duplicates a record. (A lock taken anew for every round would
  let replicas alternate, and one would re-publish the round another died in.)

The relay polls: every ``min_poll_s`` while rows keep coming, slowing down to ``max_poll_s``
when idle. (LISTEN/NOTIFY would wake it sooner, but PostgreSQL serialises the commits of every
notifying transaction on one lock held through the WAL flush: it capped the checkout at one
redemption per flush.) A round reads the rows above a mark, from the index's edge: read from the
table's start, every round stepped over the entries of the rows deleted since the last vacuum.
Ids are taken at insert and commits land in any order, so an id missing above the mark may be a
transaction still open: the mark moves up through the ids relayed without a gap, and waits at a
gap for up to ``full_pass_s`` (an id rolled back never comes). Every ``full_pass_s``, and after a
takeover, a round reads from the start, for a transaction open longer than that. Its connection is
planned for probes by key (``shared.db.KEY_PROBES``): a plan made while the queue was empty would
scan and sort it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import sealing, tracing
from shared.kafka import Producer, is_transient
from shared.metrics import Metrics
from shared.settings import KafkaSettings
from shared.topics import partition_for

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        producer: Producer,
        kafka: KafkaSettings,
        schema: str,
        metrics: Metrics,
        batch_size: int = 500,
        min_poll_s: float = 0.005,
        max_poll_s: float = 0.05,
        recovery_scan_limit: int = 20_000,
        full_pass_s: float = 1.0,
        on_published: Callable[[str, dict[str, str], float], None] | None = None,
        seal_key: bytes | None = None,
        previous_seal_keys: Sequence[bytes] = (),
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.kafka = kafka
        self.schema = schema
        self.metrics = metrics
        self.batch_size = batch_size
        self.min_poll_s = min_poll_s
        self.max_poll_s = max_poll_s
        self.recovery_scan_limit = recovery_scan_limit
        self.full_pass_s = full_pass_s
        self._after = 0  # every id up to it was relayed, or waited for in vain
        self._gap_since: float | None = None  # when the id after the mark was first missed
        self._full_pass_due = 0.0
        self.on_published = on_published  # (registry topic, row headers, ack time) for service metrics
        self.open_keys = [k for k in (seal_key, *previous_seal_keys) if k is not None]  # a rotation: earlier keys
        self.source = f"{schema}"
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._needs_recovery = True
        self._leader: asyncpg.pool.PoolConnectionProxy | None = None  # holds the session lock
        self.standby_poll_s = 1.0
        self._partitions: dict[str, int] = {}
        self.published = 0
        self.recovered = 0  # rows found already on Kafka after a crash and marked sent, not re-sent

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """Ends the idle wait now (a caller waits for what it just enqueued)."""
        self._wake.set()

    async def run(self) -> None:
        delay = 0.1
        idle = self.min_poll_s
        try:
            while not self._stopping.is_set():
                try:
                    n = await self.publish_once()
                    delay = 0.1
                except Exception as exc:
                    self._needs_recovery = True
                    await self._resign()
                    level = logging.WARNING if is_transient(exc) else logging.ERROR
                    log.log(level, "outbox relay round failed, retrying", exc_info=not is_transient(exc),
                            extra={"schema": self.schema, "error": repr(exc), "retry_in_s": delay})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if n >= self.batch_size:
                    continue
                if self._leader is None:
                    idle = self.standby_poll_s  # another replica relays: check now and then whether it still does
                else:
                    idle = self.min_poll_s if n else min(idle * 2, self.max_poll_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=idle)
                self._wake.clear()
        finally:
            await self._resign()

    async def _lead(self) -> asyncpg.pool.PoolConnectionProxy | None:
        """The connection holding the schema's relay lock if this relay holds it (taking it if it
        is free); None while another instance relays."""
        if self._leader is not None:
            if not self._leader.is_closed():
                return self._leader
            await self._resign()
        conn = await self.pool.acquire()
        try:
            mine = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"outbox:{self.schema}")
        except BaseException:
            await self.pool.release(conn)
            raise
        if not mine:
            await self.pool.release(conn)
            return None
        self._leader = conn
        self._needs_recovery = True  # whoever relayed before may have died mid-round
        log.info("this instance relays the outbox now", extra={"schema": self.schema})
        return conn

    async def close(self) -> None:
        """Gives the relay lock up (``run`` does it when it ends; for callers of ``publish_once``)."""
        await self._resign()

    async def _resign(self) -> None:
        conn, self._leader = self._leader, None
        self._after, self._gap_since = 0, None
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.execute("SELECT pg_advisory_unlock_all()"), 5)
        except Exception:
            conn.terminate()
        await self.pool.release(conn)

    async def _partition_count(self, topic: str) -> int:
        if topic not in self._partitions:
            parts = await self.producer.partitions_for(topic)
            if not parts:
                raise RuntimeError(f"topic {topic} does not exist (run `make topics`)")
            self._partitions[topic] = len(parts)
        return self._partitions[topic]

    async def publish_once(self) -> int:
        """Publishes up to ``batch_size`` unsent rows; returns how many it handled."""
        conn = await self._lead()
        if conn is None:
            return 0  # another instance of the service relays
        after = self._after
        if self._needs_recovery or time.monotonic() >= self._full_pass_due:
            after = 0  # from the start: rows committed after a later one was relayed are below the mark
            self._full_pass_due = time.monotonic() + self.full_pass_s
        async with conn.transaction():
            rows = await conn.fetch("SELECT id, topic, key, value, headers, sealed, partition, created_at, traceparent"
                                    " FROM outbox WHERE id > $2 ORDER BY id LIMIT $1", self.batch_size, after)
            if not rows:
                self.metrics.outbox_pending.labels(self.metrics.service).set(0)
                return 0
            placed = []
            for row in rows:
                topic = self.kafka.topic(row["topic"])
                partition = row["partition"]
                if partition is None:
                    partition = partition_for(row["key"], await self._partition_count(topic))
                placed.append((row, topic, partition))
            already: set[int] = set()
            if self._needs_recovery:
                already = await self._already_published(placed)
                self._needs_recovery = False
            # Per partition in id order, in batches (a partition's rows keep their order on it).
            source = ("outbox.source", self.source.encode())
            by_partition: dict[tuple[str, int], list] = defaultdict(list)
            for row, topic, partition in placed:
                if row["id"] in already:
                    continue
                headers = [(k, v.encode()) for k, v in row["headers"]]
                headers += [source, ("outbox.id", str(row["id"]).encode())]
                value = row["value"]
                if row["sealed"]:
                    value = sealing.unseal_any(self.open_keys, value, row["key"])
                with tracing.publishing(topic, row["traceparent"]):
                    by_partition[(topic, partition)].append((row["key"], value, headers))
            futures = []
            for (topic, partition), records in by_partition.items():
                futures += await self.producer.send_batches(topic, partition, records)
            if futures:
                await asyncio.gather(*futures)
            ids = [row["id"] for row, _, _ in placed]
            # Sent rows are deleted, not kept: Kafka is the log, and a published row would otherwise
            # keep a customer's id (or a sealed code) in the database after an erasure.
            await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", ids)
            self._advance(ids)
            # A short round read every unsent row there was: what is pending is only counted
            # (a round trip more) when the round was full.
            pending = (await conn.fetchval("SELECT count(*) FROM outbox")
                       if len(rows) >= self.batch_size else 0)
        now = time.time()
        per_topic: dict[str, int] = defaultdict(int)
        delay = self.metrics.outbox_delay.labels(self.metrics.service)
        for row, _topic, _ in placed:
            per_topic[row["topic"]] += 1
            delay.observe(max(now - row["created_at"].timestamp(), 0))
            if self.on_published is not None and row["headers"]:
                self.on_published(row["topic"], dict(row["headers"]), now)
        for topic, n in per_topic.items():
            self.metrics.outbox_published.labels(self.metrics.service, topic).inc(n)
        self.metrics.outbox_pending.labels(self.metrics.service).set(pending)
        self.published += len(placed) - len(already)
        self.recovered += len(already)
        if already:
            log.info("outbox recovery: rows already on Kafka were marked sent, not published again",
                     extra={"schema": self.schema, "rows": len(already)})
        return len(placed)

    def _advance(self, relayed: list[int]) -> None:
        """Moves the mark up through the ids just relayed that follow it without a gap; past a gap
        only once it was missed for ``full_pass_s``."""
        now = time.monotonic()
        for i in sorted(relayed):
            if i <= self._after:
                continue  # found by a round from the start
            if i != self._after + 1:
                if self._gap_since is None:
                    self._gap_since = now
                if now - self._gap_since < self.full_pass_s:
                    return
            self._after, self._gap_since = i, None

    async def _already_published(self, placed: Iterable[tuple]) -> set[int]:
        """Which of these unsent rows are already on their partition (published by a round that
        failed or crashed before marking them sent)."""
        wanted: dict[TopicPartition, set[int]] = defaultdict(set)
        for row, topic, partition in placed:
            wanted[TopicPartition(topic, partition)].add(row["id"])
        found: set[int] = set()
        consumer = AIOKafkaConsumer(**self.kafka.client_options(), enable_auto_commit=False,
                                    group_id=None, client_id=f"{self.source}-outbox-recovery")
        await consumer.start()
        try:
            tps = list(wanted)
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            begins = await consumer.beginning_offsets(tps)
            for tp in tps:
                found |= await self._scan_tail(consumer, tp, begins[tp], ends[tp], wanted[tp])
        finally:
            await consumer.stop()
        return found

    async def _scan_tail(self, consumer: AIOKafkaConsumer, tp: TopicPartition, begin: int, end: int,
                         unsent: set[int]) -> set[int]:
        """Reads the partition backwards in windows until it meets one of our rows that is already
        marked sent (everything before it was settled), the start, or the scan limit."""
        found: set[int] = set()
        window = max(self.batch_size * 2, 100)
        upper = end
        scanned = 0
        while upper > begin and scanned < self.recovery_scan_limit:
            lower = max(begin, upper - window)
            consumer.seek(tp, lower)
            settled = False
            position = lower
            while position < upper:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=window)
                records = batch.get(tp, [])
                if not records:
                    break
                for record in records:
                    if record.offset >= upper:
                        break
                    headers = dict(record.headers or ())
                    if headers.get("outbox.source") == self.source.encode():
                        oid = int(headers["outbox.id"])
                        if oid in unsent:
                            found.add(oid)
                        else:
                            settled = True
                position = records[-1].offset + 1
            scanned += upper - lower
            if settled:
                break
            upper = lower
        return found
