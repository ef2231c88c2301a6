from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from services.segmentation.app import SegmentationService
from services.segmentation.settings import SegmentationSettings
from shared import events as ev
from shared.kafka import send_all, start_producer
from tests.support import wait_for


@pytest.fixture
async def segmentation(kafka):
    service = SegmentationService(SegmentationSettings(kafka=kafka, rules_check_interval_s=0.5))
    await service.start()
    await wait_for(lambda: bool(service.app.consumer.assignment()), timeout=30, what="partitions assigned")
    service.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http(manage_lifecycle=False)),
                                       base_url="http://segmentation")
    yield service
    await service.client.aclose()
    await service.stop()


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
