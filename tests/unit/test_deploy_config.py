import shutil
import subprocess
from pathlib import Path

import yaml

from services.analytics.stats import burn_rate, crossed, time_to_exhaustion, wilson

ROOT = Path(__file__).resolve().parents[2]


def promtool() -> str:
    exe = shutil.which("promtool")
    assert exe, "promtool comes with Debian's prometheus package (make test installs it)"
    return exe


def test_promtool_accepts_the_alert_rules_and_the_scrape_configs():
    done = subprocess.run([promtool(), "check", "rules", str(ROOT / "deploy/prometheus/alerts.yml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout
    for name in ("prometheus.yml", "prometheus.local.yml"):
        done = subprocess.run([promtool(), "check", "config", str(ROOT / "deploy/prometheus" / name)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_when_it_should_and_only_then():
    """promtool's unit tests of the rules (deploy/prometheus/alerts.test.yml): service down, outbox
    backlog, checkout p99, consumer lag, dead letters, budget, erasure and consent holds; every
    alert of alerts.yml has a test."""
    done = subprocess.run([promtool(), "test", "rules", str(ROOT / "deploy/prometheus/alerts.test.yml")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    tests = (ROOT / "deploy/prometheus/alerts.test.yml").read_text()
    for rule in yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"][0]["rules"]:
        assert f"alertname: {rule['alert']}" in tests, f"alert {rule['alert']} has no promtool test"


def test_wilson_intervals_contain_the_rate_and_narrow_with_more_trials():
    low, high = wilson(5, 10)
    assert low < 0.5 < high
    low2, high2 = wilson(500, 1000)
    assert high2 - low2 < high - low
    assert wilson(0, 0) == (0.0, 0.0) and wilson(0, 20)[0] == 0.0


def test_thresholds_burn_rate_and_exhaustion():
    assert crossed(1000, 800, set()) == [50, 80]
    assert crossed(1000, 1000, {50, 80}) == [100]
    assert burn_rate([(0.0, 0), (10.0, 500)]) == 50.0
    assert time_to_exhaustion(500, 50.0) == 10.0 and time_to_exhaustion(500, 0.0) is None
