"""After a scenario with redeliveries and rollbacks, every analytics counter equals what the
issuance ledger in PostgreSQL says, and budget-counters carries the same figures."""

from __future__ import annotations

from shared import events as ev
from shared.kafka import send_all, start_producer
from tests.integration.issuance.conftest import campaign, consent_state, entered, publish
from tests.integration.issuance.test_checkout import order
from tests.support import read_topic, wait_for


async def test_counters_equal_the_issuance_ledger_after_redeliveries_and_rollbacks(analytics, issuance, kafka):
    client = analytics.client
    c = issuance.client
    await c.post("/v1/campaigns", json=campaign(budget={"limit": {"amount": 5 * 2000, "currency": "USD"}},
                                                variants=[{"name": "A", "weight": 1}, {"name": "B", "weight": 1}]))
    customers = [f"a-{i}" for i in range(8)]
    codes = {}
    await publish(kafka, "consent-state", [consent_state(x, "personalized_offers", "email") for x in customers])
    await wait_for(lambda: _ge(issuance.pool.fetchval("SELECT count(*) FROM customer_consent"), 8), what="consents")
    await publish(kafka, "segment-entered", [entered(x) for x in customers] + [entered("nobody")])
    await wait_for(lambda: _ge(issuance.pool.fetchval("SELECT count(*) FROM issuance_attempts"), 9), what="decisions")
    records = await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"), expect=5)
    codes = {d.customer_id: d.code for d in (ev.decode(r.value)[1] for r in records)}
    redeemed = []
    for i, (cust, code) in enumerate(sorted(codes.items())[:3]):
        r = await c.post("/v1/redemptions", json={"code": code, "customer_id": cust, "order": order(15000 + i)},
                         headers={"Idempotency-Key": f"k-{i}"})
        redeemed.append(r.json()["redemption_id"])
    await c.post(f"/v1/redemptions/{redeemed[0]}/rollback")
    await c.post(f"/v1/redemptions/{redeemed[0]}/rollback")  # a second rollback changes nothing
    # Redelivery: every issuance event published once more, in reverse order.
    producer = await start_producer(kafka, "replayer")
    for name in ("voucher-issued", "voucher-redeemed", "redemption-rolled-back", "issuance-denied"):
        again = list(reversed(await read_topic(kafka.bootstrap, kafka.topic(name))))
        await send_all(producer, [(r.topic, r.key, r.value, None) for r in again])
    await producer.stop()

    expected = await issuance.pool.fetchrow("SELECT limit_minor, reserved, spent, seq, vouchers FROM budget_ledger")
    denied = {r["reason"]: r["n"] for r in await issuance.pool.fetch(
        "SELECT reason, count(*) AS n FROM issuance_attempts WHERE outcome = 'denied' GROUP BY reason")}

    async def caught_up():
        got = await client.get("/v1/campaigns/cart-20/stats")
        body = got.json() if got.status_code == 200 else {}
        caught_up.last = body
        return body if body and body["ledger"]["seq"] == expected["seq"] and body["denied"] == denied else None

    try:
        stats = await wait_for(caught_up, timeout=30, what="analytics to reach the ledger seq")
    except AssertionError:
        dead = await read_topic(kafka.bootstrap, kafka.topic("issuance-denied.dlq"))
        topic = await read_topic(kafka.bootstrap, kafka.topic("issuance-denied"))
        rows = await analytics.pool.fetch("SELECT * FROM denials")
        raise AssertionError(f"{caught_up.last} vs {dict(expected)} {denied} dlq={[dict(d.headers) for d in dead]}"
                             f" topic={[ev.decode(r.value)[0].id for r in topic]} rows={rows}") from None
    assert stats["ledger"] == {"currency": "USD", "limit": expected["limit_minor"], "reserved": expected["reserved"],
                               "spent": expected["spent"], "remaining": expected["limit_minor"] - expected["reserved"]
                               - expected["spent"], "seq": expected["seq"]}
    assert sum(v["issued"] for v in stats["variants"].values()) == expected["vouchers"] == 5
    live = await issuance.pool.fetchval("SELECT count(*) FROM redemptions WHERE status = 'redeemed'")
    assert sum(v["redeemed"] for v in stats["variants"].values()) == live == 2
    assert stats["denied"] == denied and denied["budget_exhausted"] == 3 and denied["no_consent"] == 1
    for v in stats["variants"].values():
        assert 0 <= v["rate_95ci"][0] <= v["redemption_rate"] <= v["rate_95ci"][1] <= 1

    async def counters_published():
        records = await read_topic(kafka.bootstrap, kafka.topic("budget-counters"))
        last = ev.decode(records[-1].value)[1] if records else None
        return last if last and last.ledger.seq == expected["seq"] else None

    last = await wait_for(counters_published, timeout=15, what="budget-counters")
    assert (last.ledger.reserved, last.ledger.spent, last.issued, last.redeemed) == (
        expected["reserved"], expected["spent"], 5, 2)
    metrics = (await client.get("/metrics")).text
    assert f'voucherstream_campaign_budget_minor_units{{campaign="cart-20",field="spent"}} {float(expected["spent"])}' in metrics
    crossed = [ev.decode(r.value)[1].threshold_percent
               for r in await read_topic(kafka.bootstrap, kafka.topic("budget-threshold-crossed"))]
    assert sorted(crossed) == [50, 80, 100]  # all five vouchers reserved the whole budget


async def _ge(value, n):
    return (await value) >= n
