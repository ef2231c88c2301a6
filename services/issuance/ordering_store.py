"""The SQL of consent ordering (see ordering.py): the per-partition marks, the held triggers, and
the unsent deliveries a withdrawal cancels. (Erased customers: ``shared.erasure``.)"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import asyncpg

from services.issuance import ordering
from services.issuance.ordering import Known
from shared import events as ev


async def lock_marks(conn: asyncpg.Connection, partitions: Iterable[int]) -> dict[int, Known]:
    """The marks of these partitions, locked until commit (rows created as needed, in order)."""
    parts = sorted(set(partitions))
    if not parts:
        return {}
    lock = ("SELECT partition, changed_offset, state_offset FROM consent_marks"
            " WHERE partition = ANY($1::int[]) ORDER BY partition FOR UPDATE")
    rows = await conn.fetch(lock, parts)
    if len(rows) < len(parts):  # a partition seen for the first time (a round trip saved on every other batch)
        await conn.execute("INSERT INTO consent_marks (partition) SELECT unnest($1::int[]) ON CONFLICT DO NOTHING", parts)
        rows = await conn.fetch(lock, parts)
    return {r["partition"]: Known(r["changed_offset"], r["state_offset"]) for r in rows}


async def save_marks(conn: asyncpg.Connection, marks: dict[int, Known]) -> None:
    if marks:
        parts = sorted(marks)
        await conn.execute(
            "UPDATE consent_marks m SET changed_offset = greatest(m.changed_offset, k.c),"
            " state_offset = greatest(m.state_offset, k.s)"
            " FROM unnest($1::int[], $2::bigint[], $3::bigint[]) AS k(p, c, s) WHERE m.partition = k.p",
            parts, [marks[p].changed for p in parts], [marks[p].state for p in parts])


async def hold(conn: asyncpg.Connection, rows: Sequence[tuple[ev.SegmentEntered, int, datetime]]) -> int:
    """Holds ``(entry with its marks, record timestamp ms, now)``; one per (customer, segment,
    trigger): a redelivered entry is already held. Returns how many were newly held."""
    if not rows:
        return 0
    marks = [ordering.marks_of(e) for e, _, _ in rows]
    status = await conn.execute(
        "INSERT INTO held_triggers (customer_id, segment, trigger_key, partition, changed_offset, state_offset, event,"
        " entered_ms, held_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[],"
        " $6::bigint[], $7::jsonb[], $8::bigint[], $9::timestamptz[]) ON CONFLICT DO NOTHING",
        [e.customer_id for e, _, _ in rows], [e.segment for e, _, _ in rows], [e.trigger_key for e, _, _ in rows],
        [m.partition for m in marks], [m.changed for m in marks], [m.state for m in marks],
        [e.model_dump(mode="json") for e, _, _ in rows],
        [ms for _, ms, _ in rows], [at for _, _, at in rows])
    return int(status.split()[-1])


async def held(conn: asyncpg.Connection, partitions: Sequence[int] | None, limit: int = 1000) -> list[asyncpg.Record]:
    """The oldest held entries (of these partitions), locked until commit; rows another
    transaction is deciding are skipped."""
    return await conn.fetch(
        "SELECT customer_id, segment, trigger_key, partition, changed_offset, state_offset, event, entered_ms, held_at"
        " FROM held_triggers WHERE $1::int[] IS NULL OR partition = ANY($1::int[])"
        " ORDER BY held_at LIMIT $2 FOR UPDATE SKIP LOCKED", None if partitions is None else list(partitions), limit)


async def marks(conn: asyncpg.Connection, partitions: Iterable[int]) -> dict[int, Known]:
    rows = await conn.fetch("SELECT partition, changed_offset, state_offset FROM consent_marks"
                            " WHERE partition = ANY($1::int[])", sorted(set(partitions)))
    return {r["partition"]: Known(r["changed_offset"], r["state_offset"]) for r in rows}


async def unhold(conn: asyncpg.Connection, keys: Sequence[tuple[str, str, str]]) -> None:
    if keys:
        await conn.execute(
            "DELETE FROM held_triggers h USING unnest($1::text[], $2::text[], $3::text[]) AS k(c, s, t)"
            " WHERE h.customer_id = k.c AND h.segment = k.s AND h.trigger_key = k.t",
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])


async def forget_held(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> int:
    status = await conn.execute("DELETE FROM held_triggers WHERE customer_id = ANY($1::text[])", list(customer_ids))
    return int(status.split()[-1])


async def held_of(conn: asyncpg.Connection, customer_id: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT segment, trigger_key, held_at FROM held_triggers WHERE customer_id = $1",
                            customer_id)


# ------------------------------------------------------------------ deliveries


async def withdraw_unsent_deliveries(conn: asyncpg.Connection, customer_ids: Sequence[str],
                                     voucher_ids: Sequence[str]) -> set[str]:
    """Deletes these vouchers' delivery requests that still wait in the outbox and returns their
    voucher ids. One the relay read a moment before may still reach Kafka (the relay does not lock
    what it reads: locking slowed every checkout write); the ``delivery-cancelled`` that follows it,
    same key and later, tells the sender to drop it, and the voucher is revoked either way."""
    if not voucher_ids:
        return set()
    rows = await conn.fetch(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE topic = 'delivery-requested'"
        " AND key = ANY($1::bytea[])"
        " AND jsonb_path_query_first(headers, 'strict $[*] ? (@[0] == \"voucher-id\")[1]') #>> '{}' = ANY($2::text[]))"
        " RETURNING jsonb_path_query_first(headers, 'strict $[*] ? (@[0] == \"voucher-id\")[1]') #>> '{}' AS voucher_id",
        [c.encode() for c in set(customer_ids)], list(voucher_ids))
    return {r["voucher_id"] for r in rows}
