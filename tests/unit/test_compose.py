"""docker-compose.yml as `docker compose` reads it: loaded by compose-go (the library Docker's
compose loads it with; `make test` builds deploy/compose-check), then held to what a user of
`docker compose up --scale issuance=3` needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("consent", "segmentation", "issuance", "analytics")
REQUIRED = ("VOUCHERSTREAM_DATA_KEY", "CONSENT_PSEUDONYM_KEY", "SEGMENTATION_PSEUDONYM_KEY", "ISSUANCE_CODE_HASH_KEY",
            "ISSUANCE_CODE_SEAL_KEY", "ISSUANCE_PSEUDONYM_KEY")
# Settings docs/operations.md names that are not a service's: the CLI's `db grant` password.
NOT_A_SERVICE_SETTING = {"VOUCHERSTREAM_DB_ROLE_PASSWORD"}
DRAIN_S = 30  # shared/service.py: in-flight batches and requests get this long on SIGTERM


def load(**env: str) -> subprocess.CompletedProcess:
    exe = os.environ.get("VOUCHERSTREAM_COMPOSE_CHECK", "")
    assert exe and Path(exe).exists(), "make test builds compose-check; VOUCHERSTREAM_COMPOSE_CHECK names it"
    clean = {k: v for k, v in os.environ.items() if not re.match(r"(VOUCHERSTREAM|CONSENT|SEGMENTATION|ISSUANCE|"
                                                                  r"ANALYTICS)_", k)}
    return subprocess.run([exe, str(ROOT / "docker-compose.yml")], env=clean | env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


@pytest.fixture(scope="module")
def project() -> dict:
    done = load(**{name: "k" * 44 for name in REQUIRED})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", REQUIRED)
def test_each_secret_is_required(name):
    done = load(**{other: "k" * 44 for other in REQUIRED if other != name})
    assert done.returncode == 1
    assert f"required variable {name} is missing a value" in done.stderr


def test_services_scale_without_fixed_host_ports_and_outlive_their_drain(project):
    for name in SERVICES:
        service = project["services"][name]
        for port in service.get("ports", []):
            assert not port.get("published"), f"{name} publishes a fixed host port: --scale {name}=3 would clash"
            assert port.get("host_ip") == "127.0.0.1"
        grace = service["stop_grace_period"]
        assert _seconds(grace) > DRAIN_S, f"{name}: stop grace {grace} is not longer than the {DRAIN_S} s drain"


def test_every_setting_the_operations_guide_names_reaches_the_services(project):
    named = set(re.findall(r"\b(?:VOUCHERSTREAM|CONSENT|SEGMENTATION|ISSUANCE|ANALYTICS)_[A-Z0-9_]+",
                           (ROOT / "docs/operations.md").read_text())) - NOT_A_SERVICE_SETTING
    assert len(named) > 20
    for name in SERVICES:
        env = project["services"][name]["environment"]
        wanted = {s for s in named if s.startswith("VOUCHERSTREAM_") or s.startswith(name.upper() + "_")}
        assert wanted <= set(env), f"{name} is not passed {sorted(wanted - set(env))}"
        assert f"{name.upper()}_KAFKA_USERNAME" in env and f"{name.upper()}_POSTGRES_DSN" in env


def test_the_campaigns_job_makes_its_own_short_lived_key(project):
    job = project["services"]["campaigns"]
    script = " ".join(job["command"])
    assert "voucherstream keys create" in script and "--expires-in-days" in script and "campaigns load" in script
    assert "VOUCHERSTREAM_POSTGRES_DSN" in job["environment"], "the key is written to issuance's schema"
    assert project["services"]["issuance"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_prometheus_discovers_every_replica():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    names = {n for sd in job["dns_sd_configs"] for n in sd["names"]}
    assert names == set(SERVICES) and "static_configs" not in job


def test_an_empty_setting_means_the_default(monkeypatch):
    """Compose and the chart pass every setting, most of them empty."""
    from services.issuance.settings import IssuanceSettings

    for name in ("ISSUANCE_CODE_HASH_PREVIOUS_KEYS", "ISSUANCE_POSTGRES_DSN", "ISSUANCE_HTTP_WORKERS",
                 "ISSUANCE_KAFKA_USERNAME", "VOUCHERSTREAM_KAFKA_DLQ_REPLICATION_FACTOR",
                 "VOUCHERSTREAM_DATA_PREVIOUS_KEYS", "VOUCHERSTREAM_KAFKA_SSL_CAFILE"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("VOUCHERSTREAM_ENVIRONMENT", "development")
    s = IssuanceSettings()
    assert s.code_hash_previous_keys == [] and s.postgres_dsn is None and s.http_workers == 1
    assert s.kafka.dlq_replication_factor is None and s.data.previous_keys == [] and s.kafka.sasl_username == ""


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    assert match, text
    return timedelta(minutes=int(match.group(1) or 0), seconds=float(match.group(2) or 0)).total_seconds()
