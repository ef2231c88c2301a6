"""Crypto-shredding on the real broker and database: what issuance writes to Kafka is sealed
under the customer's data key, and a record whose key was destroyed (its customer erased) is
skipped as erased — not dead-lettered, not acted on."""

from __future__ import annotations

import asyncio
import csv
import io

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from shared import events as ev
from shared.datakeys import DataKey, DataKeys
from tests.integration.issuance.conftest import campaign, consent_state, entered
from tests.support import read_topic, unique, wait_for


async def key_now(issuance, customer: str) -> DataKey:
    """The customer's key as a lookup outside any transaction finds it."""
    async with issuance.pool.acquire() as conn:
        return (await issuance.keys.for_customers(conn, [customer]))[customer]


async def test_sealed_entries_open_and_an_erased_customer_s_entry_is_skipped(issuance, kafka):
    from shared.kafka import send_all, start_producer

    assert (await issuance.client.post("/v1/campaigns", json=campaign())).status_code == 201
    producer = await start_producer(kafka, "test")
    try:
        await send_all(producer, [(kafka.topic("consent-state"), c.encode(),
                                   ev.encode(consent_state(c, "personalized_offers", "email"), source="t"), None)
                                  for c in ("c-kept", "c-gone")])
        await wait_for(lambda: issuance.pool.fetchval("SELECT count(*) = 2 FROM customer_consent"), what="consents")
        async with issuance.pool.acquire() as conn, conn.transaction():
            keys = await issuance.keys.for_customers(conn, ["c-kept", "c-gone"])
        entries = {c: entered(c, preferred="email") for c in keys}
        async with issuance.pool.acquire() as conn, conn.transaction():
            assert await issuance.keys.destroy(conn, ["c-gone"]) == 1  # erased after the entry was sealed
        await send_all(producer, [(kafka.topic("segment-entered"), c.encode(),
                                   ev.encode(e, source="segmentation", data_key=keys[c]), None)
                                  for c, e in entries.items()])
    finally:
        await producer.stop()

    await wait_for(lambda: issuance.pool.fetchval("SELECT count(*) = 1 FROM vouchers"), what="c-kept's voucher")

    async def skipped():
        consumed = {(s.labels["topic"], s.labels["outcome"]): s.value for family in text_string_to_metric_families(
            (await issuance.client.get("/metrics")).text) if family.name == "voucherstream_messages_consumed"
            for s in family.samples if s.name.endswith("_total")}
        return consumed.get(("segment-entered", "skipped_erased")) == 1 and \
            consumed.get(("segment-entered", "handled")) == 1

    await wait_for(skipped, what="the erased customer's entry counted as skipped, not handled")
    assert await issuance.pool.fetchval("SELECT count(*) FROM issuance_attempts WHERE customer_id = 'c-gone'") == 0
    assert await read_topic(kafka.bootstrap, kafka.topic("segment-entered.dlq")) == []

    # What issuance wrote is sealed on the log and opens with the key store; the code is not in clear.
    raw = await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"), expect=1, raw=True)
    delivery = ev.decode((await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"), expect=1))[0].value)[1]
    assert delivery.customer_id == "c-kept" and delivery.code.encode() not in raw[0].value
    issued = await read_topic(kafka.bootstrap, kafka.topic("voucher-issued"), expect=1, raw=True)
    assert entries["c-kept"].trigger_key.encode() not in issued[0].value and b'"datakey"' in issued[0].value


async def test_a_key_created_by_a_transaction_that_rolls_back_is_never_used_again(issuance):
    keys = issuance.keys
    customer = unique("c-rolled-back-")  # the key store outlives every test's schemas
    async with issuance.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        lost = (await keys.for_customers(conn, [customer]))[customer]
        assert (await keys.for_customers(conn, [customer]))[customer] == lost  # same transaction
        await tx.rollback()
        async with conn.transaction():
            kept = (await keys.for_customers(conn, [customer]))[customer]
    assert kept.id != lost.id  # nothing sealed under the rolled-back key can exist
    assert await key_now(issuance, customer) == kept  # committed: read, then kept in memory
    await keys.load([kept.id, lost.id])
    assert keys.opener(kept.id) == kept.key and keys.opener(lost.id) is None


async def test_new_customers_redeeming_at_once_get_one_key_each_stored_before_their_events(issuance, kafka):
    """The checkout's redemptions find their customers' keys in the redemption writer's batch:
    redemptions arriving together for customers never seen before each seal their event under
    the one key their customer gets, stored and committed (a reader with a cold cache opens all)."""
    spec = campaign(id="new-faces", budget={"limit": {"amount": 10**9, "currency": "USD"}})
    assert (await issuance.client.post("/v1/campaigns", json=spec)).status_code == 201
    r = await issuance.client.post("/v1/campaigns/new-faces/partner-codes", json={"partner": "p", "count": 50})
    codes = [row["code"] for row in csv.DictReader(io.StringIO(r.text))]
    customers = [unique("c-new-") for _ in range(25)]
    asked = customers + customers  # each customer redeems two codes at the same moment
    order = {"amount": {"amount": 9000, "currency": "USD"}}
    answers = await asyncio.gather(*(issuance.client.post(
        "/v1/redemptions", json={"code": code, "customer_id": who, "order": order}, headers={"Idempotency-Key": code})
        for code, who in zip(codes, asked, strict=True)))
    assert [a.status_code for a in answers] == [201] * 50

    values = [m.value for m in await read_topic(kafka.bootstrap, kafka.topic("voucher-redeemed"), expect=50, raw=True)]
    ids = [ev.data_key_id(v) for v in values]
    cold = DataKeys(issuance.settings.data, lambda: issuance.pool)  # reads committed keys only
    await cold.load(ids)
    redeemed = [ev.decode(v, keys=cold.opener)[1] for v in values]  # a key not stored: Erased
    assert sorted(r.redemption_id for r in redeemed) == sorted(a.json()["redemption_id"] for a in answers)
    assert all(r.order_amount.amount == 9000 for r in redeemed)
    key_of: dict[str, set[str | None]] = {}
    for r, key_id in zip(redeemed, ids, strict=True):
        key_of.setdefault(r.customer_id, set()).add(key_id)
    assert sorted(key_of) == sorted(customers) and all(len(k) == 1 for k in key_of.values())
    assert len(set(ids)) == 25 and await cold.count_of(customers) == 25


async def test_two_writers_meeting_a_new_customer_at_once_agree_on_one_key(issuance):
    """The second writer's insert waits for the first's transaction, then finds the key taken and
    uses that one: a customer never has two keys, whichever writer commits first."""
    keys = issuance.keys
    customer = unique("c-raced-")
    async with issuance.pool.acquire() as a, issuance.pool.acquire() as b:
        first_tx = a.transaction()
        await first_tx.start()
        first = (await keys.for_customers(a, [customer]))[customer]
        async with b.transaction():
            second = asyncio.create_task(keys.for_customers(b, [customer]))
            await asyncio.sleep(0.3)
            assert not second.done()  # waiting on the first writer's uncommitted key
            await first_tx.commit()
            got = (await second)[customer]
    assert got == first
    assert await key_now(issuance, customer) == first


async def test_after_a_rotation_of_the_wrapping_key_a_customer_keeps_the_key_they_had(issuance):
    """Keys made under the previous wrapping key are found under its subject: the lookup that
    creates keys for customers who have none never makes a second one for them."""
    before = issuance.keys
    settings = issuance.settings.data
    after = DataKeys(settings.model_copy(update={"key": SecretStr("the-next-data-wrapping-key-0123456789"),
                                                 "previous_keys": [settings.key]}), lambda: issuance.pool)
    old, new = unique("c-old-"), unique("c-new-")
    async with issuance.pool.acquire() as conn:
        had = (await before.for_customers(conn, [old]))[old]
        got = await after.for_customers(conn, [old, new])
        assert got[old] == had
        assert got[new] != had
        assert await after.count_of([old, new]) == 2  # one key each
        assert (await before.for_customers(conn, [old]))[old] == had
