"""`make bench-smoke`: every step of `make bench` at tiny sizes, so the benchmark itself cannot
rot between releases — each step runs, prints its JSON, and every line of the table gets a value."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from bench import all as bench_all
from bench.common import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(600)]


async def test_every_benchmark_step_runs_and_fills_the_table(tmp_path, secured_cluster):
    """(secured_cluster: the pipeline_cluster step runs on the session's cluster instead of
    starting its own.)"""
    out = tmp_path / "smoke.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.all", "--smoke", "--json", str(out), cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    text, _ = await asyncio.wait_for(proc.communicate(), timeout=900)
    report = text.decode(errors="replace")
    assert proc.returncode == 0, report[-4000:]
    results = json.loads(out.read_text())
    assert results["_failed"] == [], report[-4000:]
    assert set(bench_all.STEPS) <= set(results), sorted(results)
    rows = bench_all.rows(results)
    assert len(rows) >= 25, rows
    empty = [figure for figure, value, *_ in rows if value in ("–", "", "nan")]
    assert not empty, f"figures without a value: {empty}"
    assert results["pipeline"]["events_per_s_end_to_end"] > 0
    assert results["pipeline_cluster"]["events_per_s_end_to_end"] > 0 and "SASL_SSL" in results["pipeline_cluster"]["kafka"]
    assert results["checkout"]["redeem_at_rate"]["success_ratio"] == 1
    assert results["memory"]["samples"], "memory was sampled while the events went through"
    erasure = results["privacy"]["erasure"]
    assert erasure["budget"]["invariant_holds"] and erasure["data_keys_left_of_the_erased"] == 0, erasure
