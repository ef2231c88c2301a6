"""Privacy under load: what sealing personal fields costs, and erasures at scale.

1. The codec: a segment entry and a delivery request encoded and decoded per second on one core,
   with their personal fields sealed under a data key and in clear (the ratio is the cost of
   crypto-shredding in the event path), and the key store's two batch queries.
2. Erasures: the four services as their own processes; ``--erasures`` customers with consent, a
   cart and a voucher; then, while other customers' carts flow at ``--load-rate``/s, every one of
   them asked to be erased at once. Each erasure's time from request to completed in every
   service (p50/p99), and the campaign's budget ledger before and after (erasures must not move it).

    python -m bench.privacy --erasures 100 --load-rate 200 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer

from bench.common import clean_up, percentile, scratch, service_process
from bench.pipeline import CAMPAIGN, SERVICES, fleet_env
from shared import auth, datakeys, topics
from shared import events as ev
from shared.datakeys import DataKey, DataKeys
from shared.kafka import start_producer
from shared.settings import DataKeySettings, KafkaSettings, PostgresSettings


def codec(n: int) -> dict:
    key = DataKey("k" * 24, os.urandom(32))
    now = datetime.now(UTC)
    events: list[ev.Event] = [ev.SegmentEntered(customer_id=f"c-{i}", segment="cart-abandoned-300", rule_version="1",
                                trigger_key=f"cart:k-{i}", facts={"cart_value": 31000, "brand": "Maison Lune"},
                                caused_by=[str(uuid.uuid4())], preferred_channel="email", evaluated_at=now)
              for i in range(n // 2)]
    events += [ev.DeliveryRequested(voucher_id=f"v-{i}", campaign_id="cart-20", customer_id=f"c-{i}", channel="email",
                                    code=f"SAVE-{i:08d}", offer={"kind": "fixed_amount",
                                                                 "amount": {"amount": 2000, "currency": "USD"}},
                                    expires_at=now) for i in range(n // 2)]
    out: dict[str, Any] = {}
    for label, data_key in (("clear", None), ("sealed", key)):
        t0 = time.perf_counter()
        values = [ev.encode(e, source="bench", data_key=data_key) for e in events]
        encoded = time.perf_counter() - t0
        t0 = time.perf_counter()
        for v in values:
            ev.decode(v, keys=lambda _: key.key)
        decoded = time.perf_counter() - t0
        out[label] = {"encode_per_s": round(len(events) / encoded), "decode_per_s": round(len(events) / decoded),
                      "round_trip_per_s": round(len(events) / (encoded + decoded)),
                      "bytes_per_event": round(sum(map(len, values)) / len(values))}
    out["sealed_over_clear"] = round(out["sealed"]["round_trip_per_s"] / out["clear"]["round_trip_per_s"], 3)
    return out


async def keystore(batch: int, rounds: int) -> dict:
    """The two queries a batch costs: keys for its customers (created the first time) and keys
    by id for opening (uncached)."""
    pool = await asyncpg.create_pool(PostgresSettings().dsn.get_secret_value(), min_size=1, max_size=2)
    try:
        keys = DataKeys(DataKeySettings(), lambda: pool)
        await datakeys.migrate(pool, DataKeySettings())
        tag = uuid.uuid4().hex[:8]
        created: list[float] = []
        read: list[float] = []
        loaded, ids = [], []
        for r in range(rounds):
            customers = [f"ks-{tag}-{r}-{i}" for i in range(batch)]
            for timings in (created, read):  # first creates, then finds
                t0 = time.perf_counter()
                async with pool.acquire() as conn, conn.transaction():
                    found = await keys.for_customers(conn, customers)
                timings.append((time.perf_counter() - t0) * 1000)
            ids.append([k.id for k in found.values()])
        for batch_ids in ids:
            t0 = time.perf_counter()
            await DataKeys(DataKeySettings(), lambda: pool).load(batch_ids)  # a cold cache
            loaded.append((time.perf_counter() - t0) * 1000)
        async with pool.acquire() as conn:
            await conn.execute(f"DELETE FROM {keys.table} WHERE key_id = ANY($1::text[])", [i for b in ids for i in b])
        return {"batch": batch, "create_ms_p50": round(percentile(created, 50), 2),
                "find_ms_p50": round(percentile(read, 50), 2), "load_by_id_ms_p50": round(percentile(loaded, 50), 2)}
    finally:
        await pool.close()


async def erasures(n: int, load_rate: int, seconds: float) -> dict:
    bootstrap = KafkaSettings().bootstrap
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(topic_prefix=prefix)
    await topics.ensure_topics(bootstrap, prefix, report=lambda *_: None)
    ports, env = fleet_env(prefix, "priv")
    tmp = scratch("bench-privacy-")
    url = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
    erased = [f"e-{i}" for i in range(n)]
    load = [f"l-{i}" for i in range(int(load_rate * seconds) + 1)]
    result: dict = {"erasures": n, "load_carts_per_s": load_rate}
    try:
        async with contextlib.AsyncExitStack() as stack:
            for s in SERVICES:
                await stack.enter_async_context(service_process(s, env, ports[s], tmp / f"{s}.log"))
            _, key = auth.new_key()
            for s in SERVICES:
                conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                             server_settings={"search_path": env[f"{s.upper()}_SCHEMA_NAME"]})
                await auth.create_key(conn, "bench", list(auth.SCOPES), key=key)
                await conn.close()
            c = await stack.enter_async_context(httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                                                                  timeout=60))
            assert (await c.post(f"{url['issuance']}/v1/campaigns", json=CAMPAIGN)).status_code == 201
            producer = await start_producer(kafka, "bench-shop", linger_ms=10)
            stack.push_async_callback(producer.stop)
            now = datetime.now(UTC)
            for cid in erased + load:
                for purpose in ("profiling", "personalized_offers", "email"):
                    await producer.send(kafka.topic("consent-changed"), key=cid.encode(), value=ev.encode(
                        ev.ConsentChanged(customer_id=cid, purpose=purpose, granted=True, policy_version="v1",
                                          source="bench", occurred_at=now), source="b"))
            await producer.flush()

            def cart(cid: str) -> bytes:
                return ev.encode(ev.CartAbandoned(cart_id=f"k-{cid}", customer_id=cid, abandoned_at=datetime.now(UTC),
                                                  value=ev.Money(amount=31000, currency="USD")), source="bench")

            await asyncio.sleep(5)  # consent reaches segmentation and issuance
            for cid in erased:
                await producer.send(kafka.topic("cart-abandoned"), key=cid.encode(), value=cart(cid))
            await producer.flush()
            reader = AIOKafkaConsumer(kafka.topic("delivery-requested"), bootstrap_servers=bootstrap, group_id=None,
                                      auto_offset_reset="earliest")
            await reader.start()
            delivered: set[str] = set()
            deadline = time.monotonic() + 120
            while not set(erased) <= delivered and time.monotonic() < deadline:
                for records in (await reader.getmany(timeout_ms=200)).values():
                    delivered.update(r.key.decode() for r in records)
            await reader.stop()
            result["vouchers_of_the_erased"] = len(set(erased) & delivered)

            async def ledger() -> dict:
                return (await c.get(f"{url['issuance']}/v1/campaigns/{CAMPAIGN['id']}/budget")).json()

            before = await ledger()

            async def carts() -> None:  # the load: other customers' carts, each a voucher
                t0 = time.perf_counter()
                for i, cid in enumerate(load):
                    delay = t0 + i / load_rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await producer.send(kafka.topic("cart-abandoned"), key=cid.encode(), value=cart(cid))

            loading = asyncio.create_task(carts())
            await asyncio.sleep(min(2.0, seconds / 4))

            per_service: dict[str, list[float]] = {s: [] for s in SERVICES}

            async def erase(cid: str) -> float:
                t0 = time.perf_counter()
                r = await c.post(f"{url['consent']}/v1/privacy/erasures", json={"customer_id": cid})
                assert r.status_code == 202, r.text
                rid = r.json()["request_id"]
                while True:
                    body = (await c.get(f"{url['consent']}/v1/privacy/erasures/{rid}")).json()
                    if body["status"] == "completed":
                        asked = datetime.fromisoformat(body["requested_at"])
                        for s, progress in body["services"].items():
                            per_service[s].append(
                                (datetime.fromisoformat(progress["completed_at"]) - asked).total_seconds() * 1000)
                        return (time.perf_counter() - t0) * 1000
                    await asyncio.sleep(0.05)

            t0 = time.perf_counter()
            took = await asyncio.wait_for(asyncio.gather(*(erase(cid) for cid in erased)), timeout=600)
            result["all_completed_s"] = round(time.perf_counter() - t0, 2)
            result.update(p50_ms=round(percentile(took, 50), 1), p99_ms=round(percentile(took, 99), 1),
                          max_ms=round(max(took), 1),
                          per_service_p50_ms={s: round(percentile(v, 50), 1) for s, v in per_service.items() if v})
            await loading
            result["load_achieved_carts_per_s"] = round(len(load) / (time.perf_counter() - t0 + 2), 1)
            async with datakeys.reader() as keys:
                result["data_keys_left_of_the_erased"] = await keys.count_of(erased)
            await asyncio.sleep(3)  # the load's last vouchers
            after = await ledger()
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                         server_settings={"search_path": env["ISSUANCE_SCHEMA_NAME"]})
            active = await conn.fetchval("SELECT count(*) FROM vouchers WHERE status = 'active'")
            revoked = await conn.fetchval("SELECT count(*) FROM vouchers WHERE status = 'revoked'")
            await conn.close()
            # The budget stays whole: nothing spent moves, and what is reserved is exactly the
            # active vouchers' (the erased customers' unredeemed vouchers are revoked and released).
            result["budget"] = {"spent_before": before["spent"], "spent_after": after["spent"],
                                "reserved_after": after["reserved"], "active_vouchers": active,
                                "revoked_vouchers": revoked,
                                "invariant_holds": after["spent"] == before["spent"] and
                                after["reserved"] == active * CAMPAIGN["offer"]["amount"]["amount"]}
    finally:
        await clean_up(bootstrap, prefix, env)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec-events", type=int, default=20_000)
    parser.add_argument("--erasures", type=int, default=100)
    parser.add_argument("--load-rate", type=int, default=200, help="other customers' carts per second meanwhile")
    parser.add_argument("--seconds", type=float, default=20, help="how long the load lasts")
    args = parser.parse_args()
    result = {"benchmark": "privacy", "codec": codec(args.codec_events),
              "keystore": asyncio.run(keystore(500, 10)),
              "erasure": asyncio.run(erasures(args.erasures, args.load_rate, args.seconds))}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
