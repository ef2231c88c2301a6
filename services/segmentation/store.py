"""Segmentation's SQL (asyncpg), one function per query. The tables: migrations/001_segmentation.sql."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg
import orjson

from services.segmentation.engine import Customer, partition_of


async def lock_partitions(conn: asyncpg.Connection, schema: str, partitions: Iterable[int]) -> None:
    """Serialises writers of the same customer partitions (two workers overlap during a
    rebalance), in a fixed order so that two batches never wait for each other in a cycle."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1), p) FROM"
                       " (SELECT DISTINCT unnest($2::int[]) AS p ORDER BY 1) AS ordered",
                       f"segmentation:{schema}", sorted(set(partitions)))


async def next_offsets(conn: asyncpg.Connection, tps: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The next offset to apply per (topic, partition); absent: nothing applied yet."""
    tps = list(tps)
    topics, partitions = [t for t, _ in tps], [p for _, p in tps]
    rows = await conn.fetch("SELECT t.topic, t.partition, c.next_offset FROM unnest($1::text[], $2::int[])"
                            " AS t(topic, partition) JOIN consumed_offsets c USING (topic, partition)",
                            topics, partitions)
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def save_offsets(conn: asyncpg.Connection, offsets: dict[tuple[str, int], int]) -> None:
    if not offsets:
        return
    keys = list(offsets)
    await conn.execute(
        "INSERT INTO consumed_offsets (topic, partition, next_offset)"
        " SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])"
        " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()"
        " WHERE consumed_offsets.next_offset < excluded.next_offset",
        [t for t, _ in keys], [p for _, p in keys], [offsets[k] for k in keys])


async def load(conn: asyncpg.Connection, customer_ids: Iterable[str], partitions: Iterable[int] = ()) -> dict[str, Customer]:
    """The stored customers among ``customer_ids``, and every profiled customer of ``partitions``."""
    rows = await conn.fetch("SELECT customer_id, profiling_since, profile::text AS profile FROM customers"
                            " WHERE customer_id = ANY($1::text[]) OR (partition = ANY($2::int[]) AND profile IS NOT NULL)",
                            list(customer_ids), list(partitions))
    return {r["customer_id"]: Customer(r["profiling_since"], orjson.loads(r["profile"]) if r["profile"] else None)
            for r in rows}


async def save(conn: asyncpg.Connection, customers: dict[str, Customer]) -> None:
    """Writes the given customers: those still kept are upserted, the others deleted."""
    kept = [(cid, c) for cid, c in customers.items() if c.kept]
    gone = [cid for cid, c in customers.items() if not c.kept]
    if kept:
        await conn.execute(
            "INSERT INTO customers (customer_id, partition, profiling_since, profile)"
            " SELECT c, p, s, j::jsonb FROM unnest($1::text[], $2::int[], $3::text[], $4::text[]) AS u(c, p, s, j)"
            " ON CONFLICT (customer_id) DO UPDATE SET profiling_since = excluded.profiling_since,"
            " profile = excluded.profile, updated_at = now()",
            [cid for cid, _ in kept], [partition_of(cid.encode()) for cid, _ in kept],
            [c.profiling_since for _, c in kept],
            [orjson.dumps(c.profile).decode() if c.profile is not None else None for _, c in kept])
    if gone:
        await conn.execute("DELETE FROM customers WHERE customer_id = ANY($1::text[])", gone)


async def profile(conn: asyncpg.Connection, customer_id: str) -> dict | None:
    raw = await conn.fetchval("SELECT profile::text FROM customers WHERE customer_id = $1", customer_id)
    return orjson.loads(raw) if raw else None


async def sizes(conn: asyncpg.Connection) -> tuple[int, int]:
    """(customers with profiling consent, of whom with a profile)."""
    row = await conn.fetchrow("SELECT count(*) AS n, count(profile) AS profiles FROM customers")
    return row["n"], row["profiles"]
