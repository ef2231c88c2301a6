"""Issuance throughput and latency: ``segment-entered`` → ``voucher-issued``, through the issuance
service running as its own process on the local stack, next to this machine's raw PostgreSQL
batched-insert rate measured in the same run.

    python -m bench.issuance --saturation 20000 --rate 1000 --seconds 15
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

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

from bench.common import clean_up, free_port, percentile, service_process
from shared import auth, topics
from shared import events as ev
from shared.kafka import start_producer
from shared.settings import KafkaSettings, PostgresSettings

CAMPAIGN = {
    "id": "bench", "name": "bench", "segment": "bench-segment", "currency": "USD",
    "offer": {"kind": "fixed_amount", "amount": {"amount": 100, "currency": "USD"}},
    "validity": {"days_after_issue": 30}, "budget": {"limit": {"amount": 10**12, "currency": "USD"}},
    "channels": ["email", "onsite"],
}


def consent(customer: str) -> ev.ConsentState:
    at = datetime.now(UTC)
    return ev.ConsentState(customer_id=customer, updated_at=at, purposes={
        p: ev.PurposeState(granted=True, since=at, policy_version="v1")
        for p in (ev.Purpose.PERSONALIZED_OFFERS, ev.Purpose.EMAIL)})


def entered(customer: str) -> ev.SegmentEntered:
    return ev.SegmentEntered(customer_id=customer, segment="bench-segment", rule_version="1",
                             trigger_key="bench", facts={}, caused_by=[], evaluated_at=datetime.now(UTC))


async def raw_postgres_insert_rate(seconds: float = 3.0, batch: int = 500) -> float:
    """Rows/s of 500-row INSERT ... SELECT unnest batches, each its own transaction, into a table
    shaped like ``vouchers`` (the same kind of write the service does per batch)."""
    conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value())
    table = f"bench_raw_{uuid.uuid4().hex[:8]}"
    try:
        await conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, campaign_id text, customer_id text,"
                           " code_hash bytea UNIQUE, reserved bigint, issued_at timestamptz)")
        rows = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            ids = [uuid.uuid4().hex for _ in range(batch)]
            await conn.execute(
                f"INSERT INTO {table} SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[],"
                " $5::bigint[], $6::timestamptz[])",
                ids, ["c"] * batch, ids, [i.encode() for i in ids], [100] * batch, [datetime.now(UTC)] * batch)
            rows += batch
        return rows / (time.perf_counter() - started)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


async def run(saturation: int, rate: int, seconds: float, bootstrap: str) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix)
    await topics.ensure_topics(bootstrap, prefix, report=lambda *_: None)
    port = free_port()
    schema = f"bench_issuance_{uuid.uuid4().hex[:8]}"
    env = {"ISSUANCE_HTTP_PORT": str(port), "ISSUANCE_SCHEMA_NAME": schema, "ISSUANCE_LOG_LEVEL": "WARNING",
           "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": prefix, "VOUCHERSTREAM_KAFKA_BOOTSTRAP": bootstrap}
    paced = int(rate * seconds)
    customers = [f"b-{i}" for i in range(saturation + paced)]
    result: dict = {"benchmark": "issuance"}
    try:
        async with service_process("issuance", env, port, Path(tempfile.gettempdir()) / f"{schema}.log"):
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(), server_settings={"search_path": schema})
            try:
                _, key = await auth.create_key(conn, "bench", ["marketing"])
            finally:
                await conn.close()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                         headers={"Authorization": f"Bearer {key}"}) as client:
                created = await client.post("/v1/campaigns", json=CAMPAIGN)
                if created.status_code != 201:
                    raise SystemExit(f"could not create the bench campaign: {created.status_code} {created.text}")
            producer = await start_producer(kafka, "bench", linger_ms=20)
            for c in customers:
                await producer.send(kafka.topic("consent-state"), key=c.encode(), value=ev.encode(consent(c), source="bench"))
            await producer.flush()
            consumer = AIOKafkaConsumer(kafka.topic("voucher-issued"), bootstrap_servers=bootstrap, group_id=None,
                                        auto_offset_reset="earliest", enable_auto_commit=False)
            await consumer.start()
            arrivals: dict[str, float] = {}

            async def collect(expected: int) -> None:
                while len(arrivals) < expected:
                    batch = await consumer.getmany(timeout_ms=100)
                    now = time.perf_counter()
                    for records in batch.values():
                        for r in records:
                            arrivals.setdefault(r.key.decode(), now)

            # 1. Saturation: every event published at once; vouchers/s until the last one is out.
            sat = customers[:saturation]
            started = time.perf_counter()
            for c in sat:
                await producer.send(kafka.topic("segment-entered"), key=c.encode(), value=ev.encode(entered(c), source="bench"))
            await producer.flush()
            await asyncio.wait_for(collect(saturation), timeout=300)
            elapsed = time.perf_counter() - started
            result["saturation_events"] = saturation
            result["vouchers_per_s"] = round(saturation / elapsed, 1)

            # 2. Latency at a steady rate (none with --rate 0: saturation only).
            if paced:
                paced_customers = customers[saturation:]
                sent: dict[str, float] = {}
                collector = asyncio.create_task(collect(saturation + paced))
                t0 = time.perf_counter()
                for i, c in enumerate(paced_customers):
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent[c] = time.perf_counter()
                    await producer.send(kafka.topic("segment-entered"), key=c.encode(), value=ev.encode(entered(c), source="bench"))
                send_elapsed = time.perf_counter() - t0
                await asyncio.wait_for(collector, timeout=120)
                lat = [(arrivals[c] - sent[c]) * 1000 for c in paced_customers]
                result.update({"paced_rate_per_s": rate, "paced_achieved_per_s": round(paced / send_elapsed, 1),
                               "paced_events": paced, "p50_ms": round(percentile(lat, 50), 1),
                               "p99_ms": round(percentile(lat, 99), 1), "max_ms": round(max(lat), 1)})
            await producer.stop()
            await consumer.stop()
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(), server_settings={"search_path": schema})
            try:
                result["vouchers_in_db"] = await conn.fetchval("SELECT count(*) FROM vouchers")
            finally:
                await conn.close()
    finally:
        await clean_up(bootstrap, prefix, env)
    raw = await raw_postgres_insert_rate()
    result["raw_postgres_insert_rows_per_s"] = round(raw)
    result["ratio_vouchers_to_raw_insert"] = round(result["vouchers_per_s"] / raw, 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saturation", type=int, default=20_000, help="events published at once")
    parser.add_argument("--rate", type=int, default=1000, help="steady events/s for the latency run")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--bootstrap", default=KafkaSettings().bootstrap)
    args = parser.parse_args()
    r = asyncio.run(run(args.saturation, args.rate, args.seconds, args.bootstrap))
    r["targets"] = {"vouchers_per_s": ">= 2000", "p99_ms_at_1000_per_s": "< 250"}
    # --rate 0 measures saturation only: no latency to hold to its target.
    r["targets_met"] = (r["vouchers_per_s"] >= 2000 and (args.rate == 0 or r["p99_ms"] < 250)
                        and r["vouchers_in_db"] == args.saturation + int(args.rate * args.seconds))
    print(json.dumps(r, indent=2))
    return 0 if r["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
