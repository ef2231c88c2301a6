"""The whole pipeline: shop event (``cart-abandoned``) → segmentation → issuance →
``delivery-requested``, with the four services as their own processes. Consent goes through the
consent service first. Measures shop events/s at saturation and event-to-delivery latency at a
steady rate, with consent changes of other customers flowing meanwhile (``--consent-share``), and
what consent ordering adds to it (the consent marks read by segmentation, the hold at issuance).

    python -m bench.pipeline --saturation 10000 --rate 1000 --seconds 10
    python -m bench.pipeline --saturation 10000 --rate 0 --instances 2    # two workers per service
    python -m bench.pipeline --saturation 10000 --rate 0 --profile 8      # py-spy each service while saturated (8 s at most)
    python -m bench.pipeline --saturation 10000 --rate 0 --cluster        # on the secured 3-broker cluster

The customer-keyed topics get ``VOUCHERSTREAM_CUSTOMER_PARTITIONS`` partitions (6 by default; set it
in the environment to measure 12). ``rss_mb`` is each service's resident memory at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import (
    analyze,
    cpu_seconds,
    cpu_share,
    drop_schemas,
    free_port,
    histogram,
    histogram_quantile,
    percentile,
    samples,
    scratch,
    service_process,
)
from shared import auth, topics
from shared import events as ev
from shared.kafka import start_producer
from shared.settings import KafkaSettings, PostgresSettings

SERVICES = ("consent", "segmentation", "issuance", "analytics")
CAMPAIGN: dict[str, Any] = {"id": "cart-20", "name": "cart", "segment": "cart-abandoned-300", "currency": "USD",
                            "offer": {"kind": "fixed_amount", "amount": {"amount": 2000, "currency": "USD"}},
                            "validity": {"days_after_issue": 3},
                            "budget": {"limit": {"amount": 10**12, "currency": "USD"}, "per_customer": None},
                            "channels": ["email"]}


def fleet_env(prefix: str, tag: str) -> tuple[dict[str, int], dict[str, str]]:
    """Free ports and the environment for the four services on their own topics and schemas."""
    ports = {s: free_port() for s in SERVICES}
    env = {"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": prefix, "CONSENT_PRIVACY_SERVICES": ",".join(SERVICES)}
    for s in SERVICES:
        env[f"{s.upper()}_HTTP_PORT"] = str(ports[s])
        env[f"{s.upper()}_LOG_LEVEL"] = "WARNING"
        env[f"{s.upper()}_SCHEMA_NAME"] = f"bench_{tag}_{s}_{uuid.uuid4().hex[:6]}"
    return ports, env


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def ordering_metrics(ports: dict[str, int]) -> dict[str, dict[float, float]]:
    async with httpx.AsyncClient() as c:
        seg = (await c.get(f"http://127.0.0.1:{ports['segmentation']}/metrics")).text
        iss = (await c.get(f"http://127.0.0.1:{ports['issuance']}/metrics")).text
    return {"hold": histogram(iss, "voucherstream_issuance_consent_hold_seconds"),
            "marks": histogram(seg, "voucherstream_segmentation_consent_marks_seconds")}


async def loop_metrics(ports: dict[str, int]) -> dict[str, dict]:
    """Each service's consumed batches (count, messages, seconds handling them) and its outbox
    relay's delay histogram, from /metrics."""
    out = {}
    async with httpx.AsyncClient() as c:
        for s, port in ports.items():
            text = (await c.get(f"http://127.0.0.1:{port}/metrics")).text
            total = {n: sum(x.value for x in samples(text, n)) for n in (
                "voucherstream_batch_duration_seconds_count", "voucherstream_batch_duration_seconds_sum",
                "voucherstream_batch_size_messages_sum")}
            out[s] = total | {"delay": histogram(text, "voucherstream_outbox_delay_seconds")}
    return out


def service_batches(before: dict, after: dict, seconds: float) -> dict:
    """Per service over the paced phase: batches handled, mean messages per batch, the share of the
    time its consumer spent handling batches (the rest: fetching, committing, idle) and how long
    its outbox rows waited for the relay (bucket upper bounds, ms)."""
    out = {}
    for s in after:
        a, b = after[s], before[s]
        n = a["voucherstream_batch_duration_seconds_count"] - b["voucherstream_batch_duration_seconds_count"]
        handling = a["voucherstream_batch_duration_seconds_sum"] - b["voucherstream_batch_duration_seconds_sum"]
        messages = a["voucherstream_batch_size_messages_sum"] - b["voucherstream_batch_size_messages_sum"]
        out[s] = {"batches": int(n), "messages_per_batch": round(messages / n, 1) if n else None,
                  "batch_ms": round(handling / n * 1000, 1) if n else None,
                  "handling_share": round(handling / seconds, 2),
                  "outbox_delay_p50_ms_at_most": histogram_quantile(b["delay"], a["delay"], 50) * 1000,
                  "outbox_delay_p99_ms_at_most": histogram_quantile(b["delay"], a["delay"], 99) * 1000}
    return out


def ordering_cost(before: dict, after: dict, consent_share: float) -> dict:
    """What consent ordering added to the paced phase: the consent-marks read per segmentation
    batch and each entry's hold at issuance (bucket upper bounds, ms)."""
    held = {b: after["hold"].get(b, 0) - before["hold"].get(b, 0) for b in after["hold"]}
    total = held.get(float("inf"), 0)
    at_once = held.get(0.0, 0)
    return {"consent_changes_share": consent_share,
            "entries": int(total), "held_share": round(1 - at_once / total, 3) if total else None,
            "hold_p50_ms_at_most": histogram_quantile(before["hold"], after["hold"], 50) * 1000,
            "hold_p99_ms_at_most": histogram_quantile(before["hold"], after["hold"], 99) * 1000,
            "marks_read_p50_ms_at_most": histogram_quantile(before["marks"], after["marks"], 50) * 1000,
            "marks_read_p99_ms_at_most": histogram_quantile(before["marks"], after["marks"], 99) * 1000}


async def run(saturation: int, rate: int, seconds: float, instances: int = 1, profile_s: float = 0,
              consent_share: float = 0.1, cluster=None) -> dict:
    """``cluster``: on the secured three-broker cluster (bench.cluster), the shop publishing as
    ``shop``, each service as itself, the bench reading as ``admin``."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    if cluster:
        from bench.cluster import prepare

        kafka = await prepare(cluster, prefix)
        shop = cluster.settings("shop", prefix)
    else:
        kafka = shop = KafkaSettings(topic_prefix=prefix)
        await topics.ensure_topics(kafka, prefix, report=lambda *_: None)
    ports, env = fleet_env(prefix, "pipe")
    if cluster:
        env = cluster.service_env() | env
    tmp = scratch("bench-pipeline-")
    paced = int(rate * seconds)
    customers = [f"p-{i}" for i in range(saturation + paced)]
    result: dict = {"benchmark": "pipeline", "events_saturation": saturation, "paced_rate_per_s": rate,
                    "kafka": "3 brokers, SASL_SSL, 3 replicas, min.insync.replicas 2" if cluster else
                    "1 broker, plaintext, 1 replica",
                    "instances_per_service": instances, "customer_partitions": topics.CUSTOMER_PARTITIONS}
    procs: dict[str, list] = {s: [] for s in SERVICES}
    try:
        async with contextlib.AsyncExitStack() as stack:
            for s in SERVICES:
                for i in range(instances):
                    port = ports[s] if i == 0 else free_port()
                    procs[s].append(await stack.enter_async_context(
                        service_process(s, env | {f"{s.upper()}_HTTP_PORT": str(port)}, port, tmp / f"{s}{i}.log")))
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                         server_settings={"search_path": env["ISSUANCE_SCHEMA_NAME"]})
            _, key = await auth.create_key(conn, "bench", ["marketing"])
            await conn.close()
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as c:
                assert (await c.post(f"http://127.0.0.1:{ports['issuance']}/v1/campaigns", json=CAMPAIGN)).status_code == 201
            producer = await start_producer(shop, "bench-shop", linger_ms=10)
            now = datetime.now(UTC)
            for cid in customers:
                for purpose in ("profiling", "personalized_offers", "email"):
                    e = ev.ConsentChanged(customer_id=cid, purpose=purpose, granted=True, policy_version="v1",
                                          source="bench", occurred_at=now)
                    await producer.send(kafka.topic("consent-changed"), key=cid.encode(), value=ev.encode(e, source="b"))
            await producer.flush()
            arrivals: dict[str, float] = {}
            reader = AIOKafkaConsumer(kafka.topic("delivery-requested"), **kafka.client_options(), group_id=None,
                                      auto_offset_reset="earliest")
            await reader.start()

            async def collect(n: int) -> None:
                while len(arrivals) < n:
                    for records in (await reader.getmany(timeout_ms=100)).values():
                        t = time.perf_counter()
                        for r in records:
                            arrivals.setdefault(r.key.decode(), t)

            # Consent must have reached segmentation and issuance: wait for consent-state to settle.
            consent_reader = AIOKafkaConsumer(kafka.topic("consent-state"), **kafka.client_options(), group_id=None,
                                              auto_offset_reset="earliest")
            await consent_reader.start()
            states: set[str] = set()
            while len(states) < len(customers):
                for records in (await consent_reader.getmany(timeout_ms=200)).values():
                    states.update(r.key.decode() for r in records if not r.key.startswith(b"watermark-"))
            await consent_reader.stop()
            await asyncio.sleep(5)

            def regrant(cid: str) -> bytes:
                return ev.encode(ev.ConsentChanged(customer_id=cid, purpose="email", granted=True, policy_version="v2",
                                                   source="bench", occurred_at=datetime.now(UTC)), source="bench")

            def cart(cid: str) -> bytes:
                return ev.encode(ev.CartAbandoned(cart_id=f"k-{cid}", customer_id=cid, abandoned_at=datetime.now(UTC),
                                                  value=ev.Money(amount=31000, currency="USD")), source="bench")

            schemas = [env[f"{s.upper()}_SCHEMA_NAME"] for s in SERVICES]
            await analyze(schemas)
            names = {p.pid: s for s, ps in procs.items() for p in ps}
            cpu_before = cpu_seconds(names)
            started = time.perf_counter()
            for cid in customers[:saturation]:
                await producer.send(kafka.topic("cart-abandoned"), key=cid.encode(), value=cart(cid))
            await producer.flush()
            saturated = asyncio.Event()
            profiling = asyncio.create_task(profile_services(procs, profile_s, tmp, saturated)) if profile_s else None
            await asyncio.wait_for(collect(saturation), timeout=600)
            saturated.set()
            result["events_per_s_end_to_end"] = round(saturation / (time.perf_counter() - started), 1)
            result["cores_used_saturated"] = cpu_share(cpu_before, cpu_seconds(names), time.perf_counter() - started)
            if profiling:
                result["profile"] = await profiling

            await analyze(schemas)  # the saturated phase filled the tables
            sent: dict[str, float] = {}
            sent_wall: dict[str, float] = {}
            collector = asyncio.create_task(collect(saturation + paced))
            before = await ordering_metrics(ports)
            every = round(1 / consent_share) if consent_share > 0 else 0
            # Encoded before the clock starts and sent in 5 ms ticks: the shop's own cost is not what
            # is measured, and on this machine it shares the cores with the pipeline.
            paced_records: list[tuple[str | None, str, bytes, bytes]] = []  # (paced customer or None, topic, key, value)
            for i, cid in enumerate(customers[saturation:]):
                if every and i % every == 0:
                    # Consent keeps changing elsewhere on the partitions (customers of the saturated
                    # phase), so the consent marks move and the ordering is really exercised.
                    other = customers[i % saturation]
                    paced_records.append((None, kafka.topic("consent-changed"), other.encode(), regrant(other)))
                paced_records.append((cid, kafka.topic("cart-abandoned"), cid.encode(), cart(cid)))
            cpu_before, loops_before = cpu_seconds(names), await loop_metrics(ports)
            t0 = cpu_t0 = time.perf_counter()
            done = i = 0
            while done < len(paced_records):
                due = min(paced, int((time.perf_counter() - t0) * rate) + 1)
                while done < len(paced_records) and (paced_records[done][0] is None or i < due):
                    paced_cid, topic, record_key, value = paced_records[done]
                    if paced_cid is not None:
                        sent[paced_cid] = time.perf_counter()
                        sent_wall[paced_cid] = time.time()
                        i += 1
                    await producer.send(topic, key=record_key, value=value)
                    done += 1
                await asyncio.sleep(max(t0 + i / rate - time.perf_counter(), 0.005))
            result["paced_achieved_per_s"] = round(paced / (time.perf_counter() - t0), 1)
            await asyncio.wait_for(collector, timeout=300)
            if paced:  # (with no paced phase there is nothing to divide by)
                result["cores_used_paced"] = cpu_share(cpu_before, cpu_seconds(names), time.perf_counter() - cpu_t0)
                result["services_paced"] = service_batches(loops_before, await loop_metrics(ports),
                                                           time.perf_counter() - cpu_t0)
                result["consent_ordering"] = ordering_cost(before, await ordering_metrics(ports), consent_share)
                lat = [(arrivals[c] - sent[c]) * 1000 for c in customers[saturation:]]
                result.update(p50_ms=round(percentile(lat, 50), 1), p99_ms=round(percentile(lat, 99), 1),
                              max_ms=round(max(lat), 1))
                result["stages_ms"] = await stages(kafka, customers[saturation:], sent_wall)
                result["p50_ms_by_second"] = [round(percentile(lat[i:i + rate], 50)) for i in range(0, len(lat), rate)]
            result["rss_mb"] = {s: round(sum(rss_mb(p.pid) for p in ps), 1) for s, ps in procs.items()}
            await producer.stop()
            await reader.stop()
    finally:
        await drop_schemas([env[f"{s.upper()}_SCHEMA_NAME"] for s in SERVICES])
        if cluster:
            from bench.cluster import retire

            await retire(kafka)
        else:
            await topics.delete_topics(kafka, prefix)
    return result


async def stages(kafka: KafkaSettings, paced: list[str], sent_wall: dict[str, float]) -> dict:
    """Where the paced phase's time went, from the records' own times (CreateTime, set by the
    sending relay): the shop's send to ``segment-entered`` (segmentation and its relay), from there
    to ``delivery-requested`` (issuance, its consent hold and its relay)."""
    entered = await record_times(kafka, "segment-entered")
    delivered = await record_times(kafka, "delivery-requested")
    out = {}
    for name, pairs in (("cart_to_segment_entered", [(sent_wall[c] * 1000, entered.get(c)) for c in paced]),
                        ("segment_entered_to_delivery", [(entered.get(c), delivered.get(c)) for c in paced])):
        spans = [b - a for a, b in pairs if a is not None and b is not None]
        if spans:
            out[name] = {"p50": round(percentile(spans, 50), 1), "p99": round(percentile(spans, 99), 1)}
    return out


async def record_times(kafka: KafkaSettings, topic: str) -> dict[str, int]:
    """The first record time per key on a topic (read to its end)."""
    reader = AIOKafkaConsumer(**kafka.client_options(), group_id=None, auto_offset_reset="earliest")
    await reader.start()
    try:
        partitions = [TopicPartition(kafka.topic(topic), p) for p in range(topics.topic(topic).partitions)]
        reader.assign(partitions)
        ends = await reader.end_offsets(partitions)
        times: dict[str, int] = {}
        left = sum(ends.values())
        while left > 0:
            for records in (await reader.getmany(timeout_ms=200)).values():
                left -= len(records)
                for r in records:
                    times.setdefault(r.key.decode(), r.timestamp)
        return times
    finally:
        await reader.stop()


async def profile_services(procs: dict[str, list], seconds: float, tmp: Path, over: asyncio.Event) -> dict:
    """Samples every service process with py-spy while the pipeline is saturated (until ``over`` is
    set, for at most ``seconds``); returns each service's hottest functions (share of its samples
    where the function is on top of the stack, i.e. its own time)."""
    exe = Path(sys.executable).with_name("py-spy")
    jobs = {}
    for s, ps in procs.items():
        out = tmp / f"{s}.pyspy.txt"
        jobs[s] = (out, await asyncio.create_subprocess_exec(
            str(exe), "record", "--pid", str(ps[0].pid), "--duration", str(int(seconds)), "--rate", "50",
            "--format", "raw", "--nonblocking", "--output", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(over.wait(), seconds)
    for _, proc in jobs.values():
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes what it has sampled and exits
    report = {}
    for s, (out, proc) in jobs.items():
        await proc.wait()
        report[s] = top_functions(out) if out.exists() else {"error": f"py-spy exited with {proc.returncode}"}
    return report


def top_functions(path: Path, n: int = 6) -> dict:
    """From py-spy's collapsed stacks: the functions that are on top of the stack most often."""
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        leaf = stack.split(";")[-1]
        name = leaf.split(" (")[0] + " (" + leaf.split(" (")[-1].split("/")[-1] if " (" in leaf else leaf
        own[name] = own.get(name, 0) + int(count)
    top = sorted(own.items(), key=lambda kv: -kv[1])[:n]
    return {"samples": total, "top_self": [{"function": f, "share": round(c / total, 3)} for f, c in top]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saturation", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--instances", type=int, default=1, help="processes per service")
    parser.add_argument("--cluster", action="store_true", help="on the secured three-broker cluster "
                        "(deploy/local/cluster.sh, started if down): TLS, SCRAM, ACLs, 3 replicas")
    parser.add_argument("--profile", type=float, default=0, help="py-spy each service while saturated, at most this long")
    parser.add_argument("--consent-share", type=float, default=0.1,
                        help="during the paced phase, one consent change per this many carts' worth (0.1: one per 10)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        cluster = None
        if args.cluster:
            from bench.cluster import running

            cluster = stack.enter_context(running())
        r = asyncio.run(run(args.saturation, args.rate, args.seconds, args.instances, args.profile, args.consent_share,
                            cluster))
    r["targets"] = {"events_per_s_end_to_end": ">= 2000", "p99_ms_at_1000_per_s": "< 250"}
    r["targets_met"] = r["events_per_s_end_to_end"] >= 2000 and r.get("p99_ms", 0) < 250
    print(json.dumps(r, indent=2))
    return 0 if r["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
