from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from services.issuance.app import IssuanceService
from services.issuance.settings import IssuanceSettings
from shared import auth, db
from shared import events as ev
from shared.kafka import send_all, start_producer
from shared.settings import PostgresSettings
from tests.support import unique

USD = "USD"


def campaign(**over) -> dict:
    base = {"id": "cart-20", "name": "20 USD off your cart", "segment": "cart-abandoned-300", "currency": USD,
            "offer": {"kind": "fixed_amount", "amount": {"amount": 2000, "currency": USD},
                      "min_order": {"amount": 5000, "currency": USD}},
            "validity": {"days_after_issue": 14}, "budget": {"limit": {"amount": 200_000, "currency": USD}},
            "channels": ["email", "sms", "push", "onsite"]}
    return base | over


def consent_state(customer: str, *granted: str) -> ev.ConsentState:
    at = datetime.now(UTC)
    return ev.ConsentState(customer_id=customer, updated_at=at, purposes={
        ev.Purpose(p): ev.PurposeState(granted=True, since=at, policy_version="v1") for p in granted})


def entered(customer: str, segment: str = "cart-abandoned-300", trigger: str | None = None,
            preferred: str | None = None) -> ev.SegmentEntered:
    return ev.SegmentEntered(customer_id=customer, segment=segment, rule_version="1",
                             trigger_key=trigger or f"cart:{abs(hash(customer)) % 10**8}", facts={"cart_value": 31000},
                             caused_by=["e1"], preferred_channel=preferred, evaluated_at=datetime.now(UTC))


async def publish(kafka, topic: str, events: list[ev.Event]) -> None:
    producer = await start_producer(kafka, "test")
    try:
        await send_all(producer, [(kafka.topic(topic), e.key().encode(), ev.encode(e, source="test"), None)
                                  for e in events])
    finally:
        await producer.stop()


@pytest.fixture
def issuance_schema() -> str:
    return unique("test_issuance_")


@pytest.fixture
async def issuance(kafka, issuance_schema):
    settings = IssuanceSettings(kafka=kafka, schema_name=issuance_schema, expiry_interval_s=0.5)
    service = IssuanceService(settings)
    await service.start()
    async with service.pool.acquire() as conn:
        _, service.api_key = await auth.create_key(conn, "tests", auth.SCOPES)
    # the app in process; tests open clients of their own (other keys, none) on the same transport
    service.transport = httpx.ASGITransport(app=service.http(manage_lifecycle=False))
    service.client = httpx.AsyncClient(transport=service.transport, base_url="http://issuance",
                                       headers={"Authorization": f"Bearer {service.api_key}"})
    yield service
    await service.client.aclose()
    await service.stop()
    pool = await db.create_pool(PostgresSettings(), issuance_schema, min_size=1, max_size=1)
    await db.drop_schema(pool, issuance_schema)
    await pool.close()
