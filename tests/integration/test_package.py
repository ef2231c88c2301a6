"""The package as the image installs it (`pip install -c requirements.lock .`, no dev extras):
every command the deploy Jobs run (docker-compose.yml, the Helm chart) starts there. The CLI once
imported a dev-only dependency, so the compose `campaigns` job would have died at import."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JOB_COMMANDS = (["voucherstream", "migrate"], ["voucherstream", "db", "migrate"], ["voucherstream", "acls"],
                ["voucherstream", "keys", "create"], ["voucherstream", "campaigns", "load"],
                ["python", "-m", "shared.topics"])

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    src, env = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("venv")
    # Exactly what the Dockerfile copies before it installs.
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for name in line.split()[1:-1]:
                if (ROOT / name).is_dir():
                    shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / name, src / name)
    venv.create(env, with_pip=True)
    done = subprocess.run([env / "bin" / "pip", "install", "-q", "--no-compile", "-c", "requirements.lock", "."], cwd=src,
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]
    return env / "bin"


@pytest.mark.parametrize("command", JOB_COMMANDS, ids=" ".join)
def test_each_deploy_job_command_starts_in_the_installed_package(installed, command, tmp_path):
    exe = installed / command[0]
    # Outside the source tree, so the installed package is what is imported.
    done = subprocess.run([str(exe), *command[1:], "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={"PATH": f"{installed}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "usage" in done.stdout.lower()
