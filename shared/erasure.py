"""What every service applies the same way after an erasure: keyed hashes that stand in for a
customer's id (a service recognises an erased customer again — proof, replays — without keeping
the id; irreversible without the key), and which consent-state copies belong to the erased past.
Services that keep erased customers have an ``erased_customers (subject_hash, erased_at)`` table
in their schema."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from datetime import datetime

import asyncpg


def subject_hash(key: bytes, customer_id: str) -> str:
    """A customer's (or any subject's) keyed hash, HMAC-SHA256 in hex: what stands for them where
    their id must not (erasure marks, data keys, pseudonyms, failure buckets)."""
    return hmac.digest(key, customer_id.encode(), "sha256").hex()


def stale_for_erased(updated_at: datetime, erased_at: datetime | None) -> bool:
    """A consent-state of an erased customer that the consent service wrote before the erasure
    (a replay, a stale copy re-published): it must not bring them back. Both times are the consent
    service's own clock, never a time the shop chose; a state written after the erasure is a
    returning customer's."""
    return erased_at is not None and updated_at <= erased_at


async def remember(conn: asyncpg.Connection, rows: Sequence[tuple[str, datetime]]) -> None:
    """Records ``(subject hash, erased at)``; a later erasure of the same customer moves the time."""
    if rows:
        await conn.execute(
            "INSERT INTO erased_customers (subject_hash, erased_at) SELECT * FROM unnest($1::text[], $2::timestamptz[])"
            " ON CONFLICT (subject_hash) DO UPDATE SET erased_at = greatest(erased_customers.erased_at, excluded.erased_at)",
            [h for h, _ in rows], [at for _, at in rows])


async def erased(conn: asyncpg.Connection, hashes: Iterable[str]) -> dict[str, datetime]:
    """``{subject hash: erased at}`` of those of ``hashes`` that were erased."""
    rows = await conn.fetch("SELECT subject_hash, erased_at FROM erased_customers WHERE subject_hash = ANY($1::text[])",
                            list(set(hashes)))
    return {r["subject_hash"]: r["erased_at"] for r in rows}
