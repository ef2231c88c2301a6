"""A second worker in the same group takes over half the partitions, and the results are the same
as with one worker: each consented customer's cart fires once, nobody else's."""

from __future__ import annotations

from datetime import UTC, datetime

from services.segmentation.app import SegmentationService
from services.segmentation.settings import SegmentationSettings
from shared import events as ev
from tests.integration.segmentation.conftest import consent, publish
from tests.support import read_topic, wait_for


async def test_two_workers_split_the_partitions_and_agree_with_one(kafka):
    workers = [SegmentationService(SegmentationSettings(kafka=kafka)) for _ in range(2)]
    for w in workers:
        await w.start()
    try:
        async def split():
            sizes = [len(w.app.consumer.assignment()) for w in workers]
            return all(sizes) and sizes

        sizes = await wait_for(split, timeout=60, interval=0.2, what="both workers owning partitions")
        customers = [f"w-{i}" for i in range(200)]
        consented = customers[::2]
        await publish(kafka, "consent-state", [consent(c) for c in consented])
        # A late rebalance may move a partition while this runs; a worker can briefly keep what it
        # handed over, so the check is on the union of the tables, not on a sum of their sizes.
        await wait_for(lambda: set(consented) <= {k for w in workers for k, v in w.consent.items() if v},
                       timeout=60, what="consents in the workers' tables")
        now = datetime.now(UTC)
        await publish(kafka, "cart-abandoned", [
            ev.CartAbandoned(cart_id=f"k-{c}", customer_id=c, value=ev.Money(amount=35_000, currency="USD"),
                             abandoned_at=now) for c in customers])
        records = await read_topic(kafka.bootstrap, kafka.topic("segment-entered"), expect=len(consented), timeout=30)
        await wait_for(lambda: sum(w.handled for w in workers) >= len(consented) + len(customers), what="all handled")
    finally:
        for w in workers:
            await w.stop()
    got = sorted(ev.decode(r.value)[1].customer_id for r in records)
    assert got == sorted(consented)
    assert all(n > 0 for n in (w.handled for w in workers)), "both workers processed events"
    assert sum(sizes) >= 2
