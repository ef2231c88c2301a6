"""A broker killed with -9 under 500 shop events/s on the secured cluster, and started again: no
voucher lost or doubled, the budget invariant held, every group back to lag 0 — every check of the
fault run (tests/chaos/harness.py, ``--cluster``) against the shop's ground truth. `make chaos`
runs it longer, with three kills."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from bench.common import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


async def test_a_broker_killed_under_load_loses_and_doubles_nothing(cluster, tmp_path):
    out = tmp_path / "result.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.chaos.harness", "--cluster", "--short", "--rate", "500", "--json", str(out),
        cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        text, _ = await asyncio.wait_for(proc.communicate(), timeout=840)
    except TimeoutError:
        proc.kill()
        raise
    report = text.decode(errors="replace")
    assert out.exists(), report[-4000:]
    result = json.loads(out.read_text())
    assert result["cluster"] and [f["kind"] for f in result["faults"]] == ["broker-kill"], report[-3000:]
    assert sum(result["published"].values()) > 10_000, report[-3000:]
    failed = {name: c for name, c in result["checks"].items() if not c["ok"]}
    assert not failed, json.dumps(failed, indent=1, default=str) + "\n" + report[-3000:]
    assert proc.returncode == 0, report[-3000:]
