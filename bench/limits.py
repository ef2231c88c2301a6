"""This machine's raw limits, measured in the same run as Voucherstream's figures: Kafka produce
and consume with Kafka's own perf tools (from the cached jars) and with raw aiokafka (the client
the services use), and PostgreSQL batched inserts. (Single-row UPDATE rates come from pgbench in
``bench.checkout``.)

    python -m bench.limits --records 500000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import found, kafka_tool
from bench.issuance import raw_postgres_insert_rate
from shared.settings import KafkaSettings

RECORD_SIZE = 400  # bytes: a typical shop event in its CloudEvents envelope


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def delete_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


def kafka_perf(bootstrap: str, topic: str, records: int) -> dict:
    out = kafka_tool("org.apache.kafka.tools.ProducerPerformance", "--topic", topic, "--num-records", str(records),
                     "--record-size", str(RECORD_SIZE), "--throughput", "-1", "--producer-props",
                     f"bootstrap.servers={bootstrap}", "acks=all", "linger.ms=5", "batch.size=262144",
                     "enable.idempotence=true")
    last = [line for line in out.splitlines() if "records sent" in line][-1]
    produce = float(found(r"([\d.]+) records/sec", last, "kafka-producer-perf-test's rate"))
    p99 = re.search(r"([\d.]+) ms 99th", last)
    out = kafka_tool("org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", bootstrap, "--topic", topic,
                     "--messages", str(records), "--group", f"perf-{uuid.uuid4().hex[:6]}", "--timeout", "60000")
    header, row = [line for line in out.splitlines() if line.strip()][-2:]
    stats = dict(zip([h.strip() for h in header.split(",")], [v.strip() for v in row.split(",")], strict=False))
    return {"produce_per_s": round(produce), "produce_p99_ms": float(p99.group(1)) if p99 else None,
            "consume_per_s": round(float(stats.get("fetch.nMsg.sec") or stats["nMsg.sec"]))}


async def aiokafka_perf(bootstrap: str, topic: str, records: int) -> dict:
    value = b"x" * RECORD_SIZE
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        pending = []
        for i in range(records):
            pending.append(await producer.send(topic, key=str(i % 10_000).encode(), value=value))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        produce = records / (time.perf_counter() - t0)
        send_cpu_us = (time.process_time() - cpu0) / records * 1e6
        parts = sorted(await producer.partitions_for(topic))
        # The same records again through the batch builder, a batch per partition (the outbox
        # relay's way): rate and this process's CPU per record, both ways.
        t0, cpu0 = time.perf_counter(), time.process_time()
        for start in range(0, records, 10_000):
            batches: dict[int, Any] = {}
            for i in range(start, min(start + 10_000, records)):
                part = parts[i % len(parts)]
                batch = batches.get(part) or batches.setdefault(part, producer.create_batch())
                if batch.append(key=str(i % 10_000).encode(), value=value, timestamp=None) is None:
                    pending.append(await producer.send_batch(batch, topic, partition=part))
                    batch = batches[part] = producer.create_batch()
                    batch.append(key=str(i % 10_000).encode(), value=value, timestamp=None)
            pending += [await producer.send_batch(b, topic, partition=p) for p, b in batches.items()]
            await asyncio.gather(*pending)
            pending.clear()
        batched = records / (time.perf_counter() - t0)
        batched_cpu_us = (time.process_time() - cpu0) / records * 1e6
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        n, t0 = 0, time.perf_counter()
        while n < records:
            for batch in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                n += len(batch)
        consume = n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
    return {"produce_per_s": round(produce), "consume_per_s": round(consume),
            "produce_cpu_us_per_record": round(send_cpu_us, 1),
            "produce_batched_per_s": round(batched), "produce_batched_cpu_us_per_record": round(batched_cpu_us, 1)}


async def run(records: int, bootstrap: str) -> dict:
    result: dict = {"benchmark": "limits", "record_size_bytes": RECORD_SIZE, "records": records}
    for name, measure in (("kafka_perf_tools", "java"), ("raw_aiokafka", "python")):
        topic = f"bench-limits-{uuid.uuid4().hex[:8]}"
        await create_topic(bootstrap, topic, 6)
        try:
            if measure == "java":
                result[name] = await asyncio.get_running_loop().run_in_executor(None, kafka_perf, bootstrap, topic, records)
            else:
                result[name] = await aiokafka_perf(bootstrap, topic, records // 2)
        finally:
            await delete_topic(bootstrap, topic)
    result["raw_postgres_insert_rows_per_s"] = round(await raw_postgres_insert_rate())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--bootstrap", default=KafkaSettings().bootstrap)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.records, args.bootstrap)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
