from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import httpx
import pytest

from services.segmentation import store
from services.segmentation.app import SegmentationService
from services.segmentation.settings import SegmentationSettings
from shared import auth, db
from shared import events as ev
from shared.kafka import send_all, start_producer
from shared.settings import PostgresSettings
from tests.support import unique, wait_for


def settings_for(kafka, schema: str | None = None, **over) -> SegmentationSettings:
    return SegmentationSettings(kafka=kafka, schema_name=schema or unique("test_segmentation_"), **over)


@contextlib.asynccontextmanager
async def running(settings: SegmentationSettings, *, drop: bool = True):
    """A started worker with its partitions assigned; stopped (and its schema dropped) afterwards."""
    service = SegmentationService(settings)
    await service.start()
    try:
        await wait_for(lambda: bool(service.consumer.assignment()), timeout=30, what="partitions assigned")
        yield service
    finally:
        await service.stop()
        if drop:
            pool = await db.create_pool(PostgresSettings(), settings.db_schema, min_size=1, max_size=1)
            await db.drop_schema(pool, settings.db_schema)
            await pool.close()


async def profile(service: SegmentationService, customer: str) -> dict | None:
    async with service.pool.acquire() as conn:
        return await store.profile(conn, customer)


async def kept(service: SegmentationService, customer: str) -> bool:
    async with service.pool.acquire() as conn:
        return bool(await store.load(conn, [customer]))


@pytest.fixture
async def segmentation(kafka):
    async with running(settings_for(kafka, rules_check_interval_s=0.5)) as service:
        async with service.pool.acquire() as conn:
            _, key = await auth.create_key(conn, "tests", ["profiles:read"])
        service.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http(manage_lifecycle=False)),
                                           base_url="http://segmentation", headers={"Authorization": f"Bearer {key}"})
        yield service
        await service.client.aclose()


async def publish(kafka, topic: str, events: list[ev.Event]) -> None:
    producer = await start_producer(kafka, "shop")
    try:
        await send_all(producer, [(kafka.topic(topic), e.key().encode(), ev.encode(e, source="shop"), None)
                                  for e in events])
    finally:
        await producer.stop()


def consent(customer: str, profiling: bool = True) -> ev.ConsentState:
    at = datetime.now(UTC)
    return ev.ConsentState(customer_id=customer, updated_at=at, purposes={
        ev.Purpose.PROFILING: ev.PurposeState(granted=profiling, since=at, policy_version="v1")})
