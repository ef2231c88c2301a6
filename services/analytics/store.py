"""Analytics' SQL (asyncpg). The consumed stream's statements take a whole batch (arrays,
unnested): a batch costs a handful of statements, not two per event; each returns the campaigns
whose counts it changed (a duplicate changes nothing). The counts themselves are kept by the
state tables' triggers (migration 004). Then the reads behind the counters, and the burn-rate
samples and thresholds the publisher keeps."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from services.analytics.counters import Counters, DenialCount, RedemptionCount, StreamRows, VoucherCount
from shared import events as ev

SAMPLE_WINDOW = timedelta(minutes=15)  # the burn rate is the growth over this window


async def apply(conn: asyncpg.Connection, rows: StreamRows) -> None:
    """Writes a batch's rows (the counts follow, by trigger: migration 004) and bumps the version
    of every campaign whose counts moved."""
    await lock_campaigns(conn, rows.campaign_ids())
    for c in rows.campaigns:
        await upsert_campaign(conn, c)
    changed = (await add_denials(conn, rows.denials) | await add_vouchers(conn, rows.vouchers)
               | await add_voucher_endings(conn, rows.endings) | await add_redemptions(conn, rows.redemptions)
               | await add_rollbacks(conn, rows.rollbacks) | await advance_ledgers(conn, rows.ledgers, rows.traces))
    await bump_versions(conn, changed)


async def lock_campaigns(conn: asyncpg.Connection, campaigns: list[str]) -> None:
    """Holds the batch's campaigns until commit (migration 004: what lets a voucher and its ending
    stored at once meet), all of them before anything is stored. The count triggers take them
    again, at no cost; left to the triggers alone, statement by statement, two batches could each
    hold a campaign the other waits for."""
    if campaigns:
        await conn.execute("SELECT lock_campaign_counts(current_schema(), $1::text[])", campaigns)


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


async def advance_ledgers(conn: asyncpg.Connection, snapshots: dict[str, ev.LedgerSnapshot],
                          traces: dict[str, str | None] | None = None) -> set[str]:
    """Keeps, per campaign, the ledger snapshot with the highest sequence number (and the trace
    context of the event that brought it)."""
    if not snapshots:
        return set()
    ids = sorted(snapshots)
    s = [snapshots[c] for c in ids]
    rows = await conn.fetch(
        "INSERT INTO ledgers (campaign_id, currency, limit_minor, reserved, spent, seq, traceparent)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],"
        " $7::text[])"
        " ON CONFLICT (campaign_id) DO UPDATE SET limit_minor = excluded.limit_minor, reserved = excluded.reserved,"
        " spent = excluded.spent, seq = excluded.seq, traceparent = excluded.traceparent, changed_at = now()"
        " WHERE ledgers.seq < excluded.seq RETURNING campaign_id",
        ids, [x.currency for x in s], [x.limit for x in s], [x.reserved for x in s], [x.spent for x in s],
        [x.seq for x in s], [(traces or {}).get(c) for c in ids])
    return {r[0] for r in rows}


async def bump_versions(conn: asyncpg.Connection, campaigns: set[str]) -> None:
    if campaigns:
        await conn.execute("UPDATE ledgers SET version = version + 1 WHERE campaign_id = ANY($1::text[])",
                           sorted(campaigns))


# ---------------------------------------------------------------------- the counters


async def versions(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """(campaign_id, version, published_version) of every campaign with a ledger."""
    return await conn.fetch("SELECT campaign_id, version, published_version FROM ledgers ORDER BY 1")


async def counters(conn: asyncpg.Connection, campaign_id: str, *, lock: bool = False) -> Counters | None:
    """A campaign's counters; ``lock`` holds its ledger row until the transaction ends (publishers
    of one campaign serialise on it, so its outbox rows follow commit order)."""
    lg = await conn.fetchrow("SELECT * FROM ledgers WHERE campaign_id = $1" + (" FOR UPDATE" if lock else ""),
                             campaign_id)
    if lg is None:
        return None
    vouchers = await conn.fetch("SELECT variant, channel, state, n FROM voucher_counts WHERE campaign_id = $1 AND n > 0"
                                " ORDER BY 1, 2, 3", campaign_id)
    reds = await conn.fetch("SELECT variant, channel, n, discount AS d, revenue AS o FROM redemption_counts"
                            " WHERE campaign_id = $1 AND n > 0 ORDER BY 1, 2", campaign_id)
    denials = await conn.fetch("SELECT reason, variant, n FROM denial_counts WHERE campaign_id = $1 AND n > 0"
                               " ORDER BY 1, 2", campaign_id)
    return Counters(
        campaign_id=campaign_id,
        ledger=ev.LedgerSnapshot(currency=lg["currency"], limit=lg["limit_minor"], reserved=lg["reserved"],
                                 spent=lg["spent"], seq=lg["seq"]),
        version=lg["version"], published_version=lg["published_version"], changed_at=lg["changed_at"],
        vouchers=tuple(VoucherCount(r["variant"], r["channel"], r["state"], r["n"]) for r in vouchers),
        redemptions=tuple(RedemptionCount(r["variant"], r["channel"], r["n"], int(r["d"]), int(r["o"])) for r in reds),
        denials=tuple(DenialCount(r["reason"], r["variant"], r["n"]) for r in denials), traceparent=lg["traceparent"])


async def campaign_name(conn: asyncpg.Connection, campaign_id: str) -> str | None:
    return await conn.fetchval("SELECT name FROM campaigns WHERE campaign_id = $1", campaign_id)


async def sample(conn: asyncpg.Connection, campaign_id: str, at: datetime, used: int) -> list[tuple[float, int]]:
    """Records the budget used at ``at`` and returns the window's samples (epoch seconds, used)."""
    await conn.execute("INSERT INTO ledger_samples VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", campaign_id, at, used)
    await conn.execute("DELETE FROM ledger_samples WHERE campaign_id = $1 AND at < $2", campaign_id, at - SAMPLE_WINDOW)
    return [(r["at"].timestamp(), r["used"]) for r in await conn.fetch(
        "SELECT at, used FROM ledger_samples WHERE campaign_id = $1 ORDER BY at", campaign_id)]


async def thresholds_crossed(conn: asyncpg.Connection, campaign_id: str) -> set[int]:
    return {r["percent"] for r in await conn.fetch("SELECT percent FROM thresholds_crossed WHERE campaign_id = $1",
                                                   campaign_id)}


async def record_thresholds(conn: asyncpg.Connection, campaign_id: str, percents: list[int], at: datetime) -> list[int]:
    """Records thresholds as crossed; returns those not recorded before (each is announced once)."""
    if not percents:
        return []
    rows = await conn.fetch("INSERT INTO thresholds_crossed SELECT $1, p, $3 FROM unnest($2::int[]) AS p"
                            " ON CONFLICT DO NOTHING RETURNING percent", campaign_id, percents, at)
    return sorted(r["percent"] for r in rows)


async def mark_published(conn: asyncpg.Connection, campaign_id: str, version: int) -> None:
    await conn.execute("UPDATE ledgers SET published_version = $2 WHERE campaign_id = $1", campaign_id, version)
