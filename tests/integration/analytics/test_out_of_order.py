"""Endings consumed before what they end: a rollback read before its redemption, an expiry read
before its voucher (they travel on different topics, and Kafka orders a partition, not two
topics). The counts must come out as if the events had arrived in order, and budget-counters must
be republished when a count changes even though the ledger's seq does not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared import events as ev
from tests.integration.issuance.conftest import publish
from tests.support import read_topic, wait_for

NOW = datetime.now(UTC)
USD = "USD"


def ledger(seq: int, reserved: int, spent: int) -> ev.LedgerSnapshot:
    return ev.LedgerSnapshot(currency=USD, limit=10_000, reserved=reserved, spent=spent, seq=seq)


def money(amount: int) -> ev.Money:
    return ev.Money(amount=amount, currency=USD)


def issued(voucher: str, seq: int) -> ev.VoucherIssued:
    return ev.VoucherIssued(voucher_id=voucher, campaign_id="ooo", customer_id="c-1", variant="A",
                            channel=ev.Channel.EMAIL, trigger_key=f"t-{voucher}", max_discount=money(1000),
                            expires_at=NOW + timedelta(days=7), issued_at=NOW, ledger=ledger(seq, 1000 * seq, 0))


async def test_endings_consumed_first_still_count_and_republish(analytics, kafka):
    client = analytics.client
    # The ledger's story: v1 issued (seq 1), v2 issued (2), v1 redeemed (3), rolled back (4),
    # v2 expired (5). Consumed here: the last two first, then the three they end.
    await publish(kafka, "redemption-rolled-back", [ev.RedemptionRolledBack(
        redemption_id="r-1", voucher_id="v-1", campaign_id="ooo", customer_id="c-1", returned=money(800),
        rolled_back_at=NOW, ledger=ledger(4, 2000, 0))])
    await publish(kafka, "voucher-expired", [ev.VoucherExpired(
        voucher_id="v-2", campaign_id="ooo", customer_id="c-1", released=money(1000), expired_at=NOW,
        ledger=ledger(5, 1000, 0))])

    async def stats(check):
        async def probe():
            got = await client.get("/v1/campaigns/ooo/stats")
            return got.json() if got.status_code == 200 and check(got.json()) else None
        return await wait_for(probe, timeout=15, what="analytics stats")

    await stats(lambda b: b["ledger"]["seq"] == 5)
    await publish(kafka, "voucher-issued", [issued("v-1", 1), issued("v-2", 2)])
    await publish(kafka, "voucher-redeemed", [ev.VoucherRedeemed(
        redemption_id="r-1", voucher_id="v-1", campaign_id="ooo", customer_id="c-1", variant="A",
        channel=ev.Channel.EMAIL, discount=money(800), order_amount=money(9000), redeemed_at=NOW,
        ledger=ledger(3, 1000, 800))])
    body = await stats(lambda b: b["variants"].get("A", {}).get("issued") == 2)
    await wait_for(lambda: _redemptions_seen(analytics), timeout=15, what="the redemption to be consumed")
    body = (await client.get("/v1/campaigns/ooo/stats")).json()
    assert body["variants"]["A"]["redeemed"] == 0  # rolled back before it was seen
    assert body["ledger"] == {"currency": USD, "limit": 10_000, "reserved": 1000, "spent": 0,
                              "remaining": 9000, "seq": 5}

    async def counters():
        records = await read_topic(kafka.bootstrap, kafka.topic("budget-counters"))
        last = ev.decode(records[-1].value)[1] if records else None
        return last if last and last.issued == 2 else None

    last = await wait_for(counters, timeout=15, what="budget-counters republished for a count change")
    assert (last.ledger.seq, last.issued, last.redeemed) == (5, 2, 0)
    await wait_for(lambda: _gauge_present(client), timeout=15, what="voucher gauges")
    metrics = (await client.get("/metrics")).text
    assert 'voucherstream_campaign_vouchers{campaign="ooo",channel="email",state="expired",variant="A"} 1.0' in metrics
    assert 'voucherstream_campaign_vouchers{campaign="ooo",channel="email",state="issued",variant="A"} 1.0' in metrics


async def _redemptions_seen(analytics) -> bool:
    return await analytics.pool.fetchval("SELECT count(*) FROM redemption_states") == 1


async def _gauge_present(client) -> bool:
    text = (await client.get("/metrics")).text
    return 'state="expired",variant="A"} 1.0' in text
