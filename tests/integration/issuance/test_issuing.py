"""Issuing on the real broker and database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared import events as ev
from tests.integration.issuance.conftest import USD, campaign, consent_state, entered, publish
from tests.support import columns_containing, committed_offsets, read_topic, wait_for


async def count(service, sql: str, *args) -> int:
    return await service.pool.fetchval(sql, *args)


async def decided(service, n: int) -> None:
    await wait_for(lambda: _ge(count(service, "SELECT count(*) FROM issuance_attempts"), n), timeout=30,
                   what=f"{n} issuance decisions")


async def _eq(value, n):
    return (await value) == n


async def _ge(value, n):
    return (await value) >= n


async def test_consent_and_channel_decide_who_gets_what_and_only_delivery_carries_the_code(issuance, kafka):
    assert (await issuance.client.post("/v1/campaigns", json=campaign())).status_code == 201
    await publish(kafka, "consent-state", [
        consent_state("c-all", "personalized_offers", "email", "sms"),
        consent_state("c-no-offers", "email", "sms"),
        consent_state("c-sms-only", "personalized_offers", "sms"),
    ])
    await wait_for(lambda: _ge(count(issuance, "SELECT count(*) FROM customer_consent"), 3), what="consents")
    await publish(kafka, "segment-entered", [
        entered("c-all", preferred="email"), entered("c-no-offers", preferred="email"),
        entered("c-sms-only", preferred="email"), entered("c-unknown"),
    ])
    await decided(issuance, 4)
    issued = {ev.decode(r.value)[1].customer_id: ev.decode(r.value)[1]
              for r in await read_topic(kafka.bootstrap, kafka.topic("voucher-issued"), expect=2)}
    denied = {ev.decode(r.value)[1].customer_id: ev.decode(r.value)[1].reason
              for r in await read_topic(kafka.bootstrap, kafka.topic("issuance-denied"), expect=2)}
    assert issued["c-all"].channel == "email"
    assert issued["c-sms-only"].channel == "sms"  # preferred e-mail has no consent: the next consented channel
    assert denied == {"c-no-offers": "no_consent", "c-unknown": "no_consent"}
    deliveries = [ev.decode(r.value)[1] for r in await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"), expect=2)]
    assert {d.customer_id: d.channel for d in deliveries} == {"c-all": "email", "c-sms-only": "sms"}
    for record in await read_topic(kafka.bootstrap, kafka.topic("voucher-issued")):
        for d in deliveries:
            assert d.code.encode() not in record.value
    # Each event carries the ledger right after its own reservation, with its own sequence number.
    assert sorted((v.ledger.seq, v.ledger.reserved) for v in issued.values()) == [(1, 2000), (2, 4000)]

    # No table holds a spendable code: every text, bytea and json column is scanned for each one.
    for d in deliveries:
        assert await columns_containing(issuance.pool, d.code) == []


async def test_a_withdrawal_revokes_unredeemed_vouchers_and_releases_the_budget(issuance, kafka):
    await issuance.client.post("/v1/campaigns", json=campaign())
    await publish(kafka, "consent-state", [consent_state("c-w", "personalized_offers", "email")])
    await wait_for(lambda: _ge(count(issuance, "SELECT count(*) FROM customer_consent"), 1), what="consent")
    await publish(kafka, "segment-entered", [entered("c-w")])
    await decided(issuance, 1)
    await publish(kafka, "consent-state", [consent_state("c-w", "email")])  # personalized_offers withdrawn
    revoked = ev.decode((await read_topic(kafka.bootstrap, kafka.topic("voucher-revoked"), expect=1))[0].value)[1]
    assert revoked.reason == "consent_withdrawn" and revoked.released.amount == 2000
    assert revoked.ledger.reserved == 0 and revoked.ledger.seq == 2
    budget = (await issuance.client.get("/v1/campaigns/cart-20/budget")).json()
    assert budget["reserved"] == 0 and budget["remaining"] == 200_000


async def test_vouchers_past_validity_expire_and_release_their_reservation(issuance, kafka):
    ends = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    await issuance.client.post("/v1/campaigns", json=campaign(validity={"ends_at": ends}))
    await publish(kafka, "consent-state", [consent_state("c-e", "personalized_offers", "email")])
    await wait_for(lambda: _ge(count(issuance, "SELECT count(*) FROM customer_consent"), 1), what="consent")
    await publish(kafka, "segment-entered", [entered("c-e")])
    await decided(issuance, 1)
    expired = ev.decode((await read_topic(kafka.bootstrap, kafka.topic("voucher-expired"), expect=1, timeout=20))[0].value)[1]
    assert expired.released.amount == 2000 and expired.ledger.reserved == 0
    assert await count(issuance, "SELECT count(*) FROM vouchers WHERE status = 'expired'") == 1


async def test_campaign_definitions_are_validated_with_precise_errors_and_pause_stops_issuing(issuance, kafka):
    bad = await issuance.client.post("/v1/campaigns", json=campaign(currency="EUR"))
    assert bad.status_code == 422 and "offer is in USD, the campaign in EUR" in bad.text
    assert (await issuance.client.post("/v1/campaigns", json=campaign())).status_code == 201
    assert (await issuance.client.post("/v1/campaigns", json=campaign())).status_code == 409
    paused = await issuance.client.post("/v1/campaigns/cart-20/pause")
    assert paused.json()["status"] == "paused"
    await publish(kafka, "consent-state", [consent_state("c-p", "personalized_offers", "email")])
    await publish(kafka, "segment-entered", [entered("c-p")])

    async def handled() -> bool:  # committed after the batch's transaction: the entry was decided
        return sum((await committed_offsets(kafka, issuance.settings.group_id, kafka.topic("segment-entered"))).values()) == 1

    await wait_for(handled, timeout=30, interval=0.2, what="issuance past the segment entry")
    assert await count(issuance, "SELECT count(*) FROM issuance_attempts") == 0
    changes = [ev.decode(r.value)[1] for r in await read_topic(kafka.bootstrap, kafka.topic("campaign-changed"), expect=2)]
    assert [c.status for c in changes] == ["active", "paused"]
    too_low = await issuance.client.put("/v1/campaigns/cart-20", json=campaign(
        budget={"limit": {"amount": 1000, "currency": USD}}, offer={"kind": "fixed_amount",
                                                                     "amount": {"amount": 500, "currency": USD}}))
    assert too_low.status_code == 200  # nothing reserved yet, so a lower limit is fine
    assert (await issuance.client.get("/v1/campaigns/cart-20/budget")).json()["limit"] == 1000


async def test_an_erased_customer_keeps_amounts_but_loses_identity(issuance, kafka):
    await issuance.client.post("/v1/campaigns", json=campaign())
    await publish(kafka, "consent-state", [consent_state("c-x", "personalized_offers", "email")])
    await wait_for(lambda: _ge(count(issuance, "SELECT count(*) FROM customer_consent"), 1), what="consent")
    await publish(kafka, "segment-entered", [entered("c-x")])
    await decided(issuance, 1)
    await publish(kafka, "erasure-requested", [ev.ErasureRequested(request_id="r-1", customer_id="c-x",
                                                                   requested_at=datetime.now(UTC))])
    done = ev.decode((await read_topic(kafka.bootstrap, kafka.topic("erasure-completed"), expect=1))[0].value)[1]
    assert done.service == "issuance" and done.erased["vouchers"] == 1
    await wait_for(lambda: _eq(count(issuance, "SELECT count(*) FROM outbox"), 0), what="the outbox drained")
    assert await columns_containing(issuance.pool, "c-x") == []
    row = await issuance.pool.fetchrow("SELECT customer_id, status, reserved FROM vouchers")
    assert row["customer_id"].startswith("erased-") and row["status"] == "revoked"
    budget = (await issuance.client.get("/v1/campaigns/cart-20/budget")).json()
    assert budget["reserved"] == 0 and budget["vouchers_issued"] == 1


async def test_a_channel_withdrawn_before_the_delivery_left_revokes_the_voucher_and_cancels_the_delivery(issuance, kafka):
    from shared.relay import OutboxRelay

    assert (await issuance.client.post("/v1/campaigns", json=campaign(channels=["email"]))).status_code == 201
    await publish(kafka, "consent-state", [consent_state("c-late", "personalized_offers", "email")])
    await wait_for(lambda: _ge(count(issuance, "SELECT count(*) FROM customer_consent"), 1), what="consent")
    # The relay stops (as when the broker is slow): the delivery request will wait in the outbox.
    issuance.relay.stop()
    lock = f"outbox:{issuance.settings.db_schema}"
    async with issuance.pool.acquire() as conn:
        await wait_for(lambda: conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", lock), what="relay stopped")
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", lock)
    await publish(kafka, "segment-entered", [entered("c-late", preferred="email")])
    await wait_for(lambda: _eq(count(issuance, "SELECT count(*) FROM outbox WHERE topic = 'delivery-requested'"), 1),
                   what="the delivery request waiting in the outbox")
    withdrawn = consent_state("c-late", "personalized_offers")  # e-mail withdrawn
    await publish(kafka, "consent-state", [withdrawn])
    await wait_for(lambda: _eq(count(issuance, "SELECT count(*) FROM vouchers WHERE status = 'revoked'"), 1),
                   what="the voucher revoked")
    assert await count(issuance, "SELECT count(*) FROM outbox WHERE topic = 'delivery-requested'"
                                 " AND value IS NOT NULL AND sealed") == 0  # the request itself is gone
    relay = OutboxRelay(pool=issuance.pool, producer=issuance.producer, kafka=issuance.settings.kafka,
                        schema=issuance.settings.db_schema, metrics=issuance.metrics, seal_key=issuance.outbox_seal_key)
    while await relay.publish_once():
        pass
    await relay.close()
    events = [ev.decode(r.value)[1] for r in await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"))]
    assert [type(e).__name__ for e in events] == ["DeliveryCancelled"]
    assert events[0].reason == "channel_withdrawn" and events[0].channel == "email"
    revoked = [ev.decode(r.value)[1] for r in await read_topic(kafka.bootstrap, kafka.topic("voucher-revoked"), expect=1)]
    assert revoked[0].reason == "channel_withdrawn" and revoked[0].voucher_id == events[0].voucher_id
