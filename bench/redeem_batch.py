"""The redemption writer's statement alone: what one call of ``redeem_single_use_batch`` costs by
batch size, on an idle PostgreSQL, next to the machine's floor for a write (one logged single-row
INSERT and its commit, on the same connection). Every call redeems fresh vouchers of one campaign
with events as the checkout seals them; a scratch schema holds the campaign and goes at the end.

    python -m bench.redeem_batch --sizes 1,5,20,50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from bench.common import scratch_schema
from services.issuance import checkout_store
from services.issuance.checkout_store import SingleUse
from shared import db
from shared import events as ev
from shared.datakeys import DataKey

MIGRATIONS = Path(checkout_store.__file__).parent / "migrations"
CAMPAIGN = ("INSERT INTO campaigns (id, segment, status, definition) VALUES ('bench', 'none', 'active', '{}');"
            " INSERT INTO budget_ledger (campaign_id, currency, limit_minor) VALUES ('bench', 'USD', 1000000000000)")
VOUCHERS = ("INSERT INTO vouchers (id, campaign_id, code_hash, variant, channel, kind, currency, reserved, status,"
            " issued_at, expires_at) SELECT 'v' || g, 'bench', sha256(('v' || g)::bytea), 'A', 'partner',"
            " 'fixed_amount', 'USD', 0, 'active', now(), now() + interval '30 days' FROM generate_series(1, $1) g")
KEY = DataKey("bench", os.urandom(32))


def redemption(voucher_id: str) -> SingleUse:
    redemption_id, at = str(uuid.uuid4()), ev.now_utc()
    event = ev.encode(ev.VoucherRedeemed(
        redemption_id=redemption_id, voucher_id=voucher_id, campaign_id="bench", customer_id=f"c-{voucher_id}",
        variant="A", channel="partner", discount=ev.Money(amount=1000, currency="USD"),
        order_amount=ev.Money(amount=9000, currency="USD"), redeemed_at=at,
        ledger=ev.LedgerSnapshot(currency="USD", limit=0, reserved=0, spent=0, seq=0)),
        source="bench", event_id=redemption_id, data_key=KEY)
    return SingleUse(campaign_id="bench", voucher_id=voucher_id, reserved=0, discount=1000, redemption_id=redemption_id,
                     customer_id=f"c-{voucher_id}", order_id=None, order_amount=9000, currency="USD", at=at,
                     api_key_id="bench", key=uuid.uuid4().hex, request_hash=os.urandom(32),
                     response={"valid": True, "redemption_id": redemption_id, "voucher_id": voucher_id,
                               "campaign_id": "bench", "discount": {"amount": 1000, "currency": "USD"}},
                     event=lambda _: event)


async def run(sizes: list[int], redemptions: int) -> dict:
    result: dict = {"benchmark": "redeem_batch", "redemptions_per_size": redemptions}
    async with scratch_schema("bench_redeem") as (schema, pool):
        await db.migrate(pool, schema, db.discover(("shared", db.SHARED_MIGRATIONS), ("issuance", MIGRATIONS)))
        warm = 10
        async with pool.acquire() as conn:
            await conn.execute(CAMPAIGN)
            await conn.execute(VOUCHERS, sum((redemptions // n + warm) * n for n in sizes))
            await conn.execute("ANALYZE; CREATE TABLE floor (id serial PRIMARY KEY, v text)")
            for _ in range(200):
                await conn.execute("INSERT INTO floor (v) VALUES ('x')")
            t = time.perf_counter()
            for _ in range(2000):
                await conn.execute("INSERT INTO floor (v) VALUES ('x')")
            result["floor_ms"] = floor = round((time.perf_counter() - t) / 2000 * 1000, 3)
            nxt = 1
            for n in sizes:
                times = []
                for call in range(redemptions // n + warm):
                    batch = [redemption(f"v{nxt + i}") for i in range(n)]
                    nxt += n
                    events = [i.event(KEY) for i in batch]
                    t = time.perf_counter()
                    written = await checkout_store.redeem_single_use_batch(conn, "bench", "voucher-redeemed", batch,
                                                                           events)
                    if call >= warm:  # the first calls plan the function's statements
                        times.append((time.perf_counter() - t) * 1000)
                    if [o for o, _ in written] != ["redeemed"] * n:
                        raise RuntimeError(f"a batch of {n} fresh vouchers was not redeemed whole: {written}")
                median = statistics.median(times)
                result[f"batch_{n}"] = {"ms_per_call": round(median, 3), "ms_per_redemption": round(median / n, 3),
                                        "calls": len(times), "floor_ratio": round(median / floor, 1)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,5,20,50", help="batch sizes, comma-separated")
    parser.add_argument("--redemptions", type=int, default=2000, help="redemptions measured per batch size")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: whole numbers separated by commas, not {args.sizes!r}")
    if any(n < 1 or n > 200 for n in sizes):
        parser.error("--sizes: each between 1 and 200 (the writer's largest batch)")
    if args.redemptions < max(sizes):
        parser.error("--redemptions: at least the largest batch size")
    print(json.dumps(asyncio.run(run(sizes, args.redemptions)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
