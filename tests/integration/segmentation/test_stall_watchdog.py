"""A partition that faust leaves out of its active set (what the chaos runs saw after kill -9
and rebalances) is found by the watchdog — messages waiting, no progress — logged with faust's
view of it, resumed, and its messages are then processed."""

from __future__ import annotations

import logging

from services.segmentation.settings import SegmentationSettings
from tests.integration.segmentation.conftest import consented_cart_partition, publish, running
from tests.integration.segmentation.test_profiles_and_segments import cart, entries


async def test_a_partition_left_paused_is_found_and_resumed(kafka, caplog):
    settings = SegmentationSettings(kafka=kafka, stall_timeout_s=3, stall_check_interval_s=1)
    async with running(settings) as service:
        customer = "stall-1"
        tp = await consented_cart_partition(service, kafka, customer)
        service.app.consumer.pause_partitions([tp])  # as faust sometimes leaves one after a rebalance
        caplog.set_level(logging.ERROR, logger="services.segmentation.app")
        await publish(kafka, "cart-abandoned", [cart(customer, 35_000, "k-stall")])
        found = await entries(kafka, expect=1, timeout=60)
        assert [(e.customer_id, e.segment) for e in found] == [(customer, "cart-abandoned-300")]
        stalled = [r for r in caplog.records if r.getMessage().startswith("partition stalled")]
        assert stalled and stalled[0].partition == tp.partition
        # The log carries faust's and aiokafka's view of the partition. Which of them still calls it
        # paused is not asserted: twice in CI faust had dropped its own record of the pause while the
        # partition stayed stalled — the very state the watchdog exists for.
        assert {"faust_paused", "aiokafka_paused"} <= set(vars(stalled[0]))
        assert service.metrics.stalls.labels("resumed")._value.get() >= 1
