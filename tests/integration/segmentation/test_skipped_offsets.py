"""Messages faust's consumer skips (the chaos runs lost carts this way around kill -9 and
rebalances: dropped between fetch and stream, then acknowledged as an offset "gap") are noticed
by the agent — the next message of the partition is past the offset it expected — read back and
processed, in order, before that message."""

from __future__ import annotations

import logging

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from services.segmentation.settings import SegmentationSettings
from tests.integration.segmentation.conftest import consented_cart_partition, publish, running
from tests.integration.segmentation.test_profiles_and_segments import cart, entries
from tests.support import wait_for


async def test_offsets_faust_skips_are_read_back_and_processed(kafka, caplog):
    async with running(SegmentationSettings(kafka=kafka, stall_timeout_s=3600)) as service:
        customer = "skip-1"
        tp = await consented_cart_partition(service, kafka, customer)
        assert service._next[(tp.topic, tp.partition)] == 0  # set at assignment: the log's beginning
        # What faust does in the chaos runs, made deterministic: the partition's first three
        # messages never reach the stream (here: paused, then the consumer moved past them).
        service.app.consumer.pause_partitions([tp])
        await publish(kafka, "cart-abandoned", [cart(customer, 31_000, f"k-skip-{i}") for i in range(3)])
        await service.app.consumer.seek(tp, 3)
        service.app.consumer.resume_partitions([tp])
        caplog.set_level(logging.WARNING, logger="services.segmentation.app")
        await publish(kafka, "cart-abandoned", [cart(customer, 31_000, "k-skip-3")])
        found = await entries(kafka, expect=4, timeout=60)
        assert [e.facts["cart_id"] for e in found] == [f"k-skip-{i}" for i in range(4)]  # in order
        warned = [r for r in caplog.records if r.getMessage().startswith("faust's consumer skipped messages")]
        assert [(r.from_offset, r.to_offset, r.processed) for r in warned] == [(0, 2, 3)]
        assert service.metrics.skipped.labels("cart-abandoned")._value.get() == 3


async def committed(kafka, group: str, tp) -> int | None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    meta = offsets.get(TopicPartition(tp.topic, tp.partition))
    return meta.offset if meta is not None else None


async def test_after_a_read_back_the_group_commit_moves_past_the_skipped_offsets(kafka):
    """The chaos run of 2026-11-29 19:28: after a pause, faust skipped 28 offsets without noting a
    gap; they were read back and processed, but faust commits only an unbroken run past its last
    commit, so the group's offset stayed before them for good (342 behind at the end)."""
    settings = SegmentationSettings(kafka=kafka, stall_timeout_s=3600)
    async with running(settings) as service:
        customer = "skip-2"
        tp = await consented_cart_partition(service, kafka, customer)
        await publish(kafka, "cart-abandoned", [cart(customer, 31_000, "k-gap-0")])
        await entries(kafka, expect=1, timeout=60)

        async def commit_is(offset):
            return await committed(kafka, settings.group_id, tp) == offset

        await wait_for(lambda: commit_is(1), timeout=30, what="the first message committed")
        service.app.consumer.pause_partitions([tp])
        await publish(kafka, "cart-abandoned", [cart(customer, 31_000, f"k-gap-{i}") for i in (1, 2, 3)])
        await service.app.consumer.seek(tp, 4)
        service.app.consumer._read_offset[tp] = None  # as after a rebalance: faust notes no gap then
        service.app.consumer.resume_partitions([tp])
        await publish(kafka, "cart-abandoned", [cart(customer, 31_000, "k-gap-4")])
        found = await entries(kafka, expect=5, timeout=60)
        assert [e.facts["cart_id"] for e in found] == [f"k-gap-{i}" for i in range(5)]
        await wait_for(lambda: commit_is(5), timeout=30, what="the group's commit past the read-back offsets")
