"""The short fault-tolerance run (`make chaos` is the long one): the four services as their own
processes under a steady shop load while they are killed with -9, paused past their session
timeout, joined by a second instance, and the broker and the database are restarted — then every
check against the shop's ground truth. See tests/chaos/harness.py for the checks."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from bench.common import ROOT

pytestmark = [pytest.mark.chaos, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(900)]


async def test_every_fault_kind_nothing_lost_nothing_twice(tmp_path):
    out = tmp_path / "result.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.chaos.harness", "--short", "--json", str(out), cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        text, _ = await asyncio.wait_for(proc.communicate(), timeout=900)
    except TimeoutError:
        proc.kill()
        raise
    report = text.decode(errors="replace")
    assert out.exists(), report[-4000:]
    result = json.loads(out.read_text())
    kinds = {f["kind"] for f in result["faults"]}
    assert kinds == {"kill", "pause", "extra", "broker", "postgres"}, kinds
    failed = {name: c for name, c in result["checks"].items() if not c["ok"]}
    assert not failed, json.dumps(failed, indent=1, default=str) + "\n" + report[-3000:]
    assert proc.returncode == 0, report[-3000:]
