"""Segmentation throughput: profile-update events per second for one faust worker, next to a raw
aiokafka consume of the same topic on the same machine, in the same run.

    python -m bench.segmentation --events 50000 --customers 5000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer

from services.segmentation.app import SegmentationService
from services.segmentation.settings import SegmentationSettings
from shared import events as ev
from shared import topics
from shared.kafka import start_producer
from shared.settings import KafkaSettings


def order(customer: str, i: int) -> ev.OrderPlaced:
    return ev.OrderPlaced(order_id=f"o-{i}", customer_id=customer, total=ev.Money(amount=1000, currency="USD"),
                          placed_at=datetime.now(UTC),
                          items=[ev.LineItem(sku="s-1", brand=f"brand-{i % 7}", category="perfume", quantity=1,
                                             unit_price=ev.Money(amount=1000, currency="USD"))])


async def raw_consume(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        got, started = 0, time.perf_counter()
        while got < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            got += sum(len(v) for v in batch.values())
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


async def run(events: int, customers: int, bootstrap: str, profile: bool) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix)
    await topics.ensure_topics(bootstrap, prefix, report=lambda *_: None)
    ids = [f"c-{i}" for i in range(customers)]
    producer = await start_producer(kafka, "bench", linger_ms=20)
    at = datetime.now(UTC)
    for c in ids:
        state = ev.ConsentState(customer_id=c, updated_at=at, purposes={
            ev.Purpose.PROFILING: ev.PurposeState(granted=True, since=at, policy_version="v1")})
        await producer.send(kafka.topic("consent-state"), key=c.encode(), value=ev.encode(state, source="bench"))
    for i in range(events):
        c = ids[i % customers]
        await producer.send(kafka.topic("order-placed"), key=c.encode(), value=ev.encode(order(c, i), source="bench"))
    await producer.flush()
    await producer.stop()
    result = {"benchmark": "segmentation", "events": events, "customers": customers}
    try:
        result["raw_aiokafka_consume_per_s"] = round(await raw_consume(bootstrap, kafka.topic("order-placed"), events))
        service = SegmentationService(SegmentationSettings(kafka=kafka))
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        await service.start()
        if profiler:
            profiler.enable()
        total = events + customers
        first = None
        while service.handled < total:
            await asyncio.sleep(0.01)
            if first is None and service.handled:
                first = (time.perf_counter(), service.handled)
            if time.perf_counter() - started > 600:
                break
        elapsed = time.perf_counter() - started
        result["startup_and_recovery_s"] = round(first[0] - started, 2) if first else None
        if profiler:
            profiler.disable()
        await service.stop()
        result["handled"] = service.handled
        steady = time.perf_counter() - first[0] if first else elapsed
        result["worker_events_per_s"] = round((service.handled - (first[1] if first else 0)) / steady)
        result["worker_events_per_s_including_startup"] = round(service.handled / elapsed)
        result["ratio_to_raw_consume"] = round(result["worker_events_per_s"] / result["raw_aiokafka_consume_per_s"], 3)
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
            result["profile_top"] = out.getvalue()
    finally:
        await topics.delete_topics(bootstrap, prefix)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--bootstrap", default=KafkaSettings().bootstrap)
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the worker")
    args = parser.parse_args()
    r = asyncio.run(run(args.events, args.customers, args.bootstrap, args.profile))
    top = r.pop("profile_top", None)
    r["target_events_per_s"] = 5000
    print(json.dumps(r, indent=2))
    if top:
        print(top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
