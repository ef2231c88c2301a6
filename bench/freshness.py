"""Counter freshness: from a redemption's HTTP answer to the redemption being visible in the
analytics service's /metrics and on the ``budget-counters`` topic. Issuance and analytics run as
their own processes on the local stack; redemptions are spaced a little over a second apart
(budget-counters publishes a campaign at most once a second), and the first comes `gap` seconds
after the last voucher was issued (otherwise it measures how long the issuing burst's own
publication holds the campaign's next one back, up to a second).

    python -m bench.freshness --redemptions 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

from bench.common import clean_up, free_port, percentile, scratch, service_process
from bench.issuance import consent, entered
from shared import auth, datakeys, topics
from shared import events as ev
from shared.kafka import start_producer
from shared.settings import KafkaSettings, PostgresSettings

CAMPAIGN = {"id": "fresh", "name": "fresh", "segment": "bench-segment", "currency": "USD",
            "offer": {"kind": "fixed_amount", "amount": {"amount": 100, "currency": "USD"}},
            "validity": {"days_after_issue": 30}, "budget": {"limit": {"amount": 10**9, "currency": "USD"}},
            "channels": ["email"]}


async def run(n: int, gap: float) -> dict:
    bootstrap = KafkaSettings().bootstrap
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(topic_prefix=prefix)
    await topics.ensure_topics(bootstrap, prefix, report=lambda *_: None)
    ports = {"issuance": free_port(), "analytics": free_port()}
    schemas = {s: f"bench_fresh_{s}_{uuid.uuid4().hex[:6]}" for s in ports}
    env = {"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": prefix, "ISSUANCE_LOG_LEVEL": "WARNING", "ANALYTICS_LOG_LEVEL": "WARNING"}
    for s, p in ports.items():
        env[f"{s.upper()}_HTTP_PORT"], env[f"{s.upper()}_SCHEMA_NAME"] = str(p), schemas[s]
    tmp = scratch("bench-fresh-")
    to_metrics, to_topic = [], []
    try:
        async with service_process("issuance", env, ports["issuance"], tmp / "issuance.log"), \
                service_process("analytics", env, ports["analytics"], tmp / "analytics.log"):
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                         server_settings={"search_path": schemas["issuance"]})
            _, key = await auth.create_key(conn, "bench", ["marketing", "checkout"])
            await conn.close()
            base = f"http://127.0.0.1:{ports['issuance']}"
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
                assert (await c.post(f"{base}/v1/campaigns", json=CAMPAIGN)).status_code == 201
                customers = [f"f-{i}" for i in range(n)]
                producer = await start_producer(kafka, "bench")
                for x in customers:
                    await producer.send(kafka.topic("consent-state"), key=x.encode(), value=ev.encode(consent(x), source="b"))
                await producer.flush()
                await asyncio.sleep(1)
                for x in customers:
                    await producer.send(kafka.topic("segment-entered"), key=x.encode(), value=ev.encode(entered(x), source="b"))
                await producer.stop()
                reader = AIOKafkaConsumer(kafka.topic("delivery-requested"), bootstrap_servers=bootstrap, group_id=None,
                                          auto_offset_reset="earliest")
                await reader.start()
                codes: dict[str, str] = {}
                async with datakeys.reader() as keys:
                    while len(codes) < n:
                        for records in (await reader.getmany(timeout_ms=500)).values():
                            for value in await keys.opened([r.value for r in records]):
                                d = ev.decode(value)[1]
                                if isinstance(d, ev.DeliveryRequested):
                                    codes[d.customer_id] = d.code
                await reader.stop()
                counters = AIOKafkaConsumer(kafka.topic("budget-counters"), bootstrap_servers=bootstrap, group_id=None,
                                            auto_offset_reset="earliest")
                await counters.start()
                seen_on_topic: dict[int, float] = {}

                async def watch_topic():
                    while True:
                        for records in (await counters.getmany(timeout_ms=50)).values():
                            for r in records:
                                seen_on_topic.setdefault(ev.decode(r.value)[1].redeemed, time.perf_counter())

                watcher = asyncio.create_task(watch_topic())
                await asyncio.sleep(gap)  # the issuing burst's last publication is a second old
                metrics_url = f"http://127.0.0.1:{ports['analytics']}/metrics"
                for i, x in enumerate(customers, start=1):
                    r = await c.post(f"{base}/v1/redemptions", headers={"Idempotency-Key": uuid.uuid4().hex}, json={
                        "code": codes[x], "customer_id": x, "order": {"amount": {"amount": 5000, "currency": "USD"},
                                                                     "items": []}})
                    assert r.status_code == 201, r.text
                    t0 = time.perf_counter()
                    while True:
                        text = (await c.get(metrics_url)).text
                        counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                      if line.startswith("voucherstream_campaign_redemptions{"))
                        if counted >= i:
                            to_metrics.append(time.perf_counter() - t0)
                            break
                        await asyncio.sleep(0.01)
                    deadline = time.perf_counter() + 10
                    while i not in seen_on_topic and time.perf_counter() < deadline:
                        await asyncio.sleep(0.01)
                    to_topic.append(seen_on_topic.get(i, float("inf")) - t0)
                    await asyncio.sleep(max(0.0, gap - (time.perf_counter() - t0)))
                watcher.cancel()
                await counters.stop()
    finally:
        await clean_up(bootstrap, prefix, env)
    ms = lambda xs, q: round(percentile([x * 1000 for x in xs], q), 1)  # noqa: E731
    return {"benchmark": "counter_freshness", "redemptions": n,
            "to_metrics_p50_ms": ms(to_metrics, 50), "to_metrics_p99_ms": ms(to_metrics, 99),
            "to_budget_counters_p50_ms": ms(to_topic, 50), "to_budget_counters_p99_ms": ms(to_topic, 99),
            "target": "p99 < 1000 ms"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redemptions", type=int, default=30)
    parser.add_argument("--gap", type=float, default=1.1, help="seconds between redemptions")
    args = parser.parse_args()
    r = asyncio.run(run(args.redemptions, args.gap))
    r["target_met"] = r["to_metrics_p99_ms"] < 1000 and r["to_budget_counters_p99_ms"] < 1000
    print(json.dumps(r, indent=2))
    return 0 if r["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
