"""The issuance service's SQL: one function per query (search path: the ``issuance`` schema)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from services.issuance.budget import Ledger
from services.issuance.rules import CustomerConsent
from shared.events import Channel

if TYPE_CHECKING:
    from services.issuance.redemption_writer import SingleUse

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


# ------------------------------------------------------------------ ledger


def _ledger(r: asyncpg.Record) -> Ledger:
    return Ledger(r["campaign_id"], r["currency"], r["limit_minor"], r["reserved"], r["spent"], r["seq"], r["vouchers"])


async def lock_ledgers(conn: asyncpg.Connection, campaign_ids: Iterable[str]) -> dict[str, Ledger]:
    """Locks the campaigns' ledger rows until commit, always in id order (no deadlocks)."""
    rows = await conn.fetch(
        "SELECT campaign_id, currency, limit_minor, reserved, spent, seq, vouchers FROM budget_ledger"
        " WHERE campaign_id = ANY($1::text[]) ORDER BY campaign_id FOR UPDATE", sorted(set(campaign_ids)))
    return {r["campaign_id"]: _ledger(r) for r in rows}


async def ledger(conn: asyncpg.Connection, campaign_id: str) -> Ledger | None:
    r = await conn.fetchrow(
        "SELECT campaign_id, currency, limit_minor, reserved, spent, seq, vouchers FROM budget_ledger"
        " WHERE campaign_id = $1", campaign_id)
    return _ledger(r) if r else None


async def save_ledgers(conn: asyncpg.Connection, ledgers: Iterable[Ledger], history: Sequence[tuple]) -> None:
    """Writes the final state of each changed ledger and every intermediate step of its history
    ``(campaign_id, seq, limit, reserved, spent, cause, voucher_id)``."""
    rows = [(lg.campaign_id, lg.limit, lg.reserved, lg.spent, lg.seq, lg.vouchers) for lg in ledgers]
    if rows:
        await conn.executemany(
            "UPDATE budget_ledger SET limit_minor = $2, reserved = $3, spent = $4, seq = $5, vouchers = $6"
            " WHERE campaign_id = $1", rows)
    if history:
        cols = list(zip(*history, strict=True))
        await conn.execute(
            "INSERT INTO budget_ledger_history (campaign_id, seq, limit_minor, reserved, spent, cause, voucher_id)"
            " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[],"
            " $7::text[])", *[list(c) for c in cols])


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


async def insert_attempts(conn: asyncpg.Connection, rows: Sequence[tuple]) -> None:
    """``(campaign_id, customer_id, trigger_key, outcome, reason, variant, voucher_id, decided_at)``"""
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


VOUCHER_COLUMNS = ("id", "campaign_id", "customer_id", "partner", "code_hash", "code_sealed", "variant", "channel",
                   "kind", "brand", "currency", "reserved", "balance", "status", "trigger_key", "issued_at", "expires_at")


async def insert_vouchers(conn: asyncpg.Connection, rows: Sequence[tuple]) -> set[str]:
    """Inserts vouchers (columns in ``VOUCHER_COLUMNS`` order); returns the ids of those whose code
    hash was already taken (the caller draws new codes for them)."""
    if not rows:
        return set()
    cols = list(zip(*rows, strict=True))
    inserted = await conn.fetch(
        f"INSERT INTO vouchers ({', '.join(VOUCHER_COLUMNS)}) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
        " $4::text[], $5::bytea[], $6::bytea[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],"
        " $12::bigint[], $13::bigint[], $14::text[], $15::text[], $16::timestamptz[], $17::timestamptz[])"
        " ON CONFLICT (code_hash) DO NOTHING RETURNING id", *[list(c) for c in cols])
    return {r[0] for r in rows} - {r["id"] for r in inserted}


async def copy_vouchers(conn: asyncpg.Connection, rows: Sequence[tuple]) -> None:
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
    status = await conn.execute("DELETE FROM outbox WHERE key = $1 AND sent_at IS NOT NULL", customer_id.encode())
    out["outbox"] = int(status.split()[-1])
    return out


# ------------------------------------------------------------------ checkout

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


_CONTEXTS = (
    "{attempts}SELECT ctx.*, k.request_hash AS prior_hash, k.status_code AS prior_status,"
    " k.response AS prior_response{waits}"
    " FROM unnest($1::bytea[], $2::text[], $3::text[]) WITH ORDINALITY AS q(code_hash, api_key_id, key, i)"
    " LEFT JOIN LATERAL (" + _CONTEXT + " WHERE v.code_hash = q.code_hash) AS ctx ON true"
    " LEFT JOIN idempotency_keys k ON k.api_key_id = q.api_key_id AND k.key = q.key{join} ORDER BY q.i")


async def redemption_contexts(conn: asyncpg.Connection | asyncpg.Pool, lookups: Sequence[tuple[bytes, str, str]],
                              takes: Sequence[str] = (), rate: float = 0.0, burst: float = 0.0
                              ) -> tuple[list[tuple[asyncpg.Record | None, asyncpg.Record | None]], list[int]]:
    """For each ``(code hash, API key id, Idempotency-Key)``: the voucher with its campaign and
    ledger (no locks), and the answer already given to that key if any — one round trip for all,
    which also takes the failure-limit tokens of ``takes`` (``settle_attempts``: the answers, one
    per take, come second)."""
    cols = [list(c) for c in zip(*lookups, strict=True)]
    if not takes:
        rows = await conn.fetch(_CONTEXTS.format(attempts="", waits="", join=""), *cols)
        waits: list[int] = []
    else:
        # A CTE runs once (a volatile function in a joined subquery might run per row).
        rows = await conn.fetch(_CONTEXTS.format(
            attempts="WITH a AS MATERIALIZED (SELECT settle_attempts($4::text[], '{}', $5, $6) AS waits) ",
            waits=", a.waits", join=" CROSS JOIN a"), *cols, list(takes), rate, burst)
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


# The conditional ledger change and its history step ($1 campaign, $2/$3 the changes to reserved
# and spent, $4 cause, $5 voucher): no row comes back when it would break the invariant.
_MOVE = (
    "WITH l AS (UPDATE budget_ledger SET reserved = reserved + $2, spent = spent + $3, seq = seq + 1"
    " WHERE campaign_id = $1 AND reserved + $2 >= 0 AND spent + $3 >= 0"
    " AND reserved + $2 + spent + $3 <= limit_minor"
    " RETURNING campaign_id, currency, limit_minor, reserved, spent, seq, vouchers),"
    " h AS (INSERT INTO budget_ledger_history (campaign_id, seq, limit_minor, reserved, spent, cause, voucher_id)"
    " SELECT campaign_id, seq, limit_minor, reserved, spent, $4, $5 FROM l)"
)


async def redeem_single_use_batch(conn: asyncpg.Connection, campaign_id: str, topic: str,
                                  items: Sequence[SingleUse]) -> list[tuple[str, Ledger | None]]:
    """Writes single-use redemptions of one campaign in one call of ``redeem_single_use_batch``
    (migrations 003 and 007), run outside any explicit transaction: each item is decided as if alone, in
    order. Returns each item's outcome, with the ledger right after it when it was redeemed."""
    cols = list(zip(*[(i.voucher_id, i.reserved, i.discount, i.redemption_id, i.customer_id, i.order_id,
                       i.order_amount, i.currency, i.at, i.api_key_id, i.key, i.request_hash, i.response,
                       i.event_template.decode(), i.session) for i in items], strict=True))
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
    return _ledger(row) if row else None


async def move_budget_and_announce(conn: asyncpg.Connection, campaign_id: str, d_reserved: int, d_spent: int,
                                   cause: str, voucher_id: str, topic: str, key: str,
                                   event_template: bytes) -> Ledger | None:
    """``move_budget`` plus the outbox row announcing it, in the same statement: the event's
    ``data.ledger`` is filled in from the row just updated. The campaign's hot row lock is thus
    held for one round trip and the commit."""
    row = await conn.fetchrow(
        _MOVE + ", o AS (INSERT INTO outbox (topic, key, value) SELECT $6, $7, convert_to(jsonb_set($8::text::jsonb,"
        " '{data,ledger}', jsonb_build_object('currency', currency, 'limit', limit_minor, 'reserved', reserved,"
        " 'spent', spent, 'seq', seq))::text, 'UTF8') FROM l)"
        " SELECT * FROM l", campaign_id, d_reserved, d_spent, cause, voucher_id, topic, key.encode(),
        event_template.decode())
    return _ledger(row) if row else None


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


async def redemptions_of(conn: asyncpg.Connection, customer_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, voucher_id, campaign_id, discount, order_amount, currency, status, redeemed_at, rolled_back_at"
        " FROM redemptions WHERE customer_id = $1 ORDER BY redeemed_at", customer_id)
