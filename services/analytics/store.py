"""Analytics' SQL (asyncpg) for the consumed stream, one function per statement, each taking a
whole batch (arrays, unnested): a batch costs a handful of statements, not two per event. Each
returns the campaigns whose counts it changed (a duplicate changes nothing)."""

from __future__ import annotations

import asyncpg

from shared import events as ev


async def upsert_campaign(conn: asyncpg.Connection, e: ev.CampaignChanged) -> None:
    await conn.execute(
        "INSERT INTO campaigns VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (campaign_id) DO UPDATE SET"
        " name = $2, status = $3, currency = $4, holdout_percent = $5, updated_at = $6"
        " WHERE campaigns.updated_at IS NULL OR campaigns.updated_at <= $6",
        e.campaign_id, e.name, e.status, e.budget_limit.currency, e.holdout_percent, e.updated_at)


async def _insert_new(conn: asyncpg.Connection, table: str, types: tuple[str, ...], rows: list[tuple]) -> set[str]:
    """Inserts ``rows`` (columns typed ``types``, in the table's order) that are not there yet;
    returns the campaigns of those inserted."""
    if not rows:
        return set()
    columns = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
    inserted = await conn.fetch(f"INSERT INTO {table} SELECT * FROM unnest({columns}) ON CONFLICT DO NOTHING"
                                " RETURNING campaign_id", *map(list, zip(*rows, strict=True)))
    return {r[0] for r in inserted}


async def add_denials(conn: asyncpg.Connection, rows: list[tuple]) -> set[str]:
    """(event id, campaign, variant, reason)"""
    return await _insert_new(conn, "denials", ("text",) * 4, rows)


async def add_vouchers(conn: asyncpg.Connection, rows: list[tuple]) -> set[str]:
    """(voucher id, campaign, variant, channel, max discount, issued at)"""
    return await _insert_new(conn, "voucher_states", ("text",) * 4 + ("bigint", "timestamptz"), rows)


async def add_voucher_endings(conn: asyncpg.Connection, rows: list[tuple]) -> set[str]:
    """(voucher id, campaign, expired|revoked)"""
    return await _insert_new(conn, "voucher_endings", ("text",) * 3, rows)


async def add_redemptions(conn: asyncpg.Connection, rows: list[tuple]) -> set[str]:
    """(redemption id, voucher id, campaign, variant, channel, discount, order amount, redeemed at)"""
    return await _insert_new(conn, "redemption_states", ("text",) * 5 + ("bigint", "bigint", "timestamptz"), rows)


async def add_rollbacks(conn: asyncpg.Connection, rows: list[tuple]) -> set[str]:
    """(redemption id, campaign)"""
    return await _insert_new(conn, "redemption_rollbacks", ("text",) * 2, rows)


async def advance_ledgers(conn: asyncpg.Connection, snapshots: dict[str, ev.LedgerSnapshot]) -> set[str]:
    """Keeps, per campaign, the ledger snapshot with the highest sequence number."""
    if not snapshots:
        return set()
    ids = sorted(snapshots)
    s = [snapshots[c] for c in ids]
    rows = await conn.fetch(
        "INSERT INTO ledgers (campaign_id, currency, limit_minor, reserved, spent, seq)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])"
        " ON CONFLICT (campaign_id) DO UPDATE SET limit_minor = excluded.limit_minor, reserved = excluded.reserved,"
        " spent = excluded.spent, seq = excluded.seq, changed_at = now() WHERE ledgers.seq < excluded.seq"
        " RETURNING campaign_id",
        ids, [x.currency for x in s], [x.limit for x in s], [x.reserved for x in s], [x.spent for x in s],
        [x.seq for x in s])
    return {r[0] for r in rows}


async def bump_versions(conn: asyncpg.Connection, campaigns: set[str]) -> None:
    if campaigns:
        await conn.execute("UPDATE ledgers SET version = version + 1 WHERE campaign_id = ANY($1::text[])",
                           sorted(campaigns))
