from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import httpx
import pytest

from services.segmentation.app import SegmentationService, partition_of
from services.segmentation.settings import SegmentationSettings
from shared import events as ev
from shared.kafka import send_all, start_producer
from tests.support import wait_for


@contextlib.asynccontextmanager
async def running(settings: SegmentationSettings):
    """A started worker with its partitions assigned and its tables recovered (faust resumes every
    partition when recovery completes, which would undo a test's pause); stopped afterwards."""
    service = SegmentationService(settings)
    await service.start()
    try:
        await wait_for(lambda: bool(service.app.consumer.assignment()), timeout=30, what="partitions assigned")
        await wait_for(lambda: service.app.tables.recovery.completed.is_set() and not service.app.in_recovery,
                       timeout=30, what="table recovery")
        yield service
    finally:
        await service.stop()


async def consented_cart_partition(service: SegmentationService, kafka, customer: str):
    """Gives ``customer`` profiling consent (handled by ``service``) and returns the worker's
    ``cart-abandoned`` partition for that customer."""
    await publish(kafka, "consent-state", [consent(customer)])
    await wait_for(lambda: service.consent.get(customer), timeout=30, what="the consent to be handled")
    carts = kafka.topic("cart-abandoned")
    return next(t for t in service.app.consumer.assignment()
                if t.topic == carts and t.partition == partition_of(customer.encode()))


@pytest.fixture
async def segmentation(kafka):
    async with running(SegmentationSettings(kafka=kafka, rules_check_interval_s=0.5)) as service:
        service.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http(manage_lifecycle=False)),
                                           base_url="http://segmentation")
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
