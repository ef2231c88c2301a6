"""The counts analytics keeps as rows are stored (migration 004's triggers) equal a recount of its
state tables — after a stream shuffled, redelivered and split into batches, after two instances'
batches of one campaign ran at once, with rows stored by an earlier version of the service, and
after the migration filled them from an existing schema."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.analytics import store
from services.analytics.counters import StreamRows
from shared import db
from tests.support import unique

MIGRATIONS = Path(store.__file__).parent / "migrations"
NOW = datetime.now(UTC)
# The recount the counts replace (what store.counters read before migration 004).
RECOUNT = {
    "voucher_counts": "SELECT v.campaign_id, variant, channel, coalesce(e.state, 'issued'), count(*) FROM voucher_states v"
                      " LEFT JOIN voucher_endings e USING (voucher_id) GROUP BY 1, 2, 3, 4",
    "redemption_counts": "SELECT campaign_id, variant, channel, count(*), sum(discount), sum(order_amount)"
                         " FROM redemption_states r WHERE NOT EXISTS (SELECT 1 FROM redemption_rollbacks b"
                         " WHERE b.redemption_id = r.redemption_id) GROUP BY 1, 2, 3",
    "denial_counts": "SELECT campaign_id, reason, variant, count(*) FROM denials GROUP BY 1, 2, 3",
}


@pytest.fixture
async def schema(postgres_settings):
    name = unique("test_counts_")
    pool = await db.create_pool(postgres_settings, name, min_size=2, max_size=2)
    yield name, pool
    await db.drop_schema(pool, name)
    await pool.close()


async def migrate(pool: asyncpg.Pool, schema: str, upto: str = "999") -> None:
    await db.migrate(pool, schema, [m for m in db.discover(("analytics", MIGRATIONS)) if m.id.split("/")[1][:3] <= upto])


async def mismatches(pool: asyncpg.Pool) -> dict[str, tuple[set, set]]:
    out = {}
    for table, recount in RECOUNT.items():
        kept = {tuple(r) for r in await pool.fetch(f"SELECT * FROM {table} WHERE n <> 0")}
        truth = {tuple(r) for r in await pool.fetch(recount)}
        if kept != truth:
            out[table] = (kept - truth, truth - kept)
    return out


def stream(rng: random.Random, vouchers: int) -> list[tuple[str, tuple]]:
    """(StreamRows field, row) for a story of ``vouchers`` vouchers over two campaigns: some end,
    some are redeemed and some of those rolled back, and refusals with and without a variant."""
    rows: list[tuple[str, tuple]] = []
    for i in range(vouchers):
        v, c = f"v-{i}", rng.choice(["c1", "c2"])
        variant, channel = rng.choice("AB"), rng.choice(["email", "sms"])
        rows.append(("vouchers", (v, c, variant, channel, 1000, NOW)))
        fate = rng.random()
        if fate < 0.3:
            rows.append(("endings", (v, c, rng.choice(["expired", "revoked"]))))
        elif fate < 0.7:
            r = f"r-{i}"
            rows.append(("redemptions", (r, v, c, variant, channel, 800, 5000 + i, NOW)))
            if rng.random() < 0.4:
                rows.append(("rollbacks", (r, c)))
        if rng.random() < 0.3:
            rows.append(("denials", (f"d-{i}", c, rng.choice([None, "A"]), rng.choice(["holdout", "budget_exhausted"]))))
    return rows


def batches(rng: random.Random, rows: list[tuple[str, tuple]]) -> list[StreamRows]:
    """The rows shuffled, a third of them delivered twice, cut into batches of 1-40."""
    delivered = rows + rng.sample(rows, len(rows) // 3)
    rng.shuffle(delivered)
    out = []
    while delivered:
        n = rng.randint(1, 40)
        cut, delivered = delivered[:n], delivered[n:]
        out.append(StreamRows())
        for field, row in cut:
            getattr(out[-1], field).append(row)
    return out


async def apply(pool: asyncpg.Pool, rows: StreamRows) -> None:
    async with db.batch_transaction(pool) as conn:
        await store.apply(conn, rows)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_kept_counts_equal_a_recount_after_a_shuffled_redelivered_stream(schema, seed):
    name, pool = schema
    await migrate(pool, name)
    rng = random.Random(seed)
    for i, b in enumerate(batches(rng, stream(rng, 300))):
        await apply(pool, b)
        if i % 10 == 0:
            assert await mismatches(pool) == {}, f"after batch {i}"
    assert await mismatches(pool) == {}
    # Two instances at once (two connections), each with its share of a second story's batches.
    more = batches(rng, [(f, (f"x{r[0]}", *r[1:])) for f, r in stream(rng, 300)])

    async def instance(mine: list[StreamRows]) -> None:
        for b in mine:
            await apply(pool, b)

    await asyncio.gather(instance(more[0::2]), instance(more[1::2]))
    assert await mismatches(pool) == {}
    issued = await pool.fetchval("SELECT sum(n) FROM voucher_counts")
    assert issued == await pool.fetchval("SELECT count(*) FROM voucher_states") == 600


async def test_a_voucher_and_its_ending_stored_at_once_by_two_instances_meet(schema):
    name, pool = schema
    await migrate(pool, name)
    first = StreamRows(vouchers=[("v-1", "c1", "A", "email", 1000, NOW)])
    ending = StreamRows(endings=[("v-1", "c1", "expired")])
    async with db.batch_transaction(pool) as conn:
        await store.apply(conn, first)
        # The ending's batch starts while the voucher's is not committed yet.
        other = asyncio.create_task(apply(pool, ending))
        await asyncio.sleep(0.5)
        assert not other.done()  # it waits for the campaign
    await asyncio.wait_for(other, 10)
    assert await pool.fetch("SELECT state, n FROM voucher_counts WHERE n <> 0") == [("expired", 1)]
    assert await mismatches(pool) == {}


async def test_rows_stored_by_an_earlier_version_are_counted_too(schema):
    """During a rolling upgrade an instance of the previous version stores rows with plain inserts
    (no campaign lock up front): the triggers count them, and two such writers storing a voucher
    and its ending at once still meet."""
    name, pool = schema
    await migrate(pool, name)
    async with pool.acquire() as a, pool.acquire() as b, a.transaction():
        await a.execute("INSERT INTO voucher_states VALUES ('v-1', 'c1', 'A', 'email', 1000, now())")
        ending = asyncio.create_task(b.execute("INSERT INTO voucher_endings VALUES ('v-1', 'c1', 'revoked')"))
        await asyncio.sleep(0.5)
        assert not ending.done()
    await asyncio.wait_for(ending, 10)
    await pool.execute("INSERT INTO redemption_rollbacks VALUES ('r-1', 'c1')")
    await pool.execute("INSERT INTO redemption_states VALUES ('r-1', 'v-1', 'c1', 'A', 'email', 800, 9000, now()),"
                       " ('r-2', 'v-2', 'c1', 'A', 'email', 700, 8000, now())")
    await pool.execute("INSERT INTO denials VALUES ('d-1', 'c1', NULL, 'holdout'), ('d-2', 'c1', NULL, 'holdout')")
    assert await pool.fetch("SELECT state, n FROM voucher_counts WHERE n <> 0") == [("revoked", 1)]
    assert await pool.fetch("SELECT n, discount, revenue FROM redemption_counts") == [(1, 700, 8000)]
    assert await pool.fetch("SELECT reason, variant, n FROM denial_counts") == [("holdout", None, 2)]
    assert await mismatches(pool) == {}


async def test_the_migration_counts_what_an_existing_schema_holds(schema):
    name, pool = schema
    await migrate(pool, name, upto="003")
    rng = random.Random(7)
    rows = [r for b in batches(rng, stream(rng, 200)) for r in (
        *(("voucher_states", x) for x in b.vouchers), *(("voucher_endings", x) for x in b.endings),
        *(("redemption_states", x) for x in b.redemptions), *(("redemption_rollbacks", x) for x in b.rollbacks),
        *(("denials", x) for x in b.denials))]
    async with pool.acquire() as conn:
        for table, row in rows:
            await conn.execute(f"INSERT INTO {table} VALUES ({', '.join(f'${i + 1}' for i in range(len(row)))})"
                               " ON CONFLICT DO NOTHING", *row)
    await migrate(pool, name)
    assert await pool.fetchval("SELECT sum(n) FROM voucher_counts") == 200
    assert await mismatches(pool) == {}
