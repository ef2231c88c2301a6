"""Consent on the real broker and database: the ledger, consent-state, the HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared import events as ev
from shared.kafka import send_all, start_producer
from shared.topics import CUSTOMER_PARTITIONS, partition_for
from tests.support import read_topic, wait_for

T0 = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


def change(customer, purpose, granted, minutes, version="v3"):
    return ev.ConsentChanged(customer_id=customer, purpose=purpose, granted=granted, policy_version=version,
                             source="preference-centre", occurred_at=T0 + timedelta(minutes=minutes))


async def publish(kafka, items):
    producer = await start_producer(kafka, "shop")
    try:
        await send_all(producer, [(kafka.topic("consent-changed"), e.customer_id.encode(),
                                   ev.encode(e, source="shop", event_id=eid), None) for eid, e in items])
    finally:
        await producer.stop()


async def states(kafka, customer, expect):
    records = await read_topic(kafka.bootstrap, kafka.topic("consent-state"), expect=expect,
                               where=lambda r: r.key == customer.encode())
    return [None if r.value is None else ev.decode(r.value)[1] for r in records]


async def ledger_count(service, customer):
    return await service.pool.fetchval("SELECT count(*) FROM consent_ledger WHERE customer_id = $1", customer)


async def test_grant_withdraw_regrant_is_followed_by_consent_state(consent, kafka):
    await publish(kafka, [("e1", change("c-1", "email", True, 0))])
    await wait_for(lambda: _eq(ledger_count(consent, "c-1"), 1), what="grant in ledger")
    await publish(kafka, [("e2", change("c-1", "email", False, 1))])
    await wait_for(lambda: _eq(ledger_count(consent, "c-1"), 2), what="withdrawal in ledger")
    await publish(kafka, [("e3", change("c-1", "email", True, 2, version="v4"))])
    got = await states(kafka, "c-1", expect=3)
    assert [s.purposes[ev.Purpose.EMAIL].granted for s in got] == [True, False, True]
    assert got[-1].purposes[ev.Purpose.EMAIL].policy_version == "v4"


async def test_a_duplicate_adds_no_row_and_a_late_older_event_does_not_override(consent, kafka):
    await publish(kafka, [("d1", change("c-2", "profiling", False, 10)), ("d1", change("c-2", "profiling", False, 10))])
    await wait_for(lambda: _eq(ledger_count(consent, "c-2"), 1), what="first event")
    await publish(kafka, [("d0", change("c-2", "profiling", True, 0))])  # decided earlier, arrives later
    await wait_for(lambda: _eq(ledger_count(consent, "c-2"), 2), what="late event kept in the ledger")
    await publish(kafka, [("d1", change("c-2", "profiling", False, 10))])  # and a redelivery
    await publish(kafka, [("d2", change("c-2", "sms", True, 11))])
    await wait_for(lambda: _eq(ledger_count(consent, "c-2"), 3), what="the sms grant")
    got = await states(kafka, "c-2", expect=2)
    # Two state changes only: the first decision, then the sms grant; the late event changed nothing.
    assert len(got) == 2
    assert got[-1].purposes[ev.Purpose.PROFILING].granted is False
    assert got[-1].purposes[ev.Purpose.SMS].granted is True
    r = await consent.client.get("/v1/customers/c-2/consents")
    assert r.json()["purposes"]["profiling"]["granted"] is False


async def test_the_ledger_is_append_only(consent, kafka):
    await publish(kafka, [("a1", change("c-3", "push", True, 0))])
    await wait_for(lambda: _eq(ledger_count(consent, "c-3"), 1), what="the row")
    for sql in ("UPDATE consent_ledger SET granted = false", "DELETE FROM consent_ledger"):
        try:
            await consent.pool.execute(sql)
        except Exception as exc:
            assert "append-only" in str(exc)
        else:
            raise AssertionError(f"{sql} was allowed")


async def test_the_http_api_records_consent_idempotently_and_shows_the_history(consent, kafka):
    body = {"customer_id": "c-4", "purpose": "personalized_offers", "granted": True, "policy_version": "v3",
            "source": "checkout", "occurred_at": "2026-11-29T10:00:00+01:00"}
    first = await consent.client.post("/v1/consents", json=body, headers={"Idempotency-Key": "k-1"})
    again = await consent.client.post("/v1/consents", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["purposes"]["personalized_offers"]["granted"] is True
    history = (await consent.client.get("/v1/customers/c-4/consents/history")).json()["ledger"]
    assert len(history) == 1 and history[0]["via"] == "http"
    assert history[0]["occurred_at"].startswith("2026-11-29T09:00:00")
    bad = await consent.client.post("/v1/consents", json=body | {"purpose": "telepathy"})
    assert bad.status_code == 422
    assert "purpose" in bad.text
    got = await states(kafka, "c-4", expect=1)
    assert got[0].purposes[ev.Purpose.PERSONALIZED_OFFERS].granted is True

    # The Idempotency-Key is the caller's, per customer: reused for another decision it is
    # refused (never a silent 201 that drops a withdrawal); another customer's k-1 is their own.
    withdrawal = body | {"granted": False, "occurred_at": "2026-11-29T11:00:00+01:00"}
    reused = await consent.client.post("/v1/consents", json=withdrawal, headers={"Idempotency-Key": "k-1"})
    assert reused.status_code == 422 and reused.json()["detail"].startswith("idempotency_key_reused")
    assert len((await consent.client.get("/v1/customers/c-4/consents/history")).json()["ledger"]) == 1
    other = await consent.client.post("/v1/consents", json=body | {"customer_id": "c-5"},
                                      headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 201
    assert len((await consent.client.get("/v1/customers/c-5/consents/history")).json()["ledger"]) == 1


async def test_an_unknown_purpose_on_the_topic_is_a_dead_letter_with_its_reason(consent, kafka):
    raw = ev.encode(change("c-5", "email", True, 0), source="shop").replace(b'"email"', b'"carrier-pigeon"')
    producer = await start_producer(kafka, "shop")
    await send_all(producer, [(kafka.topic("consent-changed"), b"c-5", raw, None)])
    await producer.stop()
    dead = await read_topic(kafka.bootstrap, kafka.topic("consent-changed.dlq"), expect=1)
    assert dict(dead[0].headers)["dlq.reason"] == b"invalid_data"
    assert b"data.purpose" in dict(dead[0].headers)["dlq.error"]


async def _eq(value, expected):
    return (await value) == expected


async def test_a_decision_dated_into_the_future_is_refused_over_http_and_kafka_and_a_real_withdrawal_wins(consent, kafka):
    now = datetime.now(UTC)
    body = {"customer_id": "c-6", "purpose": "personalized_offers", "granted": True, "policy_version": "v3",
            "source": "banner", "occurred_at": now.isoformat()}
    assert (await consent.client.post("/v1/consents", json=body)).status_code == 201
    future = body | {"granted": True, "occurred_at": "2999-01-01T00:00:00Z"}
    refused = await consent.client.post("/v1/consents", json=future)
    assert refused.status_code == 422
    assert [(e["loc"], e["type"]) for e in refused.json()["detail"]] == [(["body", "occurred_at"], "occurred_in_future")]
    producer = await start_producer(kafka, "shop")
    grant_2999 = ev.ConsentChanged(customer_id="c-6", purpose="personalized_offers", granted=True, policy_version="v3",
                                   source="banner", occurred_at=datetime(2999, 1, 1, tzinfo=UTC))
    await send_all(producer, [(kafka.topic("consent-changed"), b"c-6", ev.encode(grant_2999, source="shop"), None)])
    dead = await read_topic(kafka.bootstrap, kafka.topic("consent-changed.dlq"), expect=1)
    assert dict(dead[0].headers)["dlq.reason"] == b"occurred_in_future"
    assert await ledger_count(consent, "c-6") == 1  # nothing of either attempt was recorded
    withdrawal = ev.ConsentChanged(customer_id="c-6", purpose="personalized_offers", granted=False, policy_version="v3",
                                   source="banner", occurred_at=datetime.now(UTC))
    await send_all(producer, [(kafka.topic("consent-changed"), b"c-6", ev.encode(withdrawal, source="shop"), None)])
    await producer.stop()
    await wait_for(lambda: _eq(ledger_count(consent, "c-6"), 2), what="the real withdrawal")
    state = (await consent.client.get("/v1/customers/c-6/consents")).json()
    assert state["purposes"]["personalized_offers"]["granted"] is False


async def test_an_http_decision_is_answered_once_its_state_is_on_kafka_and_watermarks_follow_the_topic(consent, kafka):
    body = {"customer_id": "c-7", "purpose": "email", "granted": True, "policy_version": "v3", "source": "banner",
            "occurred_at": datetime.now(UTC).isoformat()}
    answered = await consent.client.post("/v1/consents", json=body)
    assert answered.status_code == 201 and "Voucherstream-Propagation" not in answered.headers
    # Read at once, without waiting: the answer came after the broker acknowledged the state.
    on_kafka = await read_topic(kafka.bootstrap, kafka.topic("consent-state"), where=lambda r: r.key == b"c-7")
    assert len(on_kafka) == 1
    # A decision on Kafka moves its partition's watermark past its offset, after its state.
    await publish(kafka, [("w1", change("c-8", "email", True, 0))])
    partition = partition_for(b"c-8", CUSTOMER_PARTITIONS)

    async def watermark():
        records = await read_topic(kafka.bootstrap, kafka.topic("consent-state"))
        mine = [r for r in records if r.partition == partition]
        marks = [(i, ev.decode(r.value)[1]) for i, r in enumerate(mine) if r.key == f"watermark-{partition}".encode()]
        states_at = [i for i, r in enumerate(mine) if r.key == b"c-8"]
        return marks and states_at and [(i, m) for i, m in marks if i > states_at[0] and m.next_offset >= 1]

    found = await wait_for(watermark, what="a watermark after c-8's state")
    assert found[-1][1].partition == partition
