"""Analytics' SQL (asyncpg). The consumed stream's statements take a whole batch (arrays,
unnested): a batch costs a handful of statements, not two per event. Each insert returns its new
rows with what they meet already stored (a duplicate is not new, so it changes nothing);
``counters.count_changes`` turns those into the counts' deltas, added in the same transaction.
Then the reads behind the counters, and the burn-rate samples and thresholds the publisher keeps."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from services.analytics.counters import (
    CountChanges,
    Counters,
    DenialCount,
    RedemptionCount,
    StreamRows,
    VoucherCount,
    count_changes,
)
from shared import events as ev

SAMPLE_WINDOW = timedelta(minutes=15)  # the burn rate is the growth over this window


async def apply(conn: asyncpg.Connection, rows: StreamRows) -> None:
    """Writes a batch's rows, adds what the new ones change to the counts and bumps the version
    of every campaign they belong to. Vouchers go before endings and redemptions before rollbacks
    (``count_changes`` relies on it)."""
    await lock_campaigns(conn, rows.campaign_ids())
    for c in rows.campaigns:
        await upsert_campaign(conn, c)
    vouchers = await add_vouchers(conn, rows.vouchers)
    endings = await add_voucher_endings(conn, rows.endings)
    redemptions = await add_redemptions(conn, rows.redemptions)
    rollbacks = await add_rollbacks(conn, rows.rollbacks)
    changes = count_changes(vouchers, endings, redemptions, rollbacks, await add_denials(conn, rows.denials))
    await add_counts(conn, changes)
    await bump_versions(conn, changes.campaigns | await advance_ledgers(conn, rows.ledgers, rows.traces))


async def lock_campaigns(conn: asyncpg.Connection, campaigns: list[str]) -> None:
    """Holds the campaigns until the transaction ends, taken in the given (sorted) order. Two
    instances' batches of one campaign run one after the other, so each sees what the other
    stored: a voucher and its ending (or a redemption and its rollback) stored by two concurrent
    transactions would each miss the other, and the voucher would stay counted as issued."""
    if campaigns:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('analytics-counts:' || current_schema() || ':' || c))"
                           " FROM unnest($1::text[]) WITH ORDINALITY AS t(c, i) ORDER BY i", campaigns)


async def upsert_campaign(conn: asyncpg.Connection, e: ev.CampaignChanged) -> None:
    await conn.execute(
        "INSERT INTO campaigns VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (campaign_id) DO UPDATE SET"
        " name = $2, status = $3, currency = $4, holdout_percent = $5, updated_at = $6"
        " WHERE campaigns.updated_at IS NULL OR campaigns.updated_at <= $6",
        e.campaign_id, e.name, e.status, e.budget_limit.currency, e.holdout_percent, e.updated_at)


async def _insert_new(conn: asyncpg.Connection, table: str, types: tuple[str, ...], rows: list[tuple],
                      met: str) -> list[tuple]:
    """Inserts ``rows`` (columns typed ``types``, in the table's order) that are not there yet and
    returns, for each one inserted, ``met``: a select list over ``new`` (the inserted row) and
    what it is joined to."""
    if not rows:
        return []
    columns = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
    return [tuple(r) for r in await conn.fetch(
        f"WITH new AS (INSERT INTO {table} SELECT * FROM unnest({columns}) ON CONFLICT DO NOTHING RETURNING *)"
        f" SELECT {met}", *map(list, zip(*rows, strict=True)))]


async def add_vouchers(conn: asyncpg.Connection, rows: list[tuple]) -> list[tuple]:
    """(voucher id, campaign, variant, channel, max discount, issued at) -> for each new one:
    (campaign, variant, channel, the state of an ending already stored or None)"""
    return await _insert_new(conn, "voucher_states", ("text",) * 4 + ("bigint", "timestamptz"), rows,
                             "new.campaign_id, new.variant, new.channel, e.state FROM new"
                             " LEFT JOIN voucher_endings e USING (voucher_id)")


async def add_voucher_endings(conn: asyncpg.Connection, rows: list[tuple]) -> list[tuple]:
    """(voucher id, campaign, expired|revoked) -> (campaign, state, the voucher's (variant, channel)
    or None if it has not been consumed yet)"""
    new = await _insert_new(conn, "voucher_endings", ("text",) * 3, rows,
                            "new.campaign_id, new.state, v.variant, v.channel FROM new"
                            " LEFT JOIN voucher_states v USING (voucher_id)")
    return [(c, state, None if variant is None else (variant, channel)) for c, state, variant, channel in new]


async def add_redemptions(conn: asyncpg.Connection, rows: list[tuple]) -> list[tuple]:
    """(redemption id, voucher id, campaign, variant, channel, discount, order amount, redeemed at)
    -> (campaign, variant, channel, discount, revenue, rolled back already)"""
    return await _insert_new(conn, "redemption_states", ("text",) * 5 + ("bigint", "bigint", "timestamptz"), rows,
                             "new.campaign_id, new.variant, new.channel, new.discount, new.order_amount,"
                             " b.redemption_id IS NOT NULL FROM new LEFT JOIN redemption_rollbacks b"
                             " USING (redemption_id)")


async def add_rollbacks(conn: asyncpg.Connection, rows: list[tuple]) -> list[tuple]:
    """(redemption id, campaign) -> (campaign, the redemption's (variant, channel, discount,
    revenue) or None if it has not been consumed yet)"""
    new = await _insert_new(conn, "redemption_rollbacks", ("text",) * 2, rows,
                            "new.campaign_id, r.variant, r.channel, r.discount, r.order_amount FROM new"
                            " LEFT JOIN redemption_states r USING (redemption_id)")
    return [(c, None if variant is None else (variant, channel, d, o)) for c, variant, channel, d, o in new]


async def add_denials(conn: asyncpg.Connection, rows: list[tuple]) -> list[tuple]:
    """(event id, campaign, variant, reason) -> (campaign, reason, variant)"""
    return await _insert_new(conn, "denials", ("text",) * 4, rows, "campaign_id, reason, variant FROM new")


async def add_counts(conn: asyncpg.Connection, changes: CountChanges) -> None:
    """Adds the deltas to the count rows, each table's rows in key order (two instances updating
    the same rows take their locks in the same order)."""
    vouchers = sorted((k, n) for k, n in changes.vouchers.items() if n)
    if vouchers:
        await conn.execute(
            "INSERT INTO voucher_counts AS c SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
            " $5::bigint[]) ON CONFLICT (campaign_id, variant, channel, state) DO UPDATE SET n = c.n + excluded.n",
            *map(list, zip(*(k + (n,) for k, n in vouchers), strict=True)))
    redemptions = sorted((k, v) for k, v in changes.redemptions.items() if any(v))
    if redemptions:
        await conn.execute(
            "INSERT INTO redemption_counts AS c SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
            " $4::bigint[], $5::bigint[], $6::bigint[]) ON CONFLICT (campaign_id, variant, channel) DO UPDATE"
            " SET n = c.n + excluded.n, discount = c.discount + excluded.discount, revenue = c.revenue + excluded.revenue",
            *map(list, zip(*(k + v for k, v in redemptions), strict=True)))
    denials = sorted(((k, n) for k, n in changes.denials.items() if n), key=lambda kn: (kn[0][:2], kn[0][2] or ""))
    if denials:
        await conn.execute(
            "INSERT INTO denial_counts AS c SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])"
            " ON CONFLICT (campaign_id, reason, variant) DO UPDATE SET n = c.n + excluded.n",
            *map(list, zip(*(k + (n,) for k, n in denials), strict=True)))


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
