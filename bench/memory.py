"""Memory per service as work grows: the four services as their own processes, a stream of shop
events (orders, and carts of 310 USD that become vouchers) for consenting customers, and each
service's resident memory (VmRSS) sampled as the events go through.

    python -m bench.memory --events 1000000 --customers 100000    # make bench-memory
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

from bench.common import clean_up, scratch, service_process
from bench.pipeline import CAMPAIGN, SERVICES, fleet_env, rss_mb
from shared import auth, topics
from shared import events as ev
from shared.kafka import start_producer
from shared.settings import KafkaSettings, PostgresSettings


async def handled(client: httpx.AsyncClient, port: int) -> int:
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return int(sum(float(n) for n in re.findall(r"^voucherstream_segmentation_events_total\{[^}]*\} (\S+)$", text, re.M)))


async def run(events: int, customers: int) -> dict:
    bootstrap = KafkaSettings().bootstrap
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(topic_prefix=prefix)
    await topics.ensure_topics(bootstrap, prefix, report=lambda *_: None)
    ports, env = fleet_env(prefix, "mem")
    tmp = scratch("bench-memory-")
    ids = [f"m-{i}" for i in range(customers)]
    result: dict = {"benchmark": "memory", "events": events, "customers": customers, "samples": []}
    try:
        async with contextlib.AsyncExitStack() as stack:
            procs = {s: await stack.enter_async_context(service_process(s, env, ports[s], tmp / f"{s}.log"))
                     for s in SERVICES}
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                         server_settings={"search_path": env["ISSUANCE_SCHEMA_NAME"]})
            _, key = await auth.create_key(conn, "bench", ["marketing"])
            await conn.close()
            client = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
            r = await client.post(f"http://127.0.0.1:{ports['issuance']}/v1/campaigns", json=CAMPAIGN,
                                  headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 201, r.text
            result["rss_mb_at_start"] = {s: rss_mb(p.pid) for s, p in procs.items()}
            producer = await start_producer(kafka, "bench-shop", linger_ms=20)
            now = datetime.now(UTC)
            for cid in ids:
                for purpose in ("profiling", "personalized_offers", "email"):
                    e = ev.ConsentChanged(customer_id=cid, purpose=purpose, granted=True, policy_version="v1",
                                          source="bench", occurred_at=now)
                    await producer.send(kafka.topic("consent-changed"), key=cid.encode(), value=ev.encode(e, source="b"))
            await producer.flush()
            reader = AIOKafkaConsumer(kafka.topic("consent-state"), bootstrap_servers=bootstrap, group_id=None,
                                      auto_offset_reset="earliest")
            await reader.start()
            seen: set[str] = set()
            while len(seen) < customers:
                for records in (await reader.getmany(timeout_ms=200)).values():
                    seen.update(r.key.decode() for r in records)
            await reader.stop()
            base = await handled(client, ports["segmentation"])
            t0 = time.perf_counter()

            async def publish() -> None:
                item = ev.LineItem(sku="p-1", brand="Maison Lune", category="perfume", quantity=1,
                                   unit_price=ev.Money(amount=6000, currency="USD"))
                for i in range(events):
                    cid = ids[i % customers]
                    e: ev.Event
                    if i % 5 == 4:
                        e = ev.CartAbandoned(cart_id=f"k-{i}", customer_id=cid, abandoned_at=datetime.now(UTC),
                                             value=ev.Money(amount=31_000, currency="USD"))
                        topic = "cart-abandoned"
                    else:
                        e = ev.OrderPlaced(order_id=f"o-{i}", customer_id=cid, total=item.unit_price, items=[item],
                                           placed_at=datetime.now(UTC))
                        topic = "order-placed"
                    await producer.send(kafka.topic(topic), key=cid.encode(), value=ev.encode(e, source="b"))
                    if i % 20_000 == 0:
                        await producer.flush()
                await producer.flush()

            publisher = asyncio.create_task(publish())
            done = 0
            while done < events:
                await asyncio.sleep(5)
                done = await handled(client, ports["segmentation"]) - base
                sample = {"t_s": round(time.perf_counter() - t0, 1), "events_handled": done,
                          "rss_mb": {s: rss_mb(p.pid) for s, p in procs.items()}}
                result["samples"].append(sample)
                print(f"[memory] {done:,}/{events:,} events, rss {sample['rss_mb']}", file=sys.stderr, flush=True)
            await publisher
            await asyncio.sleep(10)  # issuance and analytics finish the vouchers of the last carts
            result["seconds"] = round(time.perf_counter() - t0, 1)
            result["rss_mb_at_end"] = {s: rss_mb(p.pid) for s, p in procs.items()}
            result["rss_mb_peak"] = {s: max(x["rss_mb"][s] for x in result["samples"]) for s in SERVICES}
            await producer.stop()
    finally:
        await clean_up(bootstrap, prefix, env)
    start, end = result["rss_mb_at_start"], result["rss_mb_at_end"]
    result["growth_mb_per_100k_events"] = {s: round((end[s] - start[s]) / events * 100_000, 2) for s in SERVICES}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.events, args.customers)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
