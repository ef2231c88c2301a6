"""The CLI against the issuance service as users run it: the reference campaigns load, and
100,000 partner codes come out as CSV in under 10 s (Voucherify documents 100,000 in 60 s)."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
import time

import asyncpg

from bench.common import ROOT, free_port, service_process
from services.issuance import codes
from services.issuance.settings import IssuanceSettings


async def cli(*args: str, env: dict) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "voucherstream.cli", *args, cwd=ROOT,
                                                env=os.environ | {"PYTHONPATH": str(ROOT)} | env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode()


async def test_reference_campaigns_load_and_100k_partner_codes_take_under_10_s(kafka, issuance_schema, tmp_path):
    port = free_port()
    env = {"ISSUANCE_SCHEMA_NAME": issuance_schema, "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           "ISSUANCE_HTTP_PORT": str(port), "VOUCHERSTREAM_ISSUANCE_URL": f"http://127.0.0.1:{port}"}
    async with service_process("issuance", env, port, tmp_path / "issuance.log"):
        code, out = await cli("campaigns", "load", str(ROOT / "deploy/campaigns/reference.yaml"), env=env)
        assert code != 0 and "VOUCHERSTREAM_API_KEY" in out  # no key, no campaigns
        code, out = await cli("keys", "create", "--name", "marketing-team", "--scopes", "marketing",
                              "--services", "issuance", "--schema", issuance_schema, "--quiet", env=env)
        assert code == 0, out
        env["VOUCHERSTREAM_API_KEY"] = out.strip().splitlines()[-1]
        code, out = await cli("campaigns", "load", str(ROOT / "deploy/campaigns/reference.yaml"), env=env)
        assert code == 0, out
        assert out.count("created") == 3
        code, out = await cli("campaigns", "load", str(ROOT / "deploy/campaigns/reference.yaml"), env=env)
        assert code == 0 and out.count("replaced") == 3, out
        bad = tmp_path / "bad.yaml"
        bad.write_text("campaigns:\n  - id: x\n    name: y\n")
        code, out = await cli("campaigns", "load", str(bad), env=env)
        assert code == 1 and "422" in out and "segment" in out

        target = tmp_path / "codes.csv"
        started = time.perf_counter()
        code, out = await cli("campaigns", "partner-codes", "cart-20", "--partner", "influencer-ana",
                              "--count", "100000", "--out", str(target), env=env)
        elapsed = time.perf_counter() - started
        assert code == 0, out
    print(f"\n100,000 partner codes through the CLI and the HTTP API: {elapsed:.2f} s")
    rows = list(csv.DictReader(target.open()))
    assert len(rows) == 100_000 and len({r["code"] for r in rows}) == 100_000
    assert all(r["partner"] == "influencer-ana" and r["code"].startswith("CART") for r in rows[:100])
    assert elapsed < 10.0

    # Stored as keyed hashes only, attributed to the partner.
    conn = await asyncpg.connect(IssuanceSettings().postgres.dsn.get_secret_value(),
                                 server_settings={"search_path": issuance_schema})
    try:
        key = IssuanceSettings().code_hash_key.get_secret_value().encode()
        sample = rows[12345]["code"]
        row = await conn.fetchrow("SELECT partner, customer_id, reserved FROM vouchers WHERE code_hash = $1",
                                  codes.code_hash(key, sample))
        assert row["partner"] == "influencer-ana" and row["customer_id"] is None and row["reserved"] == 0
        assert await conn.fetchval("SELECT count(*) FROM vouchers WHERE partner IS NOT NULL") == 100_000
    finally:
        await conn.close()
