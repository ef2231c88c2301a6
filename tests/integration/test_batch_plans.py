"""A batch's statements are planned for the tables as they are now (``db.batch_transaction``), not
with a generic plan PostgreSQL cached while a table was young."""

from __future__ import annotations

import asyncpg

from shared import db
from shared.settings import PostgresSettings
from tests.support import unique


async def plan(conn: asyncpg.Connection) -> str:
    return "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE by_ids('{1,2,3}')"))


async def test_a_statement_cached_while_its_table_was_young_is_planned_anew_in_a_batch(pg_schema):
    schema, _ = pg_schema
    # One connection: the statement prepared below lives in its session.
    pool = await db.create_pool(PostgresSettings(), schema, min_size=1, max_size=1)
    table = unique("grows_")
    try:
        async with pool.acquire() as conn:
            # (No autovacuum on it: its ANALYZE would replace the cached plan by itself.)
            await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false)")
            await conn.execute(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 10) g")
            await conn.execute(f"ANALYZE {table}")
            await conn.execute(f"PREPARE by_ids(int[]) AS SELECT v FROM {table} WHERE id = ANY($1)")
            for _ in range(6):  # after five runs PostgreSQL settles on a generic plan
                await conn.fetch("EXECUTE by_ids('{1,2,3}')")
            await conn.execute(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(11, 200000) g")
            async with conn.transaction():
                young = await plan(conn)
        async with db.batch_transaction(pool) as conn:
            now = await plan(conn)
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await pool.close()
    assert "Seq Scan" in young  # the pitfall: the plan of the ten-row table, for 200,000 rows
    assert "Index" in now and "Seq Scan" not in now, now
