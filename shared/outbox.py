"""The transactional outbox: how a service announces a state change.

A service writes the events that announce a state change into its ``outbox`` table *in the same
PostgreSQL transaction* as the change (:func:`enqueue`); the relay (``shared.relay``) publishes
them to Kafka. Nothing is lost: a row leaves the table only once the broker has it. Writers of
one key serialise on that key's state row before they enqueue (every service's state change
does), so ids follow commit order per key, and the relay publishes in id order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from shared import sealing, tracing
from shared.datakeys import DataKeys
from shared.events import Event, encode, now_utc


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    topic: str  # registry name; the relay adds the deployment's topic prefix
    key: str
    value: bytes | None  # None: a tombstone (or an ``event``, encoded by :func:`enqueue`)
    headers: tuple[tuple[str, str], ...] = ()
    sealed: bool = False  # stored encrypted; the relay opens it as it publishes
    partition: int | None = None  # None: Kafka's murmur2 of the key
    event: Event | None = None
    source: str = ""
    event_id: str | None = None
    traceparent: str | None = None  # the trace context of what caused it (shared.tracing)

    @property
    def personal(self) -> bool:
        """Whether its event has fields to seal under its customer's data key."""
        return self.event is not None and bool(self.event.PERSONAL) and self.event.KEY_FIELD == "customer_id"


def event_record(topic: str, event: Event, *, source: str, event_id: str | None = None,
                 headers: tuple[tuple[str, str], ...] = (), sealed: bool = False,
                 traceparent: str | None = None) -> OutboxRecord:
    """An event to publish; ``traceparent``: the message that caused it (default: the current
    span, such as the HTTP request's)."""
    return OutboxRecord(topic, event.key(), None, headers, sealed, event=event, source=source, event_id=event_id,
                        traceparent=traceparent or tracing.current())


def partition_record(topic: str, event: Event, partition: int, *, source: str) -> OutboxRecord:
    """A record for one partition, whatever its key hashes to (a per-partition watermark)."""
    return OutboxRecord(topic, event.key(), None, partition=partition, event=event, source=source)


def tombstone(topic: str, key: str) -> OutboxRecord:
    return OutboxRecord(topic, key, None)


async def enqueue(conn: asyncpg.Connection, records: Sequence[OutboxRecord],
                  seal_key: bytes | None = None, *, keys: DataKeys | None = None) -> list[int]:
    """Writes ``records`` to the outbox and returns their ids. Call inside the transaction that
    makes the change. Events with personal fields need ``keys``: those fields are sealed under
    their customer's data key, read or created in this transaction. Sealed records need
    ``seal_key`` (the relay gets the same key)."""
    if not records:
        return []
    personal = [r.key for r in records if r.personal]
    data_keys = {}
    if personal:
        if keys is None:
            raise ValueError("events with personal fields need the data keys to be sealed")
        data_keys = await keys.for_customers(conn, personal)
    rows = []
    at = now_utc()  # the envelopes' time: when the transaction wrote them (read once per batch)
    for r in records:
        value = r.value
        if r.event is not None:
            value = encode(r.event, source=r.source, event_id=r.event_id, data_key=data_keys.get(r.key),
                           traceparent=r.traceparent, time=at)
        if r.sealed:
            if seal_key is None:
                raise ValueError("a sealed outbox record needs a seal key")
            value = sealing.seal(seal_key, value or b"", r.key.encode())
        rows.append((r.topic, r.key.encode(), value, [list(h) for h in r.headers], r.sealed, r.partition,
                     r.traceparent))
    if len(rows) == 1:
        return [await conn.fetchval("INSERT INTO outbox (topic, key, value, headers, sealed, partition, traceparent)"
                                    " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id", *rows[0])]
    # One statement for the batch (arrays, unnested in order, so ids follow the records' order).
    return [r["id"] for r in await conn.fetch(
        "INSERT INTO outbox (topic, key, value, headers, sealed, partition, traceparent)"
        " SELECT t, k, v, h::jsonb, s, p, tp FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[], $5::bool[],"
        " $6::int[], $7::text[]) WITH ORDINALITY AS r(t, k, v, h, s, p, tp, n) ORDER BY n RETURNING id",
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
        [orjson.dumps(r[3]).decode() for r in rows], [r[4] for r in rows], [r[5] for r in rows],
        [r[6] for r in rows])]


async def wait_published(pool: asyncpg.Pool, ids: Sequence[int], timeout_s: float, poll_s: float = 0.005) -> bool:
    """Waits until the relay (of whichever instance holds the lock) has published these rows, i.e.
    the broker acknowledged them; False when ``timeout_s`` passed first."""
    if not ids:
        return True
    deadline = time.monotonic() + timeout_s
    while True:
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE id = ANY($1::bigint[]))", list(ids)):
                return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)


