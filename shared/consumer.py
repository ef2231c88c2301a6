"""The batch consumer loop every service consumes through, on aiokafka.

The loop's contract, which every service relies on:

- ``getmany`` a batch, decode and validate every record against the topic's contract;
- a record that cannot be decoded or validated goes to ``<topic>.dlq`` with the reason, the error,
  the source topic, partition and offset in its headers, and the loop goes on;
- the handler gets the whole batch of valid messages (one database transaction, typically);
- offsets are committed only after the handler returned, once per batch, never per message;
- a transient failure (database or broker unreachable, serialization conflict) retries the same
  batch with backoff, forever, without committing: nothing is lost and the service never dies;
- any other exception in the handler is isolated: the batch is handled again one message at a
  time and only the message that still fails is dead-lettered (``handler_error``);
- a rebalance waits for the batch in flight to be committed before partitions are revoked;
- a service that keeps its own consumed offsets (``start_positions``) has every newly assigned
  partition placed there before any of its records is handed over (``shared.placement``).

Handlers must therefore be idempotent: a crash between the database commit and the offset
commit redelivers the batch (exactly-once lives in PostgreSQL, see ``shared.outbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from shared import tracing
from shared.deadletters import DeadLetter, DeadLetters
from shared.events import ContractError, Erased, data_key_id, decode
from shared.kafka import Message, Producer, client_id
from shared.metrics import Metrics
from shared.placement import Placement, StartPositions
from shared.retrying import Abandoned, NotTransient, Retrying
from shared.settings import KafkaSettings
from shared.topics import Topic
from shared.topics import topic as registry_topic

if TYPE_CHECKING:
    from shared.datakeys import DataKeys

log = logging.getLogger(__name__)

Handler = Callable[[list[Message]], Awaitable[None]]
Validator = Callable[[Message], None]  # raises ContractError for a message that breaks the contract
# Called when a poll found nothing waiting, with the position of every assigned (registry topic,
# partition): everything below it has been handled (dead letters included) and committed.
OnIdle = Callable[[dict[tuple[str, int], int]], Awaitable[None]]


class BatchConsumer:
    """Consumes registry topics in batches for one consumer group. See the module docstring."""

    def __init__(
        self,
        *,
        settings: KafkaSettings,
        group_id: str,
        topics: Sequence[str],
        handler: Handler,
        producer: Producer,
        metrics: Metrics,
        auto_offset_reset: str = "earliest",
        max_backoff_s: float = 5.0,
        validate: Validator | None = None,
        assignors: tuple = (),
        start_positions: StartPositions | None = None,
        on_idle: OnIdle | None = None,
        keys: DataKeys | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.topics: dict[str, Topic] = {settings.topic(name): registry_topic(name) for name in topics}
        self.handler = handler
        self.producer = producer
        self.dead_letters = DeadLetters(settings, producer, metrics, group_id, self.topics)
        self.metrics = metrics
        self.auto_offset_reset = auto_offset_reset
        self.max_backoff_s = max_backoff_s
        self.validate = validate
        self.assignors = assignors
        self._placement = Placement(start_positions, group_id, max_backoff_s) if start_positions is not None else None
        self.on_idle = on_idle
        self.keys = keys
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets: AIOKafkaConsumer | None = None  # asks log-end offsets (end_offsets), never fetches
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._retrying = Retrying(metrics=metrics, group_id=group_id, max_backoff_s=max_backoff_s,
                                  stopping=self._stopping)
        self._last_lag = 0.0
        self._committed: dict[TopicPartition, int] = {}  # what this member last committed, per partition
        self.batches_committed = 0
        self._commit_in_flight: asyncio.Future | None = None  # the last batch's offset commit

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Asks the loop to finish the batch in flight and return."""
        self._stopping.set()

    def assignment(self) -> set[tuple[str, int]]:
        """The (registry topic, partition) pairs this member holds now."""
        consumer = self._consumer
        if consumer is None:
            return set()
        return {(self.topics[tp.topic].name, tp.partition) for tp in consumer.assignment() if tp.topic in self.topics}

    async def positions(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """This member's position on those of the (registry topic, partition) it holds: every
        record below was handed to the handler (in the batch in flight or before it)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        mine = {TopicPartition(self.settings.topic(t), p): (t, p) for t, p in partitions}
        assigned = consumer.assignment()
        out = {}
        for tp, key in mine.items():
            if tp in assigned:
                try:
                    out[key] = await asyncio.wait_for(consumer.position(tp), 5)
                except (IllegalStateError, KafkaError, TimeoutError):
                    continue
        return out

    async def end_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The log-end offsets of any (registry topic, partition), subscribed or not: every record
        acknowledged before this call lies below them. Asked over a client of its own, which never
        fetches: on the consumer's connection the request would queue behind its long-poll fetch
        (the broker answers a connection's requests in order). Raises while the broker is away."""
        wanted = {TopicPartition(self.settings.topic(t), p): (t, p) for t, p in partitions}
        if not wanted:
            return {}
        if self._offsets is None:
            client = AIOKafkaConsumer(**self.settings.client_options(), group_id=None,
                                      client_id=client_id(self.metrics.service) + "-offsets", metadata_max_age_ms=30_000)
            await client.start()
            self._offsets = client
        ends = await asyncio.wait_for(self._offsets.end_offsets(list(wanted)), self.settings.session_timeout_ms / 1000)
        return {wanted[tp]: offset for tp, offset in ends.items()}

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            **self.settings.client_options(),
            group_id=self.group_id,
            client_id=client_id(self.metrics.service),
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
            max_poll_interval_ms=self.settings.max_poll_interval_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_min_bytes=self.settings.fetch_min_bytes,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            metadata_max_age_ms=30_000,  # a broker restart is noticed within 30 s, not 5 minutes
            **({"partition_assignment_strategy": self.assignors} if self.assignors else {}),
        )
        consumer.subscribe(topics=list(self.topics), listener=_CommitBeforeRevoke(self))
        self._consumer = consumer
        await self._start_with_retry(consumer)
        log.info("consumer started", extra={"group": self.group_id, "topics": list(self.topics)})
        try:
            while not self._stopping.is_set():
                mark = self._placement.mark() if self._placement is not None else 0
                batch = await consumer.getmany(timeout_ms=self.settings.poll_timeout_ms,
                                               max_records=self.settings.max_batch)
                if batch:
                    async with self._lock:
                        if self._placement is not None:
                            batch = self._placement.admit(consumer, batch, mark)
                            if not batch:
                                continue
                        try:
                            await self._process(consumer, batch)
                        except Abandoned:
                            log.info("stopping while a batch was being retried; it will be redelivered",
                                     extra={"group": self.group_id})
                            break
                else:
                    async with self._lock:
                        await self._commit_positions(consumer)
                await self._update_lag(consumer)
        finally:
            try:
                await asyncio.wait_for(self._settle_commit(), self.settings.session_timeout_ms / 1000)
            except Exception as exc:
                log.warning("the last offset commit did not land; its batch will be redelivered",
                            extra={"group": self.group_id, "error": repr(exc)})
            self._consumer = None
            await consumer.stop()
            if self._offsets is not None:
                offsets, self._offsets = self._offsets, None
                await offsets.stop()
            log.info("consumer stopped", extra={"group": self.group_id})

    async def _start_with_retry(self, consumer: AIOKafkaConsumer) -> None:
        delay = 0.2
        while True:
            try:
                await consumer.start()
                return
            except KafkaError as exc:
                if self._stopping.is_set():
                    raise
                log.warning("kafka not reachable, retrying", extra={"error": repr(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    # ------------------------------------------------------------------ one batch

    async def _process(self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        started = time.perf_counter()
        messages: list[Message] = []
        dead: list[DeadLetter] = []
        erased: dict[TopicPartition, int] = defaultdict(int)
        keys = self.keys
        if keys is not None:  # the data keys of sealed records, in one query
            key_ids = {k for records in batch.values() for r in records if (k := data_key_id(r.value))}
            if key_ids:
                await self._retrying(lambda: keys.load(key_ids))
        received = tracing.Received(self.metrics.service)
        for tp, records in batch.items():
            spec = self.topics[tp.topic]
            for record in records:
                try:
                    messages.append(self._decode(spec, record, received))
                except ContractError as exc:
                    dead.append(DeadLetter(record.topic, record.partition, record.offset, record.key, record.value,
                                           exc.reason, exc.detail))
                except Erased:  # its customer's data key is destroyed: nothing left to act on
                    erased[tp] += 1
        if dead:
            await self._retrying(lambda: self.dead_letters.send(dead))
        if messages:
            with received.handling():
                await self._handle(messages)
        offsets = {tp: OffsetAndMetadata(records[-1].offset + 1, "") for tp, records in batch.items()}
        # The commit goes on while the next batch is fetched and handled (a crash before it lands
        # redelivers the batch, as a crash before any commit does); one at a time, in order.
        await self._settle_commit()
        self._commit_in_flight = asyncio.ensure_future(self._commit(consumer, offsets))
        for tp, records in batch.items():
            base = self.topics[tp.topic].name
            handled = len(records) - erased[tp] - sum(1 for d in dead if d.topic == tp.topic and d.partition == tp.partition)
            if handled:
                self.metrics.consumed.labels(self.metrics.service, base, "handled").inc(handled)
            if erased[tp]:
                self.metrics.consumed.labels(self.metrics.service, base, "skipped_erased").inc(erased[tp])
        self.metrics.batch_size.labels(self.metrics.service).observe(len(messages) + len(dead))
        self.metrics.batch_duration.labels(self.metrics.service).observe(time.perf_counter() - started)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            await consumer.commit(offsets)
            self.batches_committed += 1
            self._committed.update({tp: meta.offset for tp, meta in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            # The group rebalanced under us: the new owner re-reads the batch; handlers are idempotent.
            log.warning("offset commit refused after a rebalance; the batch will be redelivered",
                        extra={"group": self.group_id, "error": repr(exc)})

    async def _settle_commit(self) -> None:
        """Waits for the offset commit in flight, if any (its failure is raised here)."""
        pending, self._commit_in_flight = self._commit_in_flight, None
        if pending is not None:
            await pending

    async def _commit_positions(self, consumer: AIOKafkaConsumer) -> None:
        """When idle (nothing was waiting), commits each partition's position where it is ahead of
        the last commit: a partition whose position moved without a record to handle — a seek to a
        stored position, the offset gaps of a compacted topic or of transaction markers — would
        otherwise keep its old commit, and its lag would never reach 0."""
        await self._settle_commit()
        ahead, positions = {}, {}
        for tp in consumer.assignment():
            if self._placement is not None and not self._placement.is_placed(tp):
                continue  # its position is not where it resumes yet
            try:  # (waits while a new assignment's position is being reset)
                position = await asyncio.wait_for(consumer.position(tp), 5)
            except (IllegalStateError, KafkaError, TimeoutError):
                continue
            positions[(self.topics[tp.topic].name, tp.partition)] = position
            if position > self._committed.get(tp, -1):
                ahead[tp] = position
        if self.on_idle is not None and positions:
            try:
                await self.on_idle(positions)
            except Exception as exc:
                log.warning("idle hook failed; trying again when next idle",
                            extra={"group": self.group_id, "error": repr(exc)})
        if not ahead:
            return
        try:
            await consumer.commit({tp: OffsetAndMetadata(p, "") for tp, p in ahead.items()})
            self._committed.update(ahead)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            log.info("idle position commit not done; next time", extra={"group": self.group_id, "error": repr(exc)})

    async def place(self, assigned: Iterable[TopicPartition]) -> None:
        """Seeks newly assigned partitions to where ``start_positions`` says they resume."""
        consumer = self._consumer
        if self._placement is None or consumer is None:
            return
        tps = {(self.topics[tp.topic].name, tp.partition): tp for tp in assigned if tp.topic in self.topics}
        async with self._lock:
            await self._placement.place(consumer, tps, self._stopping)

    def _decode(self, spec: Topic, record: ConsumerRecord, received: tracing.Received) -> Message:
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        if record.value is None and spec.compacted:
            return Message(spec.name, record.partition, record.offset, key, None, None, record.timestamp, None)
        envelope, event = decode(record.value, spec.events, self.keys.opener if self.keys is not None else None)
        if key is not None and event.key() != key:
            raise ContractError("key_mismatch", f"message key does not match data.{event.KEY_FIELD}")
        traceparent = received.start(spec.name, record.partition, record.offset, envelope.traceparent)
        message = Message(spec.name, record.partition, record.offset, key, envelope, event, record.timestamp,
                          record.value, traceparent)
        if self.validate is not None:
            self.validate(message)
        return message

    async def _handle(self, messages: list[Message]) -> None:
        try:
            await self._retrying(lambda: self.handler(messages))
            return
        except NotTransient as failure:
            if len(messages) == 1:
                await self._dead_letter_handled(messages[0], failure.__cause__)
                return
            log.warning("batch failed; handling its messages one by one to isolate the culprit",
                        extra={"group": self.group_id, "error": repr(failure.__cause__), "size": len(messages)})
        for message in messages:
            try:
                await self._retrying(functools.partial(self.handler, [message]))
            except NotTransient as failure:
                await self._dead_letter_handled(message, failure.__cause__)

    async def _dead_letter_handled(self, message: Message, exc: BaseException | None) -> None:
        dead = self.dead_letters.of_handled(message, exc)
        await self._retrying(lambda: self.dead_letters.send([dead]))

    # ------------------------------------------------------------------ lag

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._last_lag < 1.0:
            return
        self._last_lag = now
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await consumer.position(tp)
            except (IllegalStateError, KafkaError):
                continue
            self.metrics.consumer_lag.labels(self.metrics.service, self.topics[tp.topic].name, str(tp.partition)).set(
                max(end - position, 0))

    async def revoke(self, partitions: Iterable[TopicPartition]) -> None:
        """Before partitions go to another member: waits for the batch in flight and its offset
        commit, then drops what this member knew of them (placements, commits, lag gauges)."""
        async with self._lock:
            try:
                await self._settle_commit()
            except Exception as exc:  # the partitions go anyway; their new owner re-reads from the last commit
                log.warning("offset commit failed before a revocation", extra={"group": self.group_id, "error": repr(exc)})
            partitions = list(partitions)
            if self._placement is not None:
                self._placement.forget(partitions)
            for tp in partitions:
                self._committed.pop(tp, None)
                spec = self.topics.get(tp.topic)
                if spec is not None:
                    with contextlib.suppress(KeyError):  # no gauge yet
                        self.metrics.consumer_lag.remove(self.metrics.service, spec.name, str(tp.partition))


class _CommitBeforeRevoke(ConsumerRebalanceListener):
    """Makes a rebalance wait until the batch in flight is handled and its offsets committed."""

    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked) -> None:
        await self.owner.revoke(revoked)

    async def on_partitions_assigned(self, assigned) -> None:
        log.info("partitions assigned", extra={"group": self.owner.group_id,
                                               "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)})
        await self.owner.place(assigned)
