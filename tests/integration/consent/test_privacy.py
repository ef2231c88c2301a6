"""Privacy requests over the real broker: an erasure completes only when every configured service
confirmed and leaves no trace of the customer in the consent schema; an export gathers a part
from every configured service. A stand-in plays the other service (answering over Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared import events as ev
from shared import exports
from shared.kafka import send_all, start_producer
from tests.support import columns_containing, read_topic, wait_for

CUSTOMER = "cust-erase-77"


@pytest.fixture
def privacy_services():
    return ["consent", "segmentation"]


async def answer_as_segmentation(kafka, kind: str) -> str:
    """Reads the request from Kafka and answers it as the segmentation service would."""
    topic = kafka.topic(f"{kind}-requested")
    (record,) = [r for r in await read_topic(kafka.bootstrap, topic, expect=1)]
    _, request = ev.decode(record.value)
    if kind == "erasure":
        answer = ev.ErasureCompleted(request_id=request.request_id, customer_id=request.customer_id,
                                     service="segmentation", completed_at=datetime.now(UTC), erased={"profiles": 1})
    else:
        answer = exports.answer(request, "segmentation", {"profile": {"favourite_brand": "Maison"}}, datetime.now(UTC))
    producer = await start_producer(kafka, "segmentation")
    await send_all(producer, [(kafka.topic(f"{kind}-completed"), request.customer_id.encode(),
                               ev.encode(answer, source="segmentation"), None)])
    await producer.stop()
    return request.request_id


async def give_consent(consent):
    for purpose in ("profiling", "email"):
        r = await consent.client.post("/v1/consents", json={
            "customer_id": CUSTOMER, "purpose": purpose, "granted": True, "policy_version": "v1",
            "source": "banner", "occurred_at": "2026-11-01T10:00:00Z"})
        assert r.status_code == 201


async def test_an_erasure_completes_only_after_every_service_and_leaves_no_trace(consent, kafka):
    await give_consent(consent)
    await wait_for(lambda: _eq(consent.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"), 0),
                   what="consent-state published")
    started = await consent.client.post("/v1/privacy/erasures", json={"customer_id": CUSTOMER})
    assert started.status_code == 202
    request_id = started.json()["request_id"]

    # The consent service confirms its own part; the request still waits for segmentation.
    async def consent_confirmed():
        body = (await consent.client.get(f"/v1/privacy/erasures/{request_id}")).json()
        return body if body["services"]["consent"]["status"] == "completed" else None

    body = await wait_for(consent_confirmed, what="consent's own confirmation")
    assert body["status"] == "pending"
    assert body["services"]["segmentation"] == {"status": "pending", "completed_at": None}

    assert await answer_as_segmentation(kafka, "erasure") == request_id

    async def completed():
        body = (await consent.client.get(f"/v1/privacy/erasures/{request_id}")).json()
        return body if body["status"] == "completed" else None

    body = await wait_for(completed, what="the erasure to complete")
    assert body["services"]["segmentation"]["status"] == "completed"
    assert body["completed_at"] is not None

    # No table of the consent schema holds the customer id any more...
    assert await columns_containing(consent.pool, CUSTOMER) == []
    # ...but the proof remains, under a keyed hash.
    proof = await consent.pool.fetchrow("SELECT subject_hash, completed_at FROM erasure_proofs")
    assert proof["subject_hash"] == consent.handlers.subject(CUSTOMER) and proof["completed_at"] is not None
    # The compacted topic carries a tombstone for the customer, after its earlier states.
    records = [r for r in await read_topic(kafka.bootstrap, kafka.topic("consent-state")) if r.key == CUSTOMER.encode()]
    assert records[-1].value is None and any(r.value is not None for r in records[:-1])
    # Replaying the customer's old consent does not bring them back.
    producer = await start_producer(kafka, "shop")
    old = ev.ConsentChanged(customer_id=CUSTOMER, purpose="profiling", granted=True, policy_version="v1",
                            source="banner", occurred_at=datetime(2026, 11, 1, 10, tzinfo=UTC))
    await send_all(producer, [(kafka.topic("consent-changed"), CUSTOMER.encode(), ev.encode(old, source="shop"), None)])
    await producer.stop()
    await wait_for(lambda: 'reason="erased_customer"' in consent.metrics.render().decode(), what="replay ignored")
    assert await consent.pool.fetchval("SELECT count(*) FROM consent_ledger") == 0


async def test_an_export_gathers_a_part_from_every_configured_service(consent, kafka):
    await give_consent(consent)
    started = await consent.client.post("/v1/privacy/exports", json={"customer_id": CUSTOMER})
    assert started.status_code == 202 and started.json()["bundle"] is None
    request_id = started.json()["request_id"]
    assert await answer_as_segmentation(kafka, "export") == request_id

    async def bundle():
        return (await consent.client.get(f"/v1/privacy/exports/{request_id}")).json()["bundle"]

    got = await wait_for(bundle, what="the bundle")
    assert got["customer_id"] == CUSTOMER
    assert set(got["services"]) == {"consent", "segmentation"}
    assert got["services"]["segmentation"] == {"profile": {"favourite_brand": "Maison"}}
    consents = got["services"]["consent"]
    assert consents["current_consent"]["email"]["granted"] is True
    assert len(consents["ledger"]) == 2

    # Handed out once; then the parts and the request's private key are gone.
    again = (await consent.client.get(f"/v1/privacy/exports/{request_id}")).json()
    assert again["status"] == "delivered" and again["bundle"] is None and again["delivered_at"]
    assert await consent.pool.fetchval("SELECT count(*) FROM privacy_request_parts WHERE detail_sealed IS NOT NULL"
                                       " OR detail <> '{}'::jsonb") == 0
    assert await consent.pool.fetchval("SELECT recipient_private_sealed FROM privacy_requests WHERE id = $1",
                                       request_id) is None
    # On Kafka every part travelled sealed for this request's key: nothing of it reads in clear.
    records = await read_topic(kafka.bootstrap, kafka.topic("export-completed"), expect=2)
    for record in records:
        assert b"Maison" not in record.value and b"current_consent" not in record.value
        assert ev.decode(record.value)[1].sealed


async def test_unknown_requests_are_404_and_the_register_lists_every_configured_service(consent):
    assert (await consent.client.get("/v1/privacy/erasures/nope")).status_code == 404
    register = (await consent.client.get("/v1/privacy/register")).json()
    assert {a["service"] for a in register["activities"]} == {"consent", "segmentation"}
    assert register["undeclared_services"] == []
    for activity in register["activities"]:
        assert activity["lawful_basis"] and activity["retention"] and activity["personal_data"]


async def _eq(value, expected):
    return (await value) == expected
