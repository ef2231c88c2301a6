"""The checkout's read against real PostgreSQL: planned once per session, and by key however
young the tables were when it was planned (shared.db.KEY_PROBES)."""

from __future__ import annotations

from services.issuance import checkout_store
from tests.integration.issuance.test_redemption_writer import DISCOUNT, partner_vouchers

GROWN = 50_000


async def read(conn, code_hash: bytes, i: int) -> None:
    [(row, prior)], waits = await checkout_store.redemption_contexts(
        conn, [(code_hash, "tests", f"k-{i}")], [f"failed/reads-{i}"], rate=0.5, burst=30.0)
    assert row is not None and prior is None and waits == [0]


async def test_the_read_is_planned_once_and_probes_by_key_however_young_the_tables_were(issuance):
    """Left to choose, PostgreSQL planned the read anew at every run (its custom plans, knowing the
    request's one code, always looked cheaper than a generic one); a generic plan made on a young
    ``vouchers`` would go on scanning the table as it grows."""
    first, *_ = await partner_vouchers(issuance, "reads", 3, budget=100 * DISCOUNT)
    async with issuance.reader_pool.acquire() as conn:  # one session: the prepared statement lives in it
        await conn.execute("ALTER TABLE vouchers SET (autovacuum_enabled = false)")  # no ANALYZE of its own
        await conn.execute("ANALYZE vouchers")  # three rows
        code_hash = await conn.fetchval("SELECT code_hash FROM vouchers WHERE id = $1", first)
        for i in range(8):
            await read(conn, code_hash, i)
        await conn.execute(
            "INSERT INTO vouchers (id, campaign_id, partner, code_hash, variant, channel, kind, currency, reserved,"
            " status, issued_at, expires_at) SELECT 'grown-' || g, campaign_id, partner, sha256(('grown-' || g)::bytea),"
            " variant, channel, kind, currency, reserved, status, issued_at, expires_at"
            f" FROM vouchers, generate_series(1, {GROWN}) g WHERE id = $1", first)
        async with conn.transaction():
            await read(conn, code_hash, 8)
            seq_scans = await conn.fetchval("SELECT pg_stat_get_xact_numscans('vouchers'::regclass)")
        # By how the read starts: a pattern from its middle would match this query too (prepared as well).
        plans = await conn.fetch("SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                                 " WHERE statement LIKE 'WITH a AS MATERIALIZED (SELECT settle_attempts(%'")
    assert [tuple(p) for p in plans] == [(9, 0)]
    assert seq_scans == 0
