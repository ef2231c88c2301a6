"""Analytics' counts at a campaign's scale: what reading one campaign's counters costs — the
publisher reads every campaign's once per interval, and the stats endpoint on each request — when
they were recounted from the state tables (before migration 004) and now that triggers keep them
as rows are stored; and how long the migration takes to fill them on an existing schema.

    python -m bench.counts --vouchers 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from bench.common import scratch_schema
from services.analytics import store
from shared import db

MIGRATIONS = Path(store.__file__).parent / "migrations"
# What store.counters read before migration 004, per campaign.
RECOUNT = (
    "SELECT v.variant, v.channel, coalesce(e.state, 'issued') AS state, count(*) AS n FROM voucher_states v"
    " LEFT JOIN voucher_endings e USING (voucher_id) WHERE v.campaign_id = $1 GROUP BY 1, 2, 3",
    "SELECT variant, channel, count(*) AS n, coalesce(sum(discount), 0) AS d, coalesce(sum(order_amount), 0) AS o"
    " FROM redemption_states r WHERE campaign_id = $1 AND NOT EXISTS (SELECT 1 FROM redemption_rollbacks b"
    " WHERE b.redemption_id = r.redemption_id) GROUP BY 1, 2",
    "SELECT reason, variant, count(*) AS n FROM denials WHERE campaign_id = $1 GROUP BY 1, 2",
)
# One campaign's story: every voucher of it, a fifth ended, 30 % redeemed (a tenth of those rolled
# back), a refusal for every fifth; and a second campaign of a tenth the size beside it.
FILL = (
    "INSERT INTO voucher_states SELECT 'v-' || c || g, c, (ARRAY['A', 'B'])[g % 2 + 1],"
    " (ARRAY['email', 'sms', 'push'])[g % 3 + 1], 2000, now() FROM unnest($1::text[], $2::int[]) AS x(c, n),"
    " generate_series(1, n) g",
    "INSERT INTO voucher_endings SELECT voucher_id, campaign_id, CASE WHEN random() < 0.5 THEN 'expired'"
    " ELSE 'revoked' END FROM voucher_states WHERE random() < 0.2",
    "INSERT INTO redemption_states SELECT 'r-' || voucher_id, voucher_id, campaign_id, variant, channel, 1500,"
    " 20000, now() FROM voucher_states WHERE random() < 0.3",
    "INSERT INTO redemption_rollbacks SELECT redemption_id, campaign_id FROM redemption_states WHERE random() < 0.1",
    "INSERT INTO denials SELECT 'd-' || c || g, c, CASE WHEN g % 2 = 0 THEN 'A' END,"
    " (ARRAY['holdout', 'budget_exhausted', 'no_consent'])[g % 3 + 1] FROM unnest($1::text[], $2::int[]) AS x(c, n),"
    " generate_series(1, n / 5) g",
)

ANALYZE = "ANALYZE voucher_states, voucher_endings, redemption_states, redemption_rollbacks, denials, ledgers"


async def timed(call, repeat: int) -> float:
    """The median of ``repeat`` calls, in ms."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


async def run(vouchers: int, repeat: int) -> dict:
    migrations = db.discover(("analytics", MIGRATIONS))
    before = [m for m in migrations if m.id.split("/")[1][:3] < "004"]
    result: dict = {"benchmark": "counts", "vouchers_of_the_campaign": vouchers}
    async with scratch_schema("bench_counts") as (schema, pool):
        await db.migrate(pool, schema, before)
        async with pool.acquire() as conn:
            t = time.perf_counter()
            sizes = (["c1", "c2"], [vouchers, vouchers // 10])
            for sql in FILL:
                await conn.execute(sql, *(sizes if "$1" in sql else ()))
            await conn.execute("INSERT INTO ledgers (campaign_id, currency, limit_minor, reserved, spent, seq)"
                               " VALUES ('c1', 'USD', 10000000000, 0, 0, 1)")
            await conn.execute(ANALYZE)
            result["fill_s"] = round(time.perf_counter() - t, 1)

            async def recount() -> None:
                for sql in RECOUNT:
                    await conn.fetch(sql, "c1")

            result["recounted_ms"] = await timed(recount, repeat)
        t = time.perf_counter()
        await db.migrate(pool, schema, migrations)
        result["migration_004_s"] = round(time.perf_counter() - t, 2)
        async with pool.acquire() as conn:
            await conn.execute(ANALYZE + ", voucher_counts, redemption_counts, denial_counts")
            result["kept_ms"] = await timed(lambda: store.counters(conn, "c1"), repeat)
            kept = await store.counters(conn, "c1")
            assert kept is not None and kept.issued() == vouchers, "the kept counts do not add up"
        result["ratio"] = round(result["recounted_ms"] / result["kept_ms"], 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vouchers", type=int, default=1_000_000, help="vouchers of the measured campaign")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    if args.vouchers < 10:
        parser.error("--vouchers: at least 10")
    print(json.dumps(asyncio.run(run(args.vouchers, args.repeat)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
