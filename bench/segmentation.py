"""Segmentation throughput on the cart path: consented customers' carts of 300 USD or more (each
one a trigger, so each is applied, evaluated and emitted through the outbox) through one worker,
next to a raw aiokafka consume of the same topic on the same machine, in the same run.

    python -m bench.segmentation --events 50000 --customers 5000
    python -m bench.segmentation --events 50000 --customers 5000 --profile   # add a cProfile

The worker's rate counts from its first handled message to the last ``segment-entered`` on the
topic, so the outbox relay's publication is inside the measured time.
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
from typing import Any

import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.segmentation.app import SegmentationService
from services.segmentation.settings import SegmentationSettings
from shared import db, topics
from shared import events as ev
from shared.kafka import start_producer
from shared.settings import KafkaSettings, PostgresSettings


def cart(customer: str, i: int) -> ev.CartAbandoned:
    return ev.CartAbandoned(cart_id=f"k-{i}", customer_id=customer, value=ev.Money(amount=31_000, currency="USD"),
                            abandoned_at=datetime.now(UTC))


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


async def count_records(consumer: AIOKafkaConsumer) -> int:
    ends = await consumer.end_offsets(list(consumer.assignment()))
    return sum(ends.values())


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
    await producer.flush()
    result: dict[str, Any] = {"benchmark": "segmentation", "path": "cart-abandoned, each a trigger", "events": events,
              "customers": customers}
    settings = SegmentationSettings(kafka=kafka, schema_name=f"bench_seg_{uuid.uuid4().hex[:6]}", log_level="WARNING")
    entered = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await entered.start()
    service = SegmentationService(settings)
    try:
        # The consents first, so that every cart is a consented customer's; then the carts wait on
        # the topic while no worker runs, and a fresh worker takes them all at once.
        await service.start()
        deadline = time.perf_counter() + 120
        while service.handled < customers and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        await service.stop()
        for i in range(events):
            c = ids[i % customers]
            await producer.send(kafka.topic("cart-abandoned"), key=c.encode(), value=ev.encode(cart(c, i), source="bench"))
        await producer.flush()
        result["raw_aiokafka_consume_per_s"] = round(await raw_consume(bootstrap, kafka.topic("cart-abandoned"), events))
        entered.assign([TopicPartition(kafka.topic("segment-entered"), p) for p in range(topics.CUSTOMER_PARTITIONS)])
        profiler = cProfile.Profile() if profile else None
        service = SegmentationService(settings)
        await service.start()
        started = None
        cpu_at_start = None
        if profiler:
            profiler.enable()
        deadline = time.perf_counter() + 600
        while time.perf_counter() < deadline:
            if started is None and service.handled:
                started, cpu_at_start = time.perf_counter(), time.process_time()
            if service.handled >= events and await count_records(entered) >= events:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - (started or deadline)
        cpu = time.process_time() - (cpu_at_start or 0)
        if profiler:
            profiler.disable()
        result["handled"] = service.handled
        result["segment_entered"] = await count_records(entered)
        result["worker_events_per_s"] = round(result["handled"] / elapsed) if elapsed > 0 else None
        # The worker's own CPU per event (this process: consumer, handler, outbox relay); the rest
        # of the wall time it waits on PostgreSQL and Kafka, which share the machine's cores.
        result["worker_cpu_us_per_event"] = round(cpu / max(result["handled"], 1) * 1e6)
        result["worker_cpu_share_of_wall"] = round(cpu / elapsed, 2) if elapsed > 0 else None
        result["ratio_to_raw_consume"] = round(result["worker_events_per_s"] / result["raw_aiokafka_consume_per_s"], 3)
        result["batches"] = service.consumers[0].batches_committed
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
            result["profile_top"] = out.getvalue()
    finally:
        await entered.stop()
        await producer.stop()
        await service.stop()
        pool = await db.create_pool(PostgresSettings(), settings.db_schema, min_size=1, max_size=1)
        await db.drop_schema(pool, settings.db_schema)
        await pool.close()
        await topics.delete_topics(bootstrap, prefix)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--bootstrap", default=KafkaSettings().bootstrap)
    parser.add_argument("--profile", action="store_true", help="add a cProfile of the worker")
    args = parser.parse_args()
    r = uvloop.run(run(args.events, args.customers, args.bootstrap, args.profile))  # as uvicorn runs the service
    top = r.pop("profile_top", None)
    r["target_events_per_s"] = 5000
    print(json.dumps(r, indent=2))
    if top:
        print(top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
