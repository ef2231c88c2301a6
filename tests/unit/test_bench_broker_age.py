"""The checkout bench records how long the local broker has run: read from the local stack's pid
file and the process table, nothing when the broker is not the local stack's."""

from __future__ import annotations

import os
import subprocess

from bench.common import local_broker_age_s


def test_the_age_is_the_process_age_of_the_pid_in_the_state_dir(tmp_path, monkeypatch):
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "pid").write_text(f"{os.getpid()}\n")  # this test's process stands in for the broker
    monkeypatch.setenv("VOUCHERSTREAM_STATE_DIR", str(tmp_path))
    age = local_broker_age_s()
    assert age is not None
    elapsed = int(subprocess.run(["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True, text=True,
                                 check=True).stdout)
    assert abs(age - elapsed) <= 2


def test_no_age_without_a_local_broker(tmp_path, monkeypatch):
    monkeypatch.setenv("VOUCHERSTREAM_STATE_DIR", str(tmp_path))
    assert local_broker_age_s() is None
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "pid").write_text("not a pid")
    assert local_broker_age_s() is None
