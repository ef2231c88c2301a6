"""A consumer process for the crash test: writes each consent event id once (idempotent), and
with --hang-after-commit stops forever right after its first database commit, before the offset
commit, so the test can kill -9 it there."""

from __future__ import annotations

import argparse
import asyncio
import sys

from shared import db
from shared.consumer import BatchConsumer
from shared.kafka import start_producer
from shared.metrics import Metrics
from shared.settings import KafkaSettings, PostgresSettings


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--hang-after-commit", action="store_true")
    args = parser.parse_args()
    kafka = KafkaSettings(topic_prefix=args.prefix, poll_timeout_ms=50)
    pool = await db.create_pool(PostgresSettings(), args.schema, min_size=1, max_size=2)
    producer = await start_producer(kafka, "crashy")

    async def handler(batch):
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO seen (event_id, customer_id) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
                [(m.envelope.id, m.event.customer_id) for m in batch])
            await conn.execute("UPDATE deliveries SET n = n + $1", len(batch))
        print(f"COMMITTED {len(batch)}", flush=True)
        if args.hang_after_commit:
            await asyncio.Event().wait()

    consumer = BatchConsumer(settings=kafka, group_id=args.group, topics=["consent-changed"], handler=handler,
                             producer=producer, metrics=Metrics("crashy"))
    await consumer.run()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
