"""Secrets are required outside development: a service started with a missing, default or short
secret exits with a message that names it and says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.issuance.settings import IssuanceSettings
from shared.settings import DataKeySettings, InsecureSettings, require_safe_settings, secret_problems

ROOT = Path(__file__).resolve().parents[2]
STRONG = "x" * 40
STRONG_DATA = DataKeySettings(key=SecretStr("d" * 40))


def test_development_allows_the_built_in_secrets():
    assert secret_problems(IssuanceSettings(environment="development")) == []


def test_production_names_every_weak_secret():
    s = IssuanceSettings(environment="production", code_hash_key=SecretStr(""), code_seal_key=SecretStr("short"),
                         code_hash_previous_keys=[SecretStr(STRONG), SecretStr("change-me-old")])
    assert secret_problems(s) == [
        "ISSUANCE_CODE_HASH_KEY is not set", "ISSUANCE_CODE_HASH_PREVIOUS_KEYS is a known default",
        "ISSUANCE_CODE_SEAL_KEY is shorter than 32 characters", "ISSUANCE_PSEUDONYM_KEY is a known default",
        "VOUCHERSTREAM_DATA_KEY is a known default"]
    with pytest.raises(InsecureSettings, match="refuses to start: ISSUANCE_CODE_HASH_KEY is not set"):
        require_safe_settings(s)
    require_safe_settings(IssuanceSettings(environment="production", code_hash_key=SecretStr(STRONG),
                                     code_seal_key=SecretStr(STRONG + "1"), pseudonym_key=SecretStr(STRONG + "2"),
                                     data=STRONG_DATA))


@pytest.mark.parametrize("service,secret", [("consent", "CONSENT_PSEUDONYM_KEY"),
                                            ("segmentation", "SEGMENTATION_PSEUDONYM_KEY"),
                                            ("issuance", "ISSUANCE_CODE_HASH_KEY")])
def test_a_service_started_with_default_secrets_exits_with_a_clear_message(service, secret):
    env = {k: v for k, v in os.environ.items() if k != "VOUCHERSTREAM_ENVIRONMENT"} | {
        "PYTHONPATH": str(ROOT), f"{service.upper()}_HTTP_PORT": "1"}  # never served: it must stop first
    proc = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{service} refuses to start" in proc.stderr and f"{secret} is a known default" in proc.stderr
    assert "VOUCHERSTREAM_ENVIRONMENT=development" in proc.stderr


def test_consent_waits_for_every_answering_service_unless_in_development():
    from services.consent.settings import ConsentSettings

    strong = {"pseudonym_key": SecretStr(STRONG), "data": STRONG_DATA}
    assert ConsentSettings(environment="production", **strong).privacy_services == [
        "segmentation", "issuance", "analytics", "consent"]  # from the topic registry
    assert ConsentSettings(environment="production", **strong).problems() == []
    partial = ConsentSettings(environment="production", privacy_services=["consent"], **strong)
    assert partial.problems() == ["CONSENT_PRIVACY_SERVICES leaves out segmentation, issuance, analytics (exports "
                                  "and erasures would complete without them)"]
    assert ConsentSettings(environment="development", privacy_services=["consent"]).problems() == []
