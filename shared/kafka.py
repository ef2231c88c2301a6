"""Kafka plumbing on aiokafka: the decoded message, an idempotent producer, dead letters and
what counts as a transient failure. The consumer loop is ``shared.consumer``."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.errors import TransientError
from shared.events import ContractError, Envelope, Event
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)
E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded, validated record. ``event`` and ``envelope`` are ``None`` for a tombstone."""

    topic: str  # the registry name (without any test prefix)
    partition: int
    offset: int
    key: str | None
    envelope: Envelope | None
    event: Event | None
    timestamp_ms: int
    raw: bytes | None = field(default=None, repr=False, compare=False)
    traceparent: str | None = None  # the trace context its consequences carry (shared.tracing)

    @property
    def is_tombstone(self) -> bool:
        return self.event is None

    def of(self, kind: type[E]) -> E:
        """The event as the type its topic carries (the consumer decoded it against the topic's
        contract, so anything else is a bug here, not bad input)."""
        if not isinstance(self.event, kind):
            raise TypeError(f"{self.topic} carried {type(self.event).__name__}, expected {kind.__name__}")
        return self.event

    @property
    def event_id(self) -> str:
        """The envelope's id (a tombstone has none)."""
        if self.envelope is None:
            raise TypeError(f"a tombstone on {self.topic} has no event id")
        return self.envelope.id


_TRANSIENT_PG = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # "cannot switch to state ...": the connection broke mid-call
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


def is_transient(exc: BaseException) -> bool:
    """Failures of the infrastructure, not of the message: retrying later can succeed."""
    return isinstance(exc, (TransientError, OSError, TimeoutError, asyncio.TimeoutError, KafkaError, *_TRANSIENT_PG))


def client_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


class Producer:
    """An idempotent producer (acks=all) that replaces itself after a failed send.

    aiokafka keeps counting a partition's sequence numbers past a batch that expired while the
    broker was away (a restart, say); the broker then refuses every later batch from that producer
    id with ``OutOfOrderSequenceNumber``, for good. So when a send fails, the next send goes through
    a fresh producer (a new id, sequences from zero). Whatever the failed batch may still have
    written is the caller's to reconcile, as for any failed send: the outbox reads the partition
    tails back, consumers retry idempotently.
    """

    def __init__(self, options: dict) -> None:
        self._options = options
        self._producer: AIOKafkaProducer | None = None
        self._replacing: asyncio.Task | None = None
        self.replacements = 0

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(**self._options)
        await self._producer.start()

    async def _current(self) -> AIOKafkaProducer:
        if self._replacing is not None:
            await asyncio.shield(self._replacing)
        assert self._producer is not None, "Producer.start() first"
        return self._producer

    def _watch(self, producer: AIOKafkaProducer, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is None:
            return
        if producer is self._producer and self._replacing is None:
            self._replacing = asyncio.ensure_future(self._replace(producer))

    async def _replace(self, old: AIOKafkaProducer) -> None:
        delay = 0.2
        try:
            while True:
                fresh = AIOKafkaProducer(**self._options)
                try:
                    await fresh.start()
                    break
                except asyncio.CancelledError:  # stop() while replacing: nothing left open
                    await fresh.stop()
                    raise
                except Exception as exc:
                    log.warning("could not start a fresh producer yet", extra={"error": repr(exc), "retry_in_s": delay})
                    await fresh.stop()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            self._producer = fresh
            self.replacements += 1
            log.warning("a send failed; the producer was replaced by a fresh one",
                        extra={"replacements": self.replacements})
        finally:
            self._replacing = None
        try:
            await asyncio.wait_for(old.stop(), 10)
        except Exception:
            pass

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, headers=None) -> asyncio.Future:
        producer = await self._current()
        return await self._watched(producer, producer.send(topic, value=value, key=key, partition=partition,
                                                           headers=headers))

    async def send_batches(self, topic: str, partition: int,
                           records: Iterable[tuple[bytes | None, bytes | None, list]]) -> list[asyncio.Future]:
        """Sends ``(key, value, headers)`` records to one partition, in order, in as few batches
        as their size allows (aiokafka's batch builder: a fraction of the CPU of a ``send`` per
        record; ``bench.limits`` measures both). Returns the batches' futures."""
        producer = await self._current()
        futures = []
        batch = producer.create_batch()
        for key, value, headers in records:
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                futures.append(await self._watched(producer, producer.send_batch(batch, topic, partition=partition)))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    raise ValueError(f"a record of {len(value or b'')} bytes is larger than a batch")
        if batch.record_count():
            futures.append(await self._watched(producer, producer.send_batch(batch, topic, partition=partition)))
        return futures

    async def _watched(self, producer: AIOKafkaProducer, sending: Awaitable[asyncio.Future]) -> asyncio.Future:
        """The delivery future of a send through ``producer``; a failure, at once or on delivery,
        has the next send go through a fresh producer."""
        try:
            future = await sending
        except KafkaError:
            if producer is self._producer and self._replacing is None:
                self._replacing = asyncio.ensure_future(self._replace(producer))
            raise
        future.add_done_callback(lambda f: self._watch(producer, f))
        return future

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                            partition: int | None = None, headers=None):
        return await (await self.send(topic, value=value, key=key, partition=partition, headers=headers))

    async def partitions_for(self, topic: str):
        return await (await self._current()).partitions_for(topic)

    async def flush(self) -> None:
        await (await self._current()).flush()

    async def stop(self) -> None:
        if self._replacing is not None:
            self._replacing.cancel()
        if self._producer is not None:
            await self._producer.stop()


async def start_producer(settings: KafkaSettings, service: str, **overrides) -> Producer:
    """An idempotent producer (acks=all): a retried send never duplicates or reorders a partition."""
    options = settings.client_options(
        client_id=client_id(service),
        enable_idempotence=True,
        acks="all",
        linger_ms=settings.linger_ms,
        max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
        metadata_max_age_ms=30_000,
    )
    options.update(overrides)
    producer = Producer(options)
    await producer.start()
    return producer


async def send_all(producer: Producer | AIOKafkaProducer, records: Iterable[tuple[str, bytes | None, bytes | None, list]]) -> None:
    """Sends ``(topic, key, value, headers)`` records, batched by the producer, and waits until the
    broker acknowledged every one (raises on the first failure)."""
    futures = [await producer.send(t, key=k, value=v, headers=h or None) for t, k, v, h in records]
    if futures:
        await asyncio.gather(*futures)


def sanitized(exc: BaseException) -> str:
    """An exception as logs and dead-letter headers carry it: its type and what identifies the
    failure (a contract reason, a PostgreSQL error code and constraint), never its message, which
    may quote the input (``Key (customer_id)=(alice@example.com) already exists``)."""
    if isinstance(exc, ContractError):
        return f"{exc.reason}: {exc.detail}"
    parts = [type(exc).__name__]
    for label, attribute in (("sqlstate", "sqlstate"), ("constraint", "constraint_name")):
        if value := getattr(exc, attribute, None):
            parts.append(f"{label} {value}")
    return ", ".join(parts)
