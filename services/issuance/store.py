"""The issuance service's SQL: one function per query (search path: the ``issuance`` schema)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from services.issuance.budget import Ledger, Step
from services.issuance.rules import CustomerConsent
from shared.events import Channel

# ------------------------------------------------------------------ campaigns


async def insert_campaign(conn: asyncpg.Connection, campaign_id: str, segment: str, status: str,
                          definition: dict, currency: str, limit: int) -> bool:
    status_line = await conn.execute(
        "INSERT INTO campaigns (id, segment, status, definition) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        campaign_id, segment, status, definition)
    if not status_line.endswith(" 1"):
        return False
    await conn.execute(
        "INSERT INTO budget_ledger (campaign_id, currency, limit_minor) VALUES ($1, $2, $3)",
        campaign_id, currency, limit)
    return True


async def update_campaign(conn: asyncpg.Connection, campaign_id: str, segment: str, definition: dict) -> None:
    await conn.execute(
        "UPDATE campaigns SET segment = $2, definition = $3, version = version + 1, updated_at = now() WHERE id = $1",
        campaign_id, segment, definition)


async def set_status(conn: asyncpg.Connection, campaign_id: str, status: str) -> None:
    await conn.execute("UPDATE campaigns SET status = $2, version = version + 1, updated_at = now() WHERE id = $1",
                       campaign_id, status)


async def campaign(conn: asyncpg.Connection, campaign_id: str, *, for_update: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, segment, status, definition, version, created_at, updated_at FROM campaigns WHERE id = $1"
        + (" FOR UPDATE" if for_update else ""), campaign_id)


async def campaigns(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, segment, status, definition, version, created_at, updated_at FROM campaigns ORDER BY id")


async def active_campaigns_for(conn: asyncpg.Connection, segments: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, segment, definition, version FROM campaigns WHERE status = 'active' AND segment = ANY($1::text[])"
        " ORDER BY id", list(set(segments)))


async def campaigns_by_id(conn: asyncpg.Connection, ids: Iterable[str]) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, definition, version FROM campaigns WHERE id = ANY($1::text[])", sorted(ids))


# ------------------------------------------------------------------ ledger


def ledger_of(r: asyncpg.Record) -> Ledger:
    return Ledger(r["campaign_id"], r["currency"], r["limit_minor"], r["reserved"], r["spent"], r["seq"], r["vouchers"])


async def lock_ledgers(conn: asyncpg.Connection, campaign_ids: Iterable[str]) -> dict[str, Ledger]:
    """Locks the campaigns' ledger rows until commit, always in id order (no deadlocks)."""
    rows = await conn.fetch(
        "SELECT campaign_id, currency, limit_minor, reserved, spent, seq, vouchers FROM budget_ledger"
        " WHERE campaign_id = ANY($1::text[]) ORDER BY campaign_id FOR UPDATE", sorted(set(campaign_ids)))
    return {r["campaign_id"]: ledger_of(r) for r in rows}


async def ledger(conn: asyncpg.Connection, campaign_id: str) -> Ledger | None:
    r = await conn.fetchrow(
        "SELECT campaign_id, currency, limit_minor, reserved, spent, seq, vouchers FROM budget_ledger"
        " WHERE campaign_id = $1", campaign_id)
    return ledger_of(r) if r else None


class LedgerDisagrees(RuntimeError):
    """The database refused, or applied differently, a step the model planned: a bug, never input."""


async def apply_budget(conn: asyncpg.Connection, steps: Sequence[Step]) -> list[Ledger | None]:
    """Applies steps in order with ``budget_apply`` (the rule, the history rows, one write per
    ledger); returns the ledger after each step, ``None`` where the rule refused it."""
    if not steps:
        return []
    rows = await conn.fetch(
        "SELECT * FROM budget_apply($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[],"
        " $7::text[])", [s.campaign_id for s in steps], [s.d_limit for s in steps], [s.d_reserved for s in steps],
        [s.d_spent for s in steps], [s.d_vouchers for s in steps], [s.cause for s in steps],
        [s.voucher_id for s in steps])
    return [ledger_of(r) if r["applied"] else None for r in rows]


async def save_planned(conn: asyncpg.Connection, steps: Sequence[Step]) -> None:
    """Applies steps planned on ledgers this transaction locked: each must come out as planned."""
    for step, got in zip(steps, await apply_budget(conn, steps), strict=True):
        if got != step.expected:
            raise LedgerDisagrees(f"{step.cause} step on {step.campaign_id}: planned {step.expected}, got {got}")


# ------------------------------------------------------------------ consent


async def consents(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> dict[str, CustomerConsent]:
    rows = await conn.fetch(
        "SELECT customer_id, personalized_offers, channels FROM customer_consent WHERE customer_id = ANY($1::text[])",
        list(set(customer_ids)))
    return {r["customer_id"]: CustomerConsent(r["personalized_offers"], frozenset(Channel(c) for c in r["channels"]))
            for r in rows}


async def save_consents(conn: asyncpg.Connection, rows: Sequence[tuple[str, bool, list[str], datetime]]) -> None:
    if rows:
        await conn.executemany(
            "INSERT INTO customer_consent (customer_id, personalized_offers, channels, updated_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (customer_id) DO UPDATE SET personalized_offers = excluded.personalized_offers,"
            " channels = excluded.channels, updated_at = excluded.updated_at"
            " WHERE customer_consent.updated_at <= excluded.updated_at", rows)


async def forget_consent(conn: asyncpg.Connection, customer_id: str) -> int:
    return int((await conn.execute("DELETE FROM customer_consent WHERE customer_id = $1", customer_id)).split()[-1])


# ------------------------------------------------------------------ attempts and vouchers


async def known_attempts(conn: asyncpg.Connection, keys: Sequence[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    if not keys:
        return set()
    cols = list(zip(*keys, strict=True))
    rows = await conn.fetch(
        "SELECT a.campaign_id, a.customer_id, a.trigger_key FROM issuance_attempts a"
        " JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(c, cu, t)"
        " ON a.campaign_id = k.c AND a.customer_id = k.cu AND a.trigger_key = k.t", *[list(c) for c in cols])
    return {(r[0], r[1], r[2]) for r in rows}


class Attempt(NamedTuple):
    """One issuance decision as stored: a redelivered or replayed entry finds it and decides nothing again."""

    campaign_id: str
    customer_id: str
    trigger_key: str
    outcome: str  # issued, denied
    reason: str | None
    variant: str | None
    voucher_id: str | None
    decided_at: datetime


async def insert_attempts(conn: asyncpg.Connection, rows: Sequence[Attempt]) -> None:
    if rows:
        cols = list(zip(*rows, strict=True))
        await conn.execute(
            "INSERT INTO issuance_attempts (campaign_id, customer_id, trigger_key, outcome, reason, variant, voucher_id,"
            " decided_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
            " $7::text[], $8::timestamptz[])", *[list(c) for c in cols])


async def voucher_counts(conn: asyncpg.Connection, campaign_ids: Sequence[str],
                         customer_ids: Sequence[str]) -> dict[tuple[str, str], int]:
    rows = await conn.fetch(
        "SELECT campaign_id, customer_id, count(*) AS n FROM vouchers WHERE campaign_id = ANY($1::text[])"
        " AND customer_id = ANY($2::text[]) GROUP BY campaign_id, customer_id",
        list(set(campaign_ids)), list(set(customer_ids)))
    return {(r["campaign_id"], r["customer_id"]): r["n"] for r in rows}


class NewVoucher(NamedTuple):
    """A voucher as it is inserted: personal (issued to a customer) or a partner code."""

    id: str
    campaign_id: str
    customer_id: str | None  # None: a partner code
    partner: str | None
    code_hash: bytes
    code_sealed: bytes | None  # on-site vouchers only: the code, sealed for the customer's own listing
    variant: str
    channel: str
    kind: str
    brand: str | None
    currency: str
    reserved: int
    balance: int | None  # gift cards
    status: str
    trigger_key: str | None
    issued_at: datetime
    expires_at: datetime


VOUCHER_COLUMNS = NewVoucher._fields


async def insert_vouchers(conn: asyncpg.Connection, rows: Sequence[NewVoucher]) -> set[str]:
    """Inserts vouchers; returns the ids of those whose code hash was already taken (the caller
    draws new codes for them)."""
    if not rows:
        return set()
    cols = list(zip(*rows, strict=True))
    inserted = await conn.fetch(
        f"INSERT INTO vouchers ({', '.join(VOUCHER_COLUMNS)}) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
        " $4::text[], $5::bytea[], $6::bytea[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],"
        " $12::bigint[], $13::bigint[], $14::text[], $15::text[], $16::timestamptz[], $17::timestamptz[])"
        " ON CONFLICT (code_hash) DO NOTHING RETURNING id", *[list(c) for c in cols])
    return {r.id for r in rows} - {r["id"] for r in inserted}


async def copy_vouchers(conn: asyncpg.Connection, rows: Sequence[NewVoucher]) -> None:
    """Bulk path for partner codes (COPY); a duplicate hash fails the whole batch, which the
    caller retries with fresh codes."""
    await conn.copy_records_to_table("vouchers", records=rows, columns=list(VOUCHER_COLUMNS))


async def active_vouchers_of(conn: asyncpg.Connection, customer_ids: Sequence[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, campaign_id, customer_id, reserved, currency, channel FROM vouchers WHERE status = 'active'"
        " AND customer_id = ANY($1::text[]) ORDER BY id FOR UPDATE", list(set(customer_ids)))


async def due_vouchers(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, campaign_id, customer_id, reserved, currency FROM vouchers WHERE status = 'active'"
        " AND expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED", now, limit)


async def close_vouchers(conn: asyncpg.Connection, ids: Sequence[str], status: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE vouchers SET status = $2, reserved = 0, closed_at = $3 WHERE id = ANY($1::text[])", list(ids), status, at)


async def vouchers_of(conn: asyncpg.Connection, customer_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, campaign_id, variant, channel, kind, brand, currency, reserved, balance, status, trigger_key, issued_at,"
        " expires_at, closed_at FROM vouchers WHERE customer_id = $1 ORDER BY issued_at", customer_id)


async def attempts_of(conn: asyncpg.Connection, customer_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT campaign_id, trigger_key, outcome, reason, variant, voucher_id, decided_at FROM issuance_attempts"
        " WHERE customer_id = $1 ORDER BY decided_at", customer_id)


async def forget_idempotent_answers(conn: asyncpg.Connection | asyncpg.Pool, older_than_days: float,
                                    limit: int) -> int:
    """Retention of Idempotency-Key answers: the oldest ``limit`` past the age go."""
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(SELECT ctid FROM idempotency_keys"
        " WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))", older_than_days * 86400, limit)
    return int(status.split()[-1])


async def pseudonymize(conn: asyncpg.Connection, customer_id: str, pseudonym: str) -> dict[str, int]:
    """Erasure: identity goes, amounts stay (the ledger and the accounts remain whole)."""
    out: dict[str, Any] = {}
    for table in ("vouchers", "issuance_attempts", "redemptions"):
        status = await conn.execute(f"UPDATE {table} SET customer_id = $2 WHERE customer_id = $1", customer_id, pseudonym)
        out[table] = int(status.split()[-1])
    await conn.execute("UPDATE vouchers SET code_sealed = NULL WHERE customer_id = $1", pseudonym)
    # What still identifies the customer beside the id: the shop's order ids, the trigger keys (cart
    # and order ids; hashed with the secret pseudonym, so attempts stay unique and cannot be read),
    # and the answers kept for their redemptions' Idempotency-Keys.
    status = await conn.execute(
        "DELETE FROM idempotency_keys WHERE status_code = 201 AND response ->> 'redemption_id' IN"
        " (SELECT id FROM redemptions WHERE customer_id = $1)", pseudonym)
    out["idempotency_keys"] = int(status.split()[-1])
    await conn.execute("UPDATE redemptions SET order_id = NULL WHERE customer_id = $1 AND order_id IS NOT NULL",
                       pseudonym)
    for table in ("vouchers", "issuance_attempts"):
        await conn.execute(f"UPDATE {table} SET trigger_key = encode(sha256(convert_to($1 || trigger_key, 'UTF8')),"
                           " 'hex') WHERE customer_id = $1 AND trigger_key IS NOT NULL", pseudonym)
    out["customer_consent"] = await forget_consent(conn, customer_id)
    return out


async def redemptions_of(conn: asyncpg.Connection, customer_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, voucher_id, campaign_id, discount, order_amount, currency, status, redeemed_at, rolled_back_at"
        " FROM redemptions WHERE customer_id = $1 ORDER BY redeemed_at", customer_id)
