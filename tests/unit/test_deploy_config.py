import shutil
import subprocess
from pathlib import Path

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
    assert "SUCCESS: 5 rules found" in done.stdout
    for name in ("prometheus.yml", "prometheus.local.yml"):
        done = subprocess.run([promtool(), "check", "config", str(ROOT / "deploy/prometheus" / name)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


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
