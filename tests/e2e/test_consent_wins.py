"""Consent always wins, end to end on the real stack with the four services as processes:

- a withdrawal the shop published before a cart wins the race, however close behind the cart
  follows (0 ms after the broker's acknowledgement), while the services are busy with other
  customers; the same carts without a withdrawal all get their voucher;
- an erased customer stays erased when their old consent, their old cart and a stale
  consent-state are published again: no voucher, no profile, no row with their id.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import yaml

from bench.common import ROOT
from shared import events as ev
from shared.kafka import send_all, start_producer
from tests.e2e.fleet import SERVICES, Fleet, metric
from tests.support import read_topic, wait_for
from tools.demo import Shop

pytestmark = pytest.mark.e2e
RACERS = 200
CAMPAIGN = "race-20"


def campaign() -> dict:
    """The reference cart campaign, with room for every customer of the test (the shop's own
    traffic draws on its budget too)."""
    spec = next(c for c in yaml.safe_load((ROOT / "deploy/campaigns/reference.yaml").read_text())["campaigns"]
                if c["id"] == "cart-20")
    return spec | {"id": CAMPAIGN, "name": "race", "channels": ["email"],
                   "budget": {"limit": {"amount": 10**12, "currency": "USD"}, "per_customer": 1}}


def grants(cid: str, at: datetime) -> list[tuple[str, ev.Event]]:
    return [("consent-changed", ev.ConsentChanged(customer_id=cid, purpose=p, granted=True, policy_version="v1",
                                                  source="test", occurred_at=at))
            for p in ("profiling", "personalized_offers", "email")]


def cart(cid: str, cart_id: str) -> tuple[str, ev.Event]:
    return ("cart-abandoned", ev.CartAbandoned(cart_id=cart_id, customer_id=cid, abandoned_at=datetime.now(UTC),
                                               value=ev.Money(amount=40_000, currency="USD")))


def record(kafka, topic: str, event: ev.Event, event_id: str | None = None):
    return (kafka.topic(topic), event.key().encode(), ev.encode(event, source="test-shop", event_id=event_id), None)


async def consented(fleet: Fleet, customers: list[str]) -> bool:
    """Both segmentation (profiling) and issuance (offers) know every customer's consent."""
    kept = await fleet.fetchval("segmentation", "SELECT count(*) FROM customers WHERE customer_id = ANY($1::text[])"
                                " AND profiling_since IS NOT NULL", customers)
    offers = await fleet.fetchval("issuance", "SELECT count(*) FROM customer_consent WHERE customer_id = ANY($1::text[])"
                                  " AND personalized_offers", customers)
    return kept == offers == len(customers)


async def test_a_withdrawal_published_before_a_cart_always_wins_the_race(kafka, tmp_path):
    withdrawers = [f"race-w-{i}" for i in range(RACERS)]
    controls = [f"race-c-{i}" for i in range(RACERS)]
    async with Fleet(kafka, tmp_path) as fleet:
        async with fleet.client("issuance") as client:
            assert (await client.post("/v1/campaigns", json=campaign())).status_code == 201
        shop, stop = Shop(kafka, seed=16), asyncio.Event()
        load = asyncio.create_task(shop.run(150, stop))  # other customers keep the services busy
        producer = await start_producer(kafka, "test-shop", linger_ms=0)
        try:
            now = datetime.now(UTC)
            await send_all(producer, [record(kafka, t, e) for c in withdrawers + controls for t, e in grants(c, now)])
            await wait_for(lambda: consented(fleet, withdrawers + controls), timeout=60, what="everyone's consent")
            for w, c in zip(withdrawers, controls, strict=True):
                withdrawal = ev.ConsentChanged(customer_id=w, purpose="personalized_offers", granted=False,
                                               policy_version="v1", source="test", occurred_at=datetime.now(UTC))
                await send_all(producer, [record(kafka, "consent-changed", withdrawal)])  # acknowledged, then at once:
                await send_all(producer, [record(kafka, *cart(w, f"{w}-cart")), record(kafka, *cart(c, f"{c}-cart"))])

            async def decided():
                n = await fleet.fetchval("issuance", "SELECT count(*) FROM issuance_attempts WHERE campaign_id = $1"
                                         " AND customer_id = ANY($2::text[])", CAMPAIGN, withdrawers + controls)
                return n == 2 * RACERS

            await wait_for(decided, timeout=120, interval=0.5, what="a decision for every cart")
        finally:
            stop.set()
            await load
            await producer.stop()
        vouchers = await fleet.fetch("issuance", "SELECT customer_id, campaign_id FROM vouchers"
                                     " WHERE customer_id = ANY($1::text[])", withdrawers + controls)
        assert [v for v in vouchers if v["customer_id"] in withdrawers] == []
        assert sorted(v["customer_id"] for v in vouchers if v["campaign_id"] == CAMPAIGN) == sorted(controls)
        reasons = await fleet.fetch("issuance", "SELECT DISTINCT reason FROM issuance_attempts"
                                    " WHERE customer_id = ANY($1::text[])", withdrawers)
        assert [r["reason"] for r in reasons] == ["no_consent"]
        deliveries = await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"),
                                      where=lambda r: r.key.decode().startswith("race-w-"))
        assert deliveries == []
        text = await fleet.metrics("issuance")
        assert metric(text, "voucherstream_issuance_consent_holds_total", outcome="timed_out") == 0
        print(f"\nheld {metric(text, 'voucherstream_issuance_consent_holds_total', outcome='held'):.0f} of "
              f"{2 * RACERS} race entries (and the shop's); hold seconds sum "
              f"{metric(text, 'voucherstream_issuance_consent_hold_seconds_sum'):.3f}")


async def test_an_erased_customer_stays_erased_when_their_old_events_are_published_again(kafka, tmp_path):
    gone = "gone-17"
    async with Fleet(kafka, tmp_path) as fleet:
        async with fleet.client("issuance") as client:
            assert (await client.post("/v1/campaigns", json=campaign())).status_code == 201
        producer = await start_producer(kafka, "test-shop", linger_ms=0)
        try:
            now = datetime.now(UTC)
            old = [record(kafka, t, e, event_id=f"{gone}-{i}") for i, (t, e) in enumerate(grants(gone, now))]
            old_cart = record(kafka, *cart(gone, "k-1"), event_id=f"{gone}-cart")
            await send_all(producer, old)
            await wait_for(lambda: consented(fleet, [gone]), what="their consent")
            await send_all(producer, [old_cart])
            await wait_for(lambda: fleet.fetchval("issuance", "SELECT count(*) FROM vouchers WHERE customer_id = $1",
                                                  gone), what="their voucher")
            stale = [r for r in await read_topic(kafka.bootstrap, kafka.topic("consent-state"),
                                                 where=lambda r: r.key == gone.encode())][-1]
            async with fleet.client("consent") as client:
                started = await client.post("/v1/privacy/erasures", json={"customer_id": gone})
                assert started.status_code == 202
                request = started.json()["request_id"]

                async def erased():
                    body = (await client.get(f"/v1/privacy/erasures/{request}")).json()
                    return body["status"] == "completed"

                await wait_for(erased, timeout=60, what="the erasure in every service")
            # The same records again (same event ids), a stale copy of their consent-state, and a new cart.
            await send_all(producer, old + [old_cart, (stale.topic, stale.key, stale.value, None),
                                            record(kafka, *cart(gone, "k-2"))])

            async def all_refused():
                consent = metric(await fleet.metrics("consent"), "voucherstream_consent_events_ignored_total",
                                 reason="erased_customer")
                issuance = metric(await fleet.metrics("issuance"), "voucherstream_issuance_consent_states_total",
                                  outcome="stale_for_erased")
                segmentation = metric(await fleet.metrics("segmentation"), "voucherstream_segmentation_events_total",
                                      type="consent-state", outcome="stale_for_erased")
                carts = metric(await fleet.metrics("segmentation"), "voucherstream_segmentation_events_total",
                               type="cart-abandoned", outcome="dropped_no_profiling_consent")
                return consent >= 3 and issuance >= 1 and segmentation >= 1 and carts >= 2

            await wait_for(all_refused, timeout=60, what="every service to refuse the replayed records")

            async def outboxes_empty() -> bool:  # whatever refusing them caused is on Kafka by now
                return not any([await fleet.fetchval(s, "SELECT count(*) FROM outbox") for s in SERVICES])

            await wait_for(outboxes_empty, timeout=30, what="every outbox published")
        finally:
            await producer.stop()
        assert await fleet.columns_containing(gone) == []
        pseudonymous = await fleet.fetch("issuance", "SELECT status FROM vouchers WHERE customer_id LIKE 'erased-%'")
        assert [r["status"] for r in pseudonymous] == ["revoked"]
