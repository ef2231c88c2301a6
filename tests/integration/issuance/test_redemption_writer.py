"""The redemption writer against real PostgreSQL: one batch decides each redemption as if it were
written alone, in order (stale voucher, reused key, budget refusal, success side by side), and
concurrent redemptions of a campaign go out as one write."""

from __future__ import annotations

import asyncio
import json
import uuid

from services.issuance import checkout_store, store
from services.issuance.redemption_writer import RedemptionWriter, SingleUse
from shared import events as ev
from tests.integration.issuance.conftest import USD, campaign

DISCOUNT = 2000


async def partner_vouchers(issuance, campaign_id: str, count: int, budget: int) -> list[str]:
    spec = campaign(id=campaign_id, budget={"limit": {"amount": budget, "currency": USD}},
                    offer={"kind": "fixed_amount", "amount": {"amount": DISCOUNT, "currency": USD}})
    assert (await issuance.client.post("/v1/campaigns", json=spec)).status_code == 201
    r = await issuance.client.post(f"/v1/campaigns/{campaign_id}/partner-codes", json={"partner": "p", "count": count})
    assert r.status_code == 200
    async with issuance.pool.acquire() as conn:
        return [row["id"] for row in await conn.fetch(
            "SELECT id FROM vouchers WHERE campaign_id = $1 ORDER BY id", campaign_id)]


def item(campaign_id: str, voucher_id: str, key: str, reserved: int = 0) -> SingleUse:
    redemption_id = str(uuid.uuid4())
    return SingleUse(campaign_id=campaign_id, voucher_id=voucher_id, reserved=reserved, discount=DISCOUNT,
                     redemption_id=redemption_id, customer_id=f"c-{key}", order_id=None, order_amount=9000,
                     currency=USD, at=ev.now_utc(), api_key_id="tests", key=key, request_hash=key.encode(),
                     response={"valid": True, "redemption_id": redemption_id}, event=lambda _: event(voucher_id))


def event(voucher_id: str) -> bytes:
    return json.dumps({"type": "voucher-redeemed", "data": {"voucher_id": voucher_id}}).encode()


async def test_one_batch_decides_each_redemption_as_if_alone_in_order(issuance):
    a, b, c, d, e = await partner_vouchers(issuance, "batch", 5, budget=3 * DISCOUNT)
    batch = [
        item("batch", a, "k1"),               # redeemed
        item("batch", a, "k2"),               # stale: item 1 redeemed it
        item("batch", b, "k1"),               # key_used: item 1 has k1
        item("batch", c, "k3", reserved=5),   # stale: not as read
        item("batch", c, "k4"),               # redeemed
        item("batch", d, "k5"),               # redeemed: the budget is now spent
        item("batch", e, "k6"),               # budget
    ]
    async with issuance.writer_pool.acquire() as conn:
        before = await store.ledger(conn, "batch")
        written = await checkout_store.redeem_single_use_batch(conn, "batch", "voucher-redeemed", batch,
                                                               [event(i.voucher_id) for i in batch])
        after = await store.ledger(conn, "batch")
        history = await conn.fetch("SELECT seq, reserved, spent, voucher_id FROM budget_ledger_history"
                                   " WHERE campaign_id = 'batch' AND cause = 'redeemed' ORDER BY seq")
        vouchers = {r["id"]: (r["status"], r["closed_at"] is not None) for r in await conn.fetch(
            "SELECT id, status, closed_at FROM vouchers WHERE campaign_id = 'batch'")}
        redeemed = {r["voucher_id"] for r in await conn.fetch(
            "SELECT voucher_id FROM redemptions WHERE campaign_id = 'batch'")}
        keys = {r["key"]: (r["status_code"], r["response"]) for r in await conn.fetch(
            "SELECT key, status_code, response FROM idempotency_keys")}
        outbox = [json.loads(r["value"]) for r in await conn.fetch(
            "SELECT value FROM outbox WHERE topic = 'voucher-redeemed' ORDER BY id")]

    assert [o for o, _ in written] == ["redeemed", "stale", "key_used", "stale", "redeemed", "redeemed", "budget"]
    seqs = [lg.seq for _, lg in written if lg is not None]
    assert seqs == [before.seq + 1, before.seq + 2, before.seq + 3]
    assert [lg.spent for _, lg in written if lg is not None] == [DISCOUNT, 2 * DISCOUNT, 3 * DISCOUNT]
    assert (after.seq, after.spent, after.reserved) == (before.seq + 3, 3 * DISCOUNT, 0)
    assert [(h["seq"], h["spent"], h["voucher_id"]) for h in history] == [
        (before.seq + 1, DISCOUNT, a), (before.seq + 2, 2 * DISCOUNT, c), (before.seq + 3, 3 * DISCOUNT, d)]
    assert vouchers == {a: ("redeemed", True), b: ("active", False), c: ("redeemed", True), d: ("redeemed", True),
                        e: ("active", False)}  # the refused one is untouched
    assert redeemed == {a, c, d}
    # nothing kept for stale items or the refusal; k1, given twice, answers as the first item it was given with
    assert keys == {k: (201, i.response) for k, i in (("k1", batch[0]), ("k4", batch[4]), ("k5", batch[5]))}
    assert [(o["data"]["voucher_id"], o["data"]["ledger"]["seq"], o["data"]["ledger"]["spent"]) for o in outbox] == [
        (a, before.seq + 1, DISCOUNT), (c, before.seq + 2, 2 * DISCOUNT), (d, before.seq + 3, 3 * DISCOUNT)]


async def test_redemptions_arriving_together_are_written_together(issuance):
    vouchers = await partner_vouchers(issuance, "together", 20, budget=100 * DISCOUNT)
    writes: list[int] = []
    writer = RedemptionWriter(lambda: issuance.writer_pool, issuance.keys, observe=lambda size, _: writes.append(size))
    written = await asyncio.gather(*(writer.write(item("together", v, f"t{i}")) for i, v in enumerate(vouchers)))
    assert writes == [20]
    assert [w.outcome for w in written] == ["redeemed"] * 20
    assert sorted(w.ledger.seq for w in written) == list(range(written[0].ledger.seq, written[0].ledger.seq + 20))


async def test_the_keys_answers_are_written_by_index_however_young_the_table_was_when_planned(issuance):
    """PL/pgSQL caches a generic plan per statement of the function after five calls, costed with
    the tables as they were then: planned while ``idempotency_keys`` held a page, a later probe of
    each key to write its answer was a sequential scan, and stayed one as the table grew
    (docs/benchmarks.md, "Beside the stack, the probe again"). Each key is now inserted with its
    answer, and the function is planned without sequential scans whatever else it comes to do."""
    vouchers = await partner_vouchers(issuance, "young", 12, budget=100 * DISCOUNT)
    async with issuance.writer_pool.acquire() as conn:  # one session: the function's cached plans live in it
        await conn.execute("ALTER TABLE idempotency_keys SET (autovacuum_enabled = false)")  # no ANALYZE of its own
        await conn.execute("INSERT INTO idempotency_keys (api_key_id, key, request_hash)"
                           " SELECT 'other', 'y' || g, '\\x00' FROM generate_series(1, 100) g")
        await conn.execute("ANALYZE idempotency_keys")  # as autovacuum does after its first 50 rows
        for i, v in enumerate(vouchers[:8]):  # after five calls the statements' generic plans are kept
            [(outcome, _)] = await checkout_store.redeem_single_use_batch(
                conn, "young", "voucher-redeemed", [item("young", v, f"y-young-{i}")], [event(v)])
            assert outcome == "redeemed"
        await conn.execute("INSERT INTO idempotency_keys (api_key_id, key, request_hash)"
                           " SELECT 'other', 'g' || g, '\\x00' FROM generate_series(1, 50000) g")
        async with conn.transaction():
            written = await checkout_store.redeem_single_use_batch(
                conn, "young", "voucher-redeemed", [item("young", v, f"y-grown-{i}") for i, v in enumerate(vouchers[8:])],
                [event(v) for v in vouchers[8:]])
            seq_scans = await conn.fetchval("SELECT pg_stat_get_xact_numscans('idempotency_keys'::regclass)")
    assert [o for o, _ in written] == ["redeemed"] * 4
    assert seq_scans == 0
    assert "enable_seqscan=off" in await issuance.pool.fetchval(
        "SELECT proconfig FROM pg_proc WHERE proname = 'redeem_single_use_batch'"
        " AND pronamespace = to_regnamespace(current_schema())")
