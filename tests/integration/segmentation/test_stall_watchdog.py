"""A partition that faust leaves out of its active set (what the chaos runs saw after kill -9
and rebalances) is found by the watchdog — messages waiting, no progress — logged with faust's
view of it, resumed, and its messages are then processed."""

from __future__ import annotations

import logging

from services.segmentation.app import SegmentationService, partition_of
from services.segmentation.settings import SegmentationSettings
from tests.integration.segmentation.conftest import consent, publish
from tests.integration.segmentation.test_profiles_and_segments import cart, entries
from tests.support import wait_for


async def test_a_partition_left_paused_is_found_and_resumed(kafka, caplog):
    service = SegmentationService(SegmentationSettings(kafka=kafka, stall_timeout_s=3, stall_check_interval_s=1))
    await service.start()
    try:
        await wait_for(lambda: bool(service.app.consumer.assignment()), timeout=30, what="partitions assigned")
        customer = "stall-1"
        await publish(kafka, "consent-state", [consent(customer)])
        await wait_for(lambda: service.consent.get(customer), timeout=30, what="the consent to be handled")
        carts = kafka.topic("cart-abandoned")
        tp = next(t for t in service.app.consumer.assignment()
                  if t.topic == carts and t.partition == partition_of(customer.encode()))
        service.app.consumer.pause_partitions([tp])  # as faust sometimes leaves one after a rebalance
        caplog.set_level(logging.ERROR, logger="services.segmentation.app")
        await publish(kafka, "cart-abandoned", [cart(customer, 35_000, "k-stall")])
        found = await entries(kafka, expect=1, timeout=60)
        assert [(e.customer_id, e.segment) for e in found] == [(customer, "cart-abandoned-300")]
        stalled = [r for r in caplog.records if r.getMessage().startswith("partition stalled")]
        assert stalled and stalled[0].partition == tp.partition and stalled[0].faust_paused is True
        assert service.metrics.stalls.labels("resumed")._value.get() >= 1
    finally:
        await service.stop()
