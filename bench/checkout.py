"""Checkout load on loopback: validate and redeem p50/p99 at a constant 1,000 requests/s (on the
native routes and on the Voucherify-compatible ones) and the maximum sustained rate, next to a
trivial endpoint of the same server (/healthz) and a raw PostgreSQL single-row UPDATE (pgbench)
on the same machine, in the same run.

The load comes from vegeta (an open-loop, constant-rate generator written in Go; `make
bench-checkout` installs it from the Go module proxy into ~/.cache/voucherstream/bin), so the
Python server does not share its interpreter with the client.

    python -m bench.checkout --rate 1000 --seconds 10
    python -m bench.checkout --rate 1000 --seconds 10 --stack 50   # beside the whole stack, as `make run`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import orjson

from bench.common import analyze, clean_up, found, free_port, local_broker_age_s, scratch, service_process
from bench.pipeline import fleet_env
from shared import auth, topics
from shared.settings import KafkaSettings, PostgresSettings

VEGETA = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voucherstream" / "bin" / "vegeta"
CAMPAIGN = {"id": "load", "name": "load", "segment": "none", "currency": "USD",
            "offer": {"kind": "fixed_amount", "amount": {"amount": 100, "currency": "USD"}},
            "validity": {"days_after_issue": 30}, "budget": {"limit": {"amount": 10**12, "currency": "USD"},
                                                               "per_customer": None}}


def vegeta(targets: list[dict], rate: int, seconds: float, workdir: Path) -> dict:
    exe = shutil.which("vegeta") or str(VEGETA)
    if not Path(exe).exists():
        raise SystemExit("vegeta is not installed: make bench-checkout installs it")
    tfile = workdir / f"targets-{uuid.uuid4().hex[:6]}.jsonl"
    tfile.write_bytes(b"\n".join(orjson.dumps(t) for t in targets) + b"\n")
    attack = subprocess.run([exe, "attack", "-format=json", f"-targets={tfile}", f"-rate={rate}/s",
                             f"-duration={seconds}s", "-timeout=10s", "-max-workers=2000"],
                            capture_output=True, check=True)
    (workdir / f"{tfile.stem}.results.bin").write_bytes(attack.stdout)  # vegeta encode/plot reads these
    report = subprocess.run([exe, "report", "-type=json"], input=attack.stdout, capture_output=True, check=True)
    r = json.loads(report.stdout)
    lat = r["latencies"]
    return {"offered_per_s": rate, "throughput_per_s": round(r["throughput"], 1),
            "success_ratio": round(r["success"], 4), "p50_ms": round(lat["50th"] / 1e6, 2),
            "p99_ms": round(lat["99th"] / 1e6, 2), "max_ms": round(lat["max"] / 1e6, 2),
            "status_codes": r["status_codes"]}


def target(url: str, key: str, body: dict | None = None, headers: dict | None = None, method: str = "POST") -> dict:
    h = {"Authorization": [f"Bearer {key}"], "Content-Type": ["application/json"]}
    for k, v in (headers or {}).items():
        h[k] = [v]
    t = {"method": method, "url": url, "header": h}
    if body is not None:
        t["body"] = base64.b64encode(orjson.dumps(body)).decode()
    return t


def pgbench_update(seconds: int = 10, clients: int = 10, rate: int | None = None, hot: bool = False) -> dict:
    """Raw PostgreSQL single-row UPDATE transactions (pgbench, a custom one-line script); ``hot``:
    every client updates the same row, as every redemption of one campaign updates its ledger."""
    exe = shutil.which("pgbench") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None)
    if exe is None:
        raise SystemExit("pgbench not found (Debian's postgresql-contrib)")
    dsn = PostgresSettings().dsn.get_secret_value()
    table = f"bench_rows_{uuid.uuid4().hex[:6]}"
    subprocess.run(["psql", dsn, "-qc", f"CREATE TABLE {table} (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);"
                    f" INSERT INTO {table} SELECT g FROM generate_series(1, 10000) g;"], check=True)
    script = Path(tempfile.mkstemp(suffix=".sql")[1])
    script.write_text(f"\\set id random(1, {1 if hot else 10000})\nUPDATE {table} SET n = n + 1 WHERE id = :id;\n")
    try:
        args = [str(exe), "-n", "-f", str(script), "-c", str(clients), "-j", "2", "-T", str(seconds), dsn]
        if rate:
            args[1:1] = ["-R", str(rate)]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        tps = float(found(r"tps = ([\d.]+)", out, "pgbench's tps"))
        avg = float(found(r"latency average = ([\d.]+) ms", out, "pgbench's average latency"))
        return {"tps": round(tps, 1), "latency_avg_ms": avg}
    finally:
        subprocess.run(["psql", dsn, "-qc", f"DROP TABLE {table}"], check=False)
        script.unlink()


async def writer_totals(client: httpx.AsyncClient) -> dict[str, float]:
    """The redemption writer's histograms' sums and counts, from the service's /metrics."""
    text = (await client.get("/metrics")).text
    wanted = ("voucherstream_redemption_batch_size_sum", "voucherstream_redemption_batch_size_count",
              "voucherstream_redemption_write_seconds_sum")
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(wanted)}


def writer_stats(before: dict[str, float], after: dict[str, float]) -> dict:
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    writes = d.get("voucherstream_redemption_batch_size_count", 0)
    if not writes:
        return {"writes": 0}
    return {"writes": int(writes),
            "mean_batch": round(d["voucherstream_redemption_batch_size_sum"] / writes, 1),
            "mean_write_ms": round(1000 * d["voucherstream_redemption_write_seconds_sum"] / writes, 2)}


async def start_stack(stack: contextlib.AsyncExitStack, prefix: str, env: dict[str, str],
                      workdir: Path) -> dict[str, str]:
    """The setting of `make run`: consent, segmentation and analytics beside issuance (each on its
    own schema and this run's topics); returns the environment issuance is to run with."""
    ports, fleet = fleet_env(prefix, "stack")
    for s in ("consent", "segmentation", "analytics"):
        await stack.enter_async_context(service_process(s, fleet, ports[s], workdir / f"{s}.log"))
    return fleet | env


async def start_demo(stack: contextlib.AsyncExitStack, env: dict[str, str], key: str, workdir: Path,
                     demo_rate: float) -> None:
    """The reference campaigns loaded and the shop simulator playing at ``demo_rate``, as `make run`."""
    urls = {s: f"http://127.0.0.1:{env[f'{s.upper()}_HTTP_PORT']}" for s in ("issuance", "analytics")}
    for s in ("consent", "segmentation", "issuance", "analytics"):
        conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                     server_settings={"search_path": env[f"{s.upper()}_SCHEMA_NAME"]})
        await auth.create_key(conn, "bench", list(auth.SCOPES), key)
        await conn.close()
    run_env = os.environ | env | {"VOUCHERSTREAM_API_KEY": key, "VOUCHERSTREAM_ISSUANCE_URL": urls["issuance"]}
    subprocess.run([sys.executable, "-m", "voucherstream.cli", "campaigns", "load", "deploy/campaigns/reference.yaml"],
                   env=run_env, check=True, capture_output=True)
    log = open(workdir / "demo.log", "wb")
    demo = subprocess.Popen([sys.executable, "-m", "tools.demo", "--key", key, "--rate", str(demo_rate),
                             "--issuance-url", urls["issuance"], "--analytics-url", urls["analytics"]],
                            env=run_env, stdout=log, stderr=log)

    def stop() -> None:
        demo.terminate()
        demo.wait(30)
        log.close()

    stack.callback(stop)


async def run(rate: int, seconds: float, max_rate: int, workers: int, pg_seconds: int = 10,
              stack_rate: float | None = None) -> dict:
    bootstrap = KafkaSettings().bootstrap
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    await topics.ensure_topics(bootstrap, prefix, report=lambda *_: None)
    schema = f"bench_checkout_{uuid.uuid4().hex[:8]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"ISSUANCE_HTTP_PORT": str(port), "ISSUANCE_SCHEMA_NAME": schema, "ISSUANCE_LOG_LEVEL": "WARNING",
           "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": prefix, "VOUCHERSTREAM_POSTGRES_POOL_MAX": "20", "VOUCHERSTREAM_POSTGRES_POOL_MIN": "20",
           "ISSUANCE_FAILED_ATTEMPTS_BURST": "1000000000", "ISSUANCE_HTTP_WORKERS": str(workers)}
    workdir = scratch("bench-checkout-")
    result: dict = {"benchmark": "checkout", "http_workers": workers,
                    "setting": "issuance alone" if stack_rate is None else
                    f"the stack as make run runs it: four services, the shop simulator at {stack_rate:g} events/s"}
    try:
        async with contextlib.AsyncExitStack() as stack:
            if stack_rate is not None:
                env = await start_stack(stack, prefix, env, workdir)
            await stack.enter_async_context(service_process("issuance", env, port, workdir / "issuance.log"))
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(), server_settings={"search_path": schema})
            _, key = await auth.create_key(conn, "bench", ["checkout", "marketing"])
            await conn.close()
            if stack_rate is not None:
                await start_demo(stack, env, key, workdir, stack_rate)
            needed = 2 * int(rate * seconds) + int(max_rate * 5) + 1800
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
                assert (await c.post("/v1/campaigns", json=CAMPAIGN)).status_code == 201
                codes: list[str] = []
                started = time.perf_counter()
                while len(codes) < needed:
                    r = await c.post("/v1/campaigns/load/partner-codes",
                                     json={"partner": "bench", "count": min(50_000, needed - len(codes))})
                    codes += [row["code"] for row in csv.DictReader(io.StringIO(r.text))]
                result["partner_codes"] = {"count": len(codes),
                                           "per_s": round(len(codes) / (time.perf_counter() - started))}
            await analyze([schema])  # the codes just written, as autovacuum would within a minute
            order = {"amount": {"amount": 5000, "currency": "USD"}, "items": []}
            loop = asyncio.get_running_loop()

            def attack(targets, r, s):
                return loop.run_in_executor(None, vegeta, targets, r, s, workdir)

            health = [target(f"{base}/healthz", key, method="GET")]
            validate = [target(f"{base}/v1/validations", key, {"code": codes[0], "customer_id": "c-1", "order": order})]
            redeem_codes = iter(codes[1:])

            def redeem_targets(n):
                return [target(f"{base}/v1/redemptions", key, {"code": next(redeem_codes), "customer_id": f"c-{i}",
                                                               "order": order}, {"Idempotency-Key": uuid.uuid4().hex})
                        for i in range(n)]

            # Each endpoint is warmed up first (2 s at 200/s: the pools open their connections,
            # statements get prepared), so what is measured is the steady state.
            await attack(health, 200, 2)
            result["trivial_endpoint_at_rate"] = await attack(health, rate, seconds)
            await attack(validate, 200, 2)
            result["validate_at_rate"] = await attack(validate, rate, seconds)
            # The same two requests through the Voucherify-compatible routes, as its SDK sends them.
            _, app_id, token = key.split("_", 2)
            vf_headers = {"X-App-Id": app_id, "X-App-Token": token, "Authorization": ""}
            vf_order = {"amount": 5000, "items": [{"source_id": "sku-1", "price": 2500, "quantity": 2}]}
            vf_validate = [target(f"{base}/voucherify/v1/validations", key, {
                "redeemables": [{"object": "voucher", "id": codes[0]}], "customer": {"source_id": "c-1"},
                "order": vf_order}, vf_headers)]

            def vf_redeem_targets(n):
                return [target(f"{base}/voucherify/v1/redemptions", key, {
                    "redeemables": [{"object": "voucher", "id": next(redeem_codes)}],
                    "customer": {"source_id": f"c-{i}"}, "order": {**vf_order, "source_id": uuid.uuid4().hex}},
                    vf_headers) for i in range(n)]

            warm = min(2.0, seconds)
            await attack(vf_validate, 200, warm)
            result["voucherify_validate_at_rate"] = await attack(vf_validate, rate, seconds)
            await attack(vf_redeem_targets(int(200 * warm)), 200, warm)
            result["voucherify_redeem_at_rate"] = await attack(vf_redeem_targets(int(rate * seconds)), rate, seconds)
            await attack(redeem_targets(400), 200, 2)
            async with httpx.AsyncClient(base_url=base) as metrics:
                # The redemption writer — how many redemptions each write carried, and how long a
                # write took — when there is one process (each worker answers /metrics with its own).
                before = await writer_totals(metrics)
                result["redeem_at_rate"] = await attack(redeem_targets(int(rate * seconds)), rate, seconds)
                middle = await writer_totals(metrics)
                if workers == 1:
                    result["redeem_at_rate"]["writer"] = writer_stats(before, middle)
                if stack_rate is not None:  # the maximum rates and PostgreSQL's are the other setting's
                    result["broker_age_s"] = local_broker_age_s()
                    return result
                result["trivial_endpoint_max"] = await attack(health, max_rate, 5)
                result["validate_max"] = await attack(validate, max_rate, 5)
                result["redeem_max"] = await attack(redeem_targets(int(max_rate * 5)), max_rate, 5)
                if workers == 1:
                    result["redeem_max"]["writer"] = writer_stats(middle, await writer_totals(metrics))
    finally:
        await clean_up(bootstrap, prefix, env)
    loop = asyncio.get_running_loop()
    result["raw_postgres_update_max"] = await loop.run_in_executor(None, pgbench_update, pg_seconds, 10)
    result["raw_postgres_update_at_rate"] = await loop.run_in_executor(None, lambda: pgbench_update(pg_seconds, 10, rate))
    result["raw_postgres_hot_row_update_max"] = await loop.run_in_executor(
        None, lambda: pgbench_update(pg_seconds, 10, None, hot=True))
    result["ratios"] = {
        "validate_max_to_trivial_max": round(result["validate_max"]["throughput_per_s"]
                                             / result["trivial_endpoint_max"]["throughput_per_s"], 3),
        "redeem_max_to_raw_pg_update_tps": round(result["redeem_max"]["throughput_per_s"]
                                                 / result["raw_postgres_update_max"]["tps"], 3),
        "redeem_max_to_raw_pg_hot_row_tps": round(result["redeem_max"]["throughput_per_s"]
                                                  / result["raw_postgres_hot_row_update_max"]["tps"], 3),
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--max-rate", type=int, default=3000, help="offered load to find the sustained maximum")
    parser.add_argument("--workers", type=int, default=2, help="HTTP worker processes of the issuance service")
    parser.add_argument("--pg-seconds", type=int, default=10, help="length of each pgbench run")
    parser.add_argument("--stack", type=float, default=None, metavar="EVENTS_PER_S",
                        help="run the checkout beside the whole stack as `make run` runs it (the other three "
                             "services, the reference campaigns, the shop simulator at this rate); the maximum "
                             "rates and pgbench are left to the run without it")
    args = parser.parse_args()
    r = asyncio.run(run(args.rate, args.seconds, args.max_rate, args.workers, args.pg_seconds, args.stack))
    # The checkout's targets hold only if they hold on both routes: native and Voucherify-compatible.
    r["targets"] = {"validate_p99_ms": "< 15", "redeem_p99_ms": "< 40"}
    r["targets_met"] = all(r[f"{route}validate_at_rate"]["p99_ms"] < 15 and r[f"{route}redeem_at_rate"]["p99_ms"] < 40
                           and r[f"{route}validate_at_rate"]["success_ratio"] == 1
                           and r[f"{route}redeem_at_rate"]["success_ratio"] == 1 for route in ("", "voucherify_"))
    print(json.dumps(r, indent=2))
    return 0 if r["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
