"""The budget rule, written once in SQL (migration 008: ``budget_allows``, applied by
``budget_move`` and ``budget_apply``), held to its Python model (``services/issuance/budget.py``)
by Hypothesis: random sequences of reserve, redeem, rollback, expire, revoke and limit changes go
through the store functions the use cases call, against a real PostgreSQL. After every step the
database applied exactly what the model allowed, balances and sequence numbers agree, and
``reserved + spent <= limit`` holds in the table."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.issuance import checkout_store, store
from services.issuance.app import IssuanceService
from services.issuance.budget import BudgetExhausted, Ledger, Step
from shared import db
from shared.settings import PostgresSettings
from tests.support import unique

AMOUNT = st.integers(min_value=0, max_value=4_000)
# (operation, a, b, writer). Redemptions, rollbacks and releases reach the ledger both ways in
# production (single-use batches, expiry and revocation through budget_apply; gift cards, holds
# and rollbacks through budget_move); issuing and limit changes through budget_apply only.
OPERATION = st.one_of(
    st.tuples(st.just("reserve"), AMOUNT, st.just(0), st.just("apply")),
    st.tuples(st.sampled_from(["expire", "revoke"]), AMOUNT, st.just(0), st.sampled_from(["apply", "move"])),
    st.tuples(st.just("redeem"), AMOUNT, AMOUNT, st.sampled_from(["apply", "move"])),
    st.tuples(st.just("rollback"), AMOUNT, AMOUNT, st.sampled_from(["apply", "move"])),
    st.tuples(st.just("limit"), st.integers(min_value=0, max_value=20_000), st.just(0), st.just("apply")),
)
CAMPAIGNS = itertools.count()


def deltas(lg: Ledger, op: str, a: int, b: int) -> tuple[int, int, int, int]:
    """(limit, reserved, spent, vouchers) as the use case writes the operation."""
    if op == "reserve":
        return (0, a, 0, 1)
    if op in ("expire", "revoke"):
        return (0, -a, 0, 0)
    if op == "redeem":  # a voucher that reserved max(a, b) spends min(a, b), the rest goes back
        return (0, -max(a, b), min(a, b), 0)
    if op == "rollback":  # b spent returns, a of it reserved again
        return (0, a, -b, 0)
    return (a - lg.limit, 0, 0, 0)


def model(lg: Ledger, op: str, a: int, b: int) -> Ledger | None:
    """The model's answer: the ledger after the operation, or None when the rule refuses it."""
    try:
        if op == "reserve":
            return lg.reserve(a)
        if op in ("expire", "revoke"):
            return lg.release(a)
        if op == "redeem":
            return lg.spend(max(a, b), min(a, b))
        if op == "rollback":
            return lg.unspend(b, a)
        return lg.with_limit(a)
    except (BudgetExhausted, ValueError):
        return None


@pytest.fixture(scope="module")
async def ledger_db():
    schema = unique("test_budget_rule_")
    pool = await db.create_pool(PostgresSettings(), schema, min_size=1, max_size=2)
    await db.migrate(pool, schema, db.discover(("shared", db.SHARED_MIGRATIONS),
                                               ("issuance", IssuanceService.migrations)))
    yield pool
    await db.drop_schema(pool, schema)
    await pool.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(min_value=0, max_value=10_000), operations=st.lists(OPERATION, min_size=1, max_size=25))
async def test_the_database_applies_exactly_what_the_model_allows(ledger_db, limit, operations):
    async with ledger_db.acquire() as conn:
        cid = f"c{next(CAMPAIGNS)}"
        assert await store.insert_campaign(conn, cid, "s", "active", {}, "USD", limit)
        lg = await store.ledger(conn, cid)
        # Consecutive budget_apply operations go in one call, as a use case's batch does.
        for writer, group in itertools.groupby(operations, key=lambda o: o[3]):
            group = list(group)
            if writer == "move":
                for op, a, b, _ in group:
                    after = model(lg, op, a, b)
                    _, d_res, d_spent, _ = deltas(lg, op, a, b)
                    got = await checkout_store.move_budget(conn, cid, d_res, d_spent, op, None)
                    assert got == after, (op, a, b, lg)
                    lg = after or lg
                continue
            steps, expected = [], []
            for op, a, b, _ in group:
                after = model(lg, op, a, b)
                d = deltas(lg, op, a, b)
                if after is not None:  # the model's methods and the written deltas agree
                    assert d == (after.limit - lg.limit, after.reserved - lg.reserved, after.spent - lg.spent,
                                 after.vouchers - lg.vouchers)
                steps.append(Step(cid, *d, op, None, after or lg))
                expected.append(after)
                lg = after or lg
            assert await store.apply_budget(conn, steps) == expected, group
        assert await store.ledger(conn, cid) == lg
        history = await conn.fetch("SELECT seq, limit_minor, reserved, spent FROM budget_ledger_history"
                                   " WHERE campaign_id = $1 ORDER BY seq", cid)
        assert [r["seq"] for r in history] == list(range(1, lg.seq + 1))
        assert all(0 <= r["reserved"] and 0 <= r["spent"] and r["reserved"] + r["spent"] <= r["limit_minor"]
                   for r in history)


async def test_the_table_refuses_a_write_around_the_functions(ledger_db):
    async with ledger_db.acquire() as conn:
        cid = f"c{next(CAMPAIGNS)}"
        await store.insert_campaign(conn, cid, "s", "active", {}, "USD", 100)
        for reserved, spent in ((101, 0), (60, 41), (-1, 0), (0, -1)):
            with pytest.raises(Exception, match="budget_never_exceeded"):
                await conn.execute("UPDATE budget_ledger SET reserved = $2, spent = $3 WHERE campaign_id = $1",
                                   cid, reserved, spent)
