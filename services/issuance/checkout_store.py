"""The checkout's SQL (search path: the ``issuance`` schema): a voucher read with its campaign
and ledger, redemptions written one by one or in batches, the ledger moved by one conditional
statement, Idempotency-Keys, failure-limit buckets, rollbacks and on-site offers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.issuance.budget import Ledger
from services.issuance.store import ledger_of
from shared.datakeys import DataKey


@dataclass(frozen=True, slots=True)
class SingleUse:
    """One redemption of a single-use code, decided and ready to write."""

    campaign_id: str
    voucher_id: str
    reserved: int  # as read: the write applies only if the voucher still holds it
    discount: int
    redemption_id: str
    customer_id: str
    order_id: str | None
    order_amount: int
    currency: str
    at: datetime
    api_key_id: str
    key: str
    request_hash: bytes
    response: dict
    event: Callable[[DataKey], bytes]  # voucher-redeemed with a placeholder ledger, sealed under this key
    session: str | None = None  # the checkout session of the request: a voucher another holds is stale


_VOUCHER_VIEW = ("SELECT id, campaign_id, customer_id, partner, variant, channel, kind, brand, currency, reserved, balance,"
                 " status, expires_at, code_sealed FROM vouchers")


# A voucher with its campaign and an (unlocked) read of its ledger, by code hash.
_CONTEXT = (
    "SELECT v.id, v.campaign_id, v.customer_id, v.partner, v.variant, v.channel, v.kind, v.brand, v.currency,"
    " v.reserved, v.balance, v.status, v.expires_at, v.session, v.session_expires_at,"
    " c.status AS campaign_status, c.definition, c.version,"
    " l.limit_minor, l.reserved AS ledger_reserved, l.spent AS ledger_spent"
    " FROM vouchers v JOIN campaigns c ON c.id = v.campaign_id JOIN budget_ledger l ON l.campaign_id = v.campaign_id"
)


async def stored_code_hash(pool: asyncpg.Pool, hashes: list[bytes]) -> bytes | None:
    """The first of ``hashes`` (one code under each code-hash key, newest first) a voucher holds."""
    return await pool.fetchval(
        "SELECT h FROM unnest($1::bytea[]) WITH ORDINALITY AS k(h, i) WHERE EXISTS"
        " (SELECT 1 FROM vouchers v WHERE v.code_hash = k.h) ORDER BY i LIMIT 1", hashes)


async def lock_for_redemption(conn: asyncpg.Connection, code_hash: bytes) -> asyncpg.Record | None:
    """The voucher, locked (two redemptions of one code are serialised), with its campaign and an
    unlocked read of its ledger — one round trip."""
    return await conn.fetchrow(
        _CONTEXT + " WHERE v.code_hash = $1 FOR UPDATE OF v", code_hash)


async def record_redemption(conn: asyncpg.Connection, *, voucher_id: str, status: str, reserved: int,
                            balance: int | None, closed_at: datetime | None, redemption: tuple,
                            api_key_id: str, idempotency_key: str, response: dict) -> None:
    """The voucher's new state, the redemption and the idempotent answer, in one statement."""
    await conn.execute(
        "WITH v AS (UPDATE vouchers SET status = $2, reserved = $3, balance = $4, closed_at = $5 WHERE id = $1),"
        " r AS (INSERT INTO redemptions (id, voucher_id, campaign_id, customer_id, order_id, discount, reserved_used,"
        " order_amount, currency, status, redeemed_at) VALUES ($6, $1, $7, $8, $9, $10, $11, $12, $13, 'redeemed', $14))"
        " UPDATE idempotency_keys SET status_code = 201, response = $17 WHERE api_key_id = $15 AND key = $16",
        voucher_id, status, reserved, balance, closed_at, *redemption, api_key_id, idempotency_key, response)


# The voucher and the key's answer are looked up per request (LATERAL ... LIMIT 1): as joins, a
# batch of 60 codes hashed all the vouchers. These reads keep PostgreSQL's cached plans (they run
# per request; a consumed batch is planned anew, see shared.db.batch_transaction): a probe by key
# is planned as an index probe unless the table's last ANALYZE found it a page or two small
# (docs/benchmarks.md, "Young tables").
_CONTEXTS = (
    "{attempts}SELECT ctx.*, k.request_hash AS prior_hash, k.status_code AS prior_status,"
    " k.response AS prior_response{waits}"
    " FROM unnest($1::bytea[], $2::text[], $3::text[]) WITH ORDINALITY AS q(code_hash, api_key_id, key, i)"
    " LEFT JOIN LATERAL (" + _CONTEXT + " WHERE v.code_hash = q.code_hash LIMIT 1) AS ctx ON true"
    " LEFT JOIN LATERAL (SELECT ik.request_hash, ik.status_code, ik.response FROM idempotency_keys ik"
    " WHERE ik.api_key_id = q.api_key_id AND ik.key = q.key LIMIT 1) AS k ON true{join} ORDER BY q.i")


async def redemption_contexts(conn: asyncpg.Connection | asyncpg.Pool, lookups: Sequence[tuple[bytes, str, str]],
                              takes: Sequence[str] = (), returns: Sequence[str] = (), rate: float = 0.0,
                              burst: float = 0.0
                              ) -> tuple[list[tuple[asyncpg.Record | None, asyncpg.Record | None]], list[int]]:
    """For each ``(code hash, API key id, Idempotency-Key)``: the voucher with its campaign and
    ledger (no locks), and the answer already given to that key if any — one round trip for all,
    which also takes the failure-limit tokens of ``takes`` and gives back those of ``returns``
    (``settle_attempts``: the answers, one per take, come second)."""
    cols = [list(c) for c in zip(*lookups, strict=True)]
    if not takes and not returns:
        rows = await conn.fetch(_CONTEXTS.format(attempts="", waits="", join=""), *cols)
        waits: list[int] = []
    else:
        # A CTE runs once (a volatile function in a joined subquery might run per row).
        rows = await conn.fetch(_CONTEXTS.format(
            attempts="WITH a AS MATERIALIZED (SELECT settle_attempts($4::text[], $5::text[], $6, $7) AS waits) ",
            waits=", a.waits", join=" CROSS JOIN a"), *cols, list(takes), list(returns), rate, burst)
        waits = list(rows[0]["waits"])
    return [(row if row["id"] is not None else None, row if row["prior_hash"] is not None else None)
            for row in rows], waits


async def settle_attempts(conn: asyncpg.Connection | asyncpg.Pool, takes: Sequence[str], returns: Sequence[str],
                          rate: float, burst: float) -> list[int]:
    """Failure-limit tokens taken from ``takes`` and given back to ``returns``; for each take, 0 or
    the seconds until a token is left (migration 005)."""
    return list(await conn.fetchval("SELECT settle_attempts($1::text[], $2::text[], $3, $4)",
                                    list(takes), list(returns), rate, burst))


async def store_answer_once(conn: asyncpg.Connection | asyncpg.Pool, api_key_id: str, key: str, request_hash: bytes,
                            status_code: int, response: dict) -> bool:
    """Records a refusal as this key's answer; ``False`` when the key was used meanwhile."""
    return bool(await conn.fetchval(
        "INSERT INTO idempotency_keys (api_key_id, key, request_hash, status_code, response)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (api_key_id, key) DO NOTHING RETURNING true",
        api_key_id, key, request_hash, status_code, response))


# The conditional ledger change and its history step (migration 008's budget_move: $1 campaign,
# $2/$3 the changes to reserved and spent, $4 cause, $5 voucher): no row comes back when the
# budget rule refuses it.
_MOVE = "WITH l AS (SELECT * FROM budget_move($1, $2, $3, $4, $5))"


async def redeem_single_use_batch(conn: asyncpg.Connection, campaign_id: str, topic: str,
                                  items: Sequence[SingleUse], events: Sequence[bytes]) -> list[tuple[str, Ledger | None]]:
    """Writes single-use redemptions of one campaign in one call of ``redeem_single_use_batch``
    (``migrations/R__redeem_single_use_batch.sql``), run outside any explicit transaction: each
    item is decided as if alone, in order. ``events``: each item's event, sealed. Returns each
    item's outcome, with the ledger right after it when it was redeemed."""
    cols = list(zip(*[(i.voucher_id, i.reserved, i.discount, i.redemption_id, i.customer_id, i.order_id,
                       i.order_amount, i.currency, i.at, i.api_key_id, i.key, i.request_hash, i.response,
                       event.decode(), i.session) for i, event in zip(items, events, strict=True)], strict=True))
    rows = await conn.fetch(
        "SELECT * FROM redeem_single_use_batch($1, $2, $3::text[], $4::bigint[], $5::bigint[], $6::text[],"
        " $7::text[], $8::text[], $9::bigint[], $10::text[], $11::timestamptz[], $12::text[], $13::text[],"
        " $14::bytea[], $15::jsonb[], $16::text[], $17::text[])", campaign_id, topic, *[list(c) for c in cols])
    return [(r["outcome"], Ledger(campaign_id, r["currency"], r["limit_minor"], r["reserved"], r["spent"], r["seq"],
                                  r["vouchers"]) if r["outcome"] == "redeemed" else None) for r in rows]


async def move_budget(conn: asyncpg.Connection, campaign_id: str, d_reserved: int, d_spent: int,
                      cause: str, voucher_id: str) -> Ledger | None:
    """One conditional statement that changes a campaign's ledger and records the step in its
    history; the row lock it takes is held only from here to the commit. Returns ``None``
    (changing nothing) when the change would break ``reserved + spent <= limit``."""
    row = await conn.fetchrow(_MOVE + " SELECT * FROM l", campaign_id, d_reserved, d_spent, cause, voucher_id)
    return ledger_of(row) if row else None


async def move_budget_and_announce(conn: asyncpg.Connection, campaign_id: str, d_reserved: int, d_spent: int,
                                   cause: str, voucher_id: str, topic: str, key: str,
                                   event_template: bytes) -> Ledger | None:
    """``move_budget`` plus the outbox row announcing it, in the same statement: the event's
    ``data.ledger`` is filled in from the row just updated. The campaign's hot row lock is thus
    held for one round trip and the commit."""
    row = await conn.fetchrow(
        _MOVE + ", o AS (INSERT INTO outbox (topic, key, value, traceparent) SELECT $6, $7,"
        " convert_to(jsonb_set($8::text::jsonb, '{data,ledger}', jsonb_build_object('currency', currency, 'limit',"
        " limit_minor, 'reserved', reserved, 'spent', spent, 'seq', seq))::text, 'UTF8'),"
        " $8::text::jsonb ->> 'traceparent' FROM l)"
        " SELECT * FROM l", campaign_id, d_reserved, d_spent, cause, voucher_id, topic, key.encode(),
        event_template.decode())
    return ledger_of(row) if row else None


async def voucher_by_id(conn: asyncpg.Connection, voucher_id: str, *, for_update: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(_VOUCHER_VIEW + " WHERE id = $1" + (" FOR UPDATE" if for_update else ""), voucher_id)


async def set_voucher(conn: asyncpg.Connection, voucher_id: str, status: str, reserved: int, balance: int | None,
                      closed_at: datetime | None) -> None:
    await conn.execute("UPDATE vouchers SET status = $2, reserved = $3, balance = $4, closed_at = $5 WHERE id = $1",
                       voucher_id, status, reserved, balance, closed_at)


async def claim_idempotency_key(conn: asyncpg.Connection, api_key_id: str, key: str, request_hash: bytes) -> asyncpg.Record | None:
    """Claims the key for this request, waiting for a concurrent holder to finish. Returns the
    stored row when the key was used before (``None``: it is ours now)."""
    claimed = await conn.fetchval(
        "INSERT INTO idempotency_keys (api_key_id, key, request_hash) VALUES ($1, $2, $3)"
        " ON CONFLICT (api_key_id, key) DO NOTHING RETURNING true", api_key_id, key, request_hash)
    if claimed:
        return None
    return await conn.fetchrow("SELECT request_hash, status_code, response FROM idempotency_keys"
                               " WHERE api_key_id = $1 AND key = $2", api_key_id, key)


async def store_idempotent_answer(conn: asyncpg.Connection, api_key_id: str, key: str, status_code: int,
                                  response: dict) -> None:
    await conn.execute("UPDATE idempotency_keys SET status_code = $3, response = $4 WHERE api_key_id = $1 AND key = $2",
                       api_key_id, key, status_code, response)


async def redemption(conn: asyncpg.Connection, redemption_id: str, *, for_update: bool = False) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, voucher_id, campaign_id, customer_id, discount, reserved_used, currency, status, redeemed_at,"
        " rolled_back_at FROM redemptions WHERE id = $1" + (" FOR UPDATE" if for_update else ""), redemption_id)


async def forget_full_buckets(conn: asyncpg.Connection | asyncpg.Pool, prefix: str, rate: float,
                              burst: float) -> int:
    """Failure-limit buckets (subjects starting with ``prefix``) that refilled on their own."""
    return await conn.fetchval("SELECT forget_full_buckets($1, $2, $3)", prefix, rate, burst)


async def redeemed_with(conn: asyncpg.Connection, redemption_id: str) -> str | None:
    """The API key whose request made the redemption."""
    return await conn.fetchval("SELECT api_key_id FROM idempotency_keys WHERE response ->> 'redemption_id' = $1"
                               " AND status_code = 201", redemption_id)


async def mark_rolled_back(conn: asyncpg.Connection, redemption_id: str, at: datetime) -> None:
    await conn.execute("UPDATE redemptions SET status = 'rolled_back', rolled_back_at = $2 WHERE id = $1",
                       redemption_id, at)


async def active_offers(conn: asyncpg.Connection, customer_id: str, now: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT v.id, v.campaign_id, v.variant, v.channel, v.kind, v.brand, v.currency, v.balance, v.expires_at,"
        " v.code_sealed, c.definition, c.version FROM vouchers v JOIN campaigns c ON c.id = v.campaign_id"
        " WHERE v.customer_id = $1 AND v.status = 'active' AND v.expires_at > $2 AND c.status = 'active'"
        " ORDER BY v.expires_at", customer_id, now)


# Checkout sessions (Voucherify's LOCK, migration 007): a voucher held by one session.


async def hold_voucher(conn: asyncpg.Connection, voucher_id: str, session: str, until: datetime, reserved: int) -> None:
    """The voucher is held by ``session`` until ``until`` and holds ``reserved`` of its budget."""
    await conn.execute("UPDATE vouchers SET session = $2, session_expires_at = $3, reserved = $4 WHERE id = $1",
                       voucher_id, session, until, reserved)


async def release_hold(conn: asyncpg.Connection, voucher_id: str, reserved: int) -> None:
    await conn.execute("UPDATE vouchers SET session = NULL, session_expires_at = NULL, reserved = $2 WHERE id = $1",
                       voucher_id, reserved)


async def expired_partner_holds(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Active partner codes whose hold expired and still reserve budget, locked (skipping rows
    another transaction holds)."""
    return await conn.fetch(
        "SELECT id, campaign_id, reserved FROM vouchers WHERE session IS NOT NULL AND session_expires_at <= $1"
        " AND status = 'active'"
        " AND customer_id IS NULL AND reserved > 0 ORDER BY session_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now, limit)


async def forget_expired(conn: asyncpg.Connection, now: datetime) -> None:
    """Expired holds that reserve nothing of their own are simply forgotten."""
    await conn.execute("UPDATE vouchers SET session = NULL, session_expires_at = NULL"  # the vouchers_held index
                       " WHERE session IS NOT NULL AND session_expires_at <= $1 AND (customer_id IS NOT NULL OR reserved = 0"
                       " OR status <> 'active')", now)
