"""The short fault-tolerance run (`make chaos` is the long one): the four services as their own
processes under a steady shop load while they are killed with -9, paused past their session
timeout, joined by a second instance, and the broker and the database are restarted — then every
check against the shop's ground truth. See tests/chaos/harness.py for the checks."""

from __future__ import annotations

import json

import pytest

from tests.support import fault_run

pytestmark = [pytest.mark.chaos, pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(900)]


async def test_every_fault_kind_nothing_lost_nothing_twice(tmp_path):
    result, report, status = await fault_run(tmp_path, "--short", timeout=900)
    kinds = {f["kind"] for f in result["faults"]}
    assert kinds == {"kill", "pause", "extra", "broker", "postgres"}, kinds
    failed = {name: c for name, c in result["checks"].items() if not c["ok"]}
    assert not failed, json.dumps(failed, indent=1, default=str) + "\n" + report
    assert status == 0, report
