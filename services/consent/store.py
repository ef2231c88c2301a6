"""The consent service's SQL: one function per query. Connections come from the service's pool,
whose search path is the ``consent`` schema."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.consent.ledger import Decision, ErasureMark
from services.consent.privacy import Part
from shared.events import Purpose


async def lock_customers(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> None:
    """Serialises writers of the same customers (consumer batches and HTTP calls) until commit,
    so ledger order, state and outbox order agree. Sorted, so two writers never deadlock."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('consent:' || c)) FROM"
                       " (SELECT DISTINCT unnest($1::text[]) AS c ORDER BY 1) AS ordered", list(customer_ids))


async def latest_erasures(conn: asyncpg.Connection, hashes: Sequence[str]) -> dict[str, ErasureMark]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (subject_hash) subject_hash, changed_offset, requested_at FROM erasure_proofs"
        " WHERE subject_hash = ANY($1::text[]) ORDER BY subject_hash, requested_at DESC", list(set(hashes)))
    return {r["subject_hash"]: ErasureMark(r["changed_offset"], r["requested_at"]) for r in rows}


async def erased_events(conn: asyncpg.Connection, hashes: Sequence[str]) -> set[str]:
    rows = await conn.fetch("SELECT event_hash FROM erased_events WHERE event_hash = ANY($1::text[])", list(set(hashes)))
    return {r["event_hash"] for r in rows}


async def decisions(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> dict[str, list[Decision]]:
    rows = await conn.fetch(
        "SELECT customer_id, purpose, granted, policy_version, occurred_at, id FROM consent_ledger"
        " WHERE customer_id = ANY($1::text[])", list(set(customer_ids)))
    out: dict[str, list[Decision]] = defaultdict(list)
    for r in rows:
        out[r["customer_id"]].append(
            Decision(Purpose(r["purpose"]), r["granted"], r["policy_version"], r["occurred_at"], r["id"]))
    return out


async def append(conn: asyncpg.Connection, rows: Sequence[tuple]) -> list[asyncpg.Record]:
    """Appends ``(event_id, customer_id, purpose, granted, policy_version, source, occurred_at,
    received_at, via)`` rows; a known event id adds nothing. Returns the rows really added."""
    if not rows:
        return []
    cols = list(zip(*rows, strict=True))
    return await conn.fetch(
        """
        INSERT INTO consent_ledger (event_id, customer_id, purpose, granted, policy_version, source,
                                    occurred_at, received_at, via)
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[],
                             $7::timestamptz[], $8::timestamptz[], $9::text[])
        ON CONFLICT (event_id) DO NOTHING
        RETURNING event_id, customer_id, purpose, granted
        """,
        *[list(c) for c in cols],
    )


async def entry(conn: asyncpg.Connection, event_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT customer_id, purpose, granted, policy_version, source, occurred_at"
                               " FROM consent_ledger WHERE event_id = $1", event_id)


async def history(conn: asyncpg.Connection, customer_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT event_id, purpose, granted, policy_version, source, occurred_at, received_at, via"
        " FROM consent_ledger WHERE customer_id = $1 ORDER BY occurred_at, id", customer_id)


async def erase_customer(conn: asyncpg.Connection, customer_id: str) -> list[str]:
    """Deletes the customer's ledger rows (the one sanctioned exception to append-only); returns
    the event ids they held."""
    rows = await conn.fetch("SELECT erase_consent_ledger($1) AS event_id", customer_id)
    return [r["event_id"] for r in rows]


async def remember_erased_events(conn: asyncpg.Connection, request_id: str, hashes: Sequence[str]) -> None:
    await conn.execute("INSERT INTO erased_events (event_hash, request_id) SELECT h, $1 FROM unnest($2::text[]) h"
                       " ON CONFLICT (event_hash) DO NOTHING", request_id, list(set(hashes)))


async def create_request(conn: asyncpg.Connection, request_id: str, kind: str, subject: str,
                         expected: list[str], at: datetime, customer_id: str | None = None,
                         changed_offset: int | None = None, recipient_private_sealed: bytes | None = None) -> None:
    await conn.execute(
        "INSERT INTO privacy_requests (id, kind, subject_hash, customer_id, expected, requested_at,"
        " recipient_private_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        request_id, kind, subject, customer_id, expected, at, recipient_private_sealed)
    if kind == "erasure":
        await conn.execute(
            "INSERT INTO erasure_proofs (request_id, subject_hash, requested_at, changed_offset) VALUES ($1, $2, $3, $4)",
            request_id, subject, at, changed_offset)


async def request(conn: asyncpg.Connection, request_id: str, kind: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, kind, subject_hash, customer_id, expected, requested_at, completed_at, delivered_at"
        " FROM privacy_requests WHERE id = $1 AND kind = $2", request_id, kind)


async def lock_request(conn: asyncpg.Connection, request_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, kind, subject_hash, customer_id, expected, requested_at, completed_at, delivered_at,"
        " recipient_private_sealed FROM privacy_requests WHERE id = $1 FOR UPDATE", request_id)


async def add_part(conn: asyncpg.Connection, request_id: str, service: str, completed_at: datetime,
                   detail: dict[str, Any], detail_sealed: bytes | None = None) -> bool:
    status = await conn.execute(
        "INSERT INTO privacy_request_parts (request_id, service, completed_at, detail, detail_sealed)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id, service) DO NOTHING",
        request_id, service, completed_at, detail, detail_sealed)
    return status.endswith(" 1")


async def parts(conn: asyncpg.Connection, request_id: str) -> dict[str, Part]:
    rows = await conn.fetch(
        "SELECT service, completed_at, detail, detail_sealed FROM privacy_request_parts WHERE request_id = $1",
        request_id)
    return {r["service"]: Part(r["service"], r["completed_at"], r["detail"], r["detail_sealed"]) for r in rows}


async def deliver_export(conn: asyncpg.Connection, request_id: str, at: datetime) -> bool:
    """The bundle was handed out: its parts and the request's private key go (once)."""
    status = await conn.execute(
        "UPDATE privacy_requests SET delivered_at = $2, recipient_private_sealed = NULL, customer_id = NULL"
        " WHERE id = $1 AND delivered_at IS NULL", request_id, at)
    if not status.endswith(" 1"):
        return False  # another read delivered it
    await conn.execute("UPDATE privacy_request_parts SET detail_sealed = NULL WHERE request_id = $1", request_id)
    return True


async def complete_request(conn: asyncpg.Connection, request_id: str, at: datetime) -> None:
    await conn.execute("UPDATE privacy_requests SET completed_at = $2 WHERE id = $1", request_id, at)
    await conn.execute("UPDATE erasure_proofs SET completed_at = $2 WHERE request_id = $1", request_id, at)


async def forget_exports_of(conn: asyncpg.Connection, subject: str) -> int:
    """An erased customer's earlier exports go too (their parts hold the customer's data)."""
    status = await conn.execute(
        "DELETE FROM privacy_requests WHERE kind = 'export' AND subject_hash = $1", subject)
    return int(status.split()[-1])


async def purge_old_exports(conn: asyncpg.Connection, older_than_s: float) -> int:
    """Exports never fetched: their private keys (the log's copies become unreadable) and parts go."""
    await conn.execute(
        "UPDATE privacy_requests SET recipient_private_sealed = NULL, customer_id = NULL WHERE kind = 'export'"
        " AND recipient_private_sealed IS NOT NULL AND requested_at < now() - make_interval(secs => $1)", older_than_s)
    status = await conn.execute(
        "DELETE FROM privacy_request_parts p USING privacy_requests r WHERE p.request_id = r.id"
        " AND r.kind = 'export' AND r.requested_at < now() - make_interval(secs => $1)", older_than_s)
    return int(status.split()[-1])


async def pending_requests(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT kind, count(*) AS n, min(requested_at) AS oldest FROM privacy_requests"
        " WHERE completed_at IS NULL GROUP BY kind")
