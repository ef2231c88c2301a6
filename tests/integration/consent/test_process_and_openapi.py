"""The consent service as users run it — ``python -m services.consent`` — answers on HTTP, serves
its OpenAPI document, refuses oversized bodies unread, survives a schemathesis run without a single 5xx or off-schema answer, and
stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

from bench.common import free_port
from tests.support import create_api_key, schemathesis, unique, wait_for

ROOT = Path(__file__).resolve().parents[3]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_the_served_openapi_survives_schemathesis_and_sigterm_stops_the_process(kafka, tmp_path):
    port = free_port()
    schema = unique("test_consent_")
    env = os.environ | {"PYTHONPATH": str(ROOT), "CONSENT_HTTP_PORT": str(port), "CONSENT_SCHEMA_NAME": schema,
                        "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix}
    log = open(tmp_path / "consent.log", "wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.consent", cwd=ROOT, env=env,
                                                stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            async def ready():
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_for(ready, timeout=30, what="the service to be ready")
            assert (await client.get("/v1/privacy/register")).status_code == 401
            key = await create_api_key(schema)
            client.headers["Authorization"] = f"Bearer {key}"
            assert (await client.get("/v1/privacy/register")).status_code == 200
            spec = (await client.get("/openapi.json")).json()
            assert "/v1/privacy/erasures" in spec["paths"] and "/v1/consents" in spec["paths"]
            metrics = (await client.get("/metrics")).text
            assert "voucherstream_consent_propagation_seconds" in metrics
            # The process's own figures, for memory limits and CPU autoscaling (the chart's).
            rss = next(float(line.split()[1]) for line in metrics.splitlines()
                       if line.startswith("process_resident_memory_bytes "))
            assert abs(rss / 1024 - rss_kb(proc.pid)) < 50_000 and "python_gc_objects_collected_total" in metrics
            # Bodies are bounded before anything reads them: 20 bodies of 10 MB, announced or
            # streamed without a length, are refused and the process does not grow.
            before = rss_kb(proc.pid)
            huge = b"{" + b" " * (10 * 1024 * 1024) + b"}"

            async def streamed():
                for j in range(0, len(huge), 65536):
                    yield huge[j:j + 65536]

            for i in range(20):
                content = huge if i % 2 else streamed()
                answer = await client.post("/v1/consents", content=content, headers={"content-type": "application/json"})
                assert answer.status_code == 413, answer.text
            grown = rss_kb(proc.pid) - before
            assert grown < 5 * 1024, f"the process grew {grown} kB while refusing 200 MB of bodies"

        code, report = await schemathesis(base, key, max_time=30, env=env)
        assert code == 0, report[-6000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 40)
        log.close()
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status says "SIGTERM".
    assert code in (0, -signal.SIGTERM), (tmp_path / "consent.log").read_text()[-3000:]
    assert "service stopped" in (tmp_path / "consent.log").read_text()
