"""Consent propagation: from a consent change published on ``consent-changed`` to the customer's
new ``consent-state`` arriving at a consumer, at a steady rate, through the consent service
running as its own process on the local stack.

    python -m bench.consent_propagation --rate 500 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from bench.common import clean_up, free_port, percentile, service_process
from shared import events as ev
from shared import topics
from shared.kafka import start_producer
from shared.settings import KafkaSettings


async def run(rate: int, seconds: float, bootstrap: str) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix)
    await topics.ensure_topics(bootstrap, prefix, report=lambda *_: None)
    port = free_port()
    schema = f"bench_consent_{uuid.uuid4().hex[:8]}"
    env = {"CONSENT_HTTP_PORT": str(port), "CONSENT_SCHEMA_NAME": schema,
           "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": prefix, "VOUCHERSTREAM_KAFKA_BOOTSTRAP": bootstrap,
           "CONSENT_LOG_LEVEL": "WARNING"}
    log_path = Path(tempfile.gettempdir()) / f"{schema}.log"
    sent: dict[str, float] = {}
    latencies: list[float] = []
    total = int(rate * seconds)
    try:
        async with service_process("consent", env, port, log_path):
            consumer = AIOKafkaConsumer(kafka.topic("consent-state"), bootstrap_servers=bootstrap,
                                        group_id=None, auto_offset_reset="latest", enable_auto_commit=False)
            await consumer.start()
            await asyncio.sleep(1.0)  # let the consumer take its partitions before the load starts
            producer = await start_producer(kafka, "bench")

            async def collect() -> None:
                while len(latencies) < total:
                    batch = await consumer.getmany(timeout_ms=200)
                    now = time.perf_counter()
                    for records in batch.values():
                        for r in records:
                            start = sent.pop(r.key.decode(), None)
                            if start is not None:
                                latencies.append(now - start)

            collector = asyncio.create_task(collect())
            started = time.perf_counter()
            tick = 0.01
            per_tick = max(1, round(rate * tick))
            i = 0
            while i < total:
                target = started + (i / rate)
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                for _ in range(min(per_tick, total - i)):
                    customer = f"bench-{i}"
                    change = ev.ConsentChanged(customer_id=customer, purpose=ev.Purpose.EMAIL, granted=True,
                                               policy_version="v1", source="bench", occurred_at=datetime.now(UTC))
                    sent[customer] = time.perf_counter()
                    await producer.send(kafka.topic("consent-changed"), key=customer.encode(),
                                        value=ev.encode(change, source="bench"))
                    i += 1
            await producer.flush()
            send_elapsed = time.perf_counter() - started
            try:
                await asyncio.wait_for(collector, timeout=60)
            except TimeoutError:
                pass
            await producer.stop()
            await consumer.stop()
    finally:
        await clean_up(bootstrap, prefix, env)
    lat_ms = [x * 1000 for x in latencies]
    return {
        "benchmark": "consent_propagation",
        "target_rate_per_s": rate,
        "achieved_send_rate_per_s": round(total / send_elapsed, 1),
        "events": total,
        "states_received": len(latencies),
        "lost": total - len(latencies),
        "p50_ms": round(percentile(lat_ms, 50), 1),
        "p95_ms": round(percentile(lat_ms, 95), 1),
        "p99_ms": round(percentile(lat_ms, 99), 1),
        "max_ms": round(max(lat_ms), 1) if lat_ms else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500, help="consent changes per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--bootstrap", default=KafkaSettings().bootstrap)
    parser.add_argument("--p99-target-ms", type=float, default=200.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.rate, args.seconds, args.bootstrap))
    result["p99_target_ms"] = args.p99_target_ms
    result["target_met"] = result["lost"] == 0 and result["p99_ms"] < args.p99_target_ms
    print(json.dumps(result, indent=2))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
