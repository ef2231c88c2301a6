import json
from datetime import UTC, datetime, timedelta

import pytest

from services.consent.ledger import Decision, ErasureMark, check_occurred_at, current_state, superseded_by_erasure
from services.consent.privacy import Part, export_bundle, is_complete, progress, subject_hash
from services.consent.settings import ConsentSettings
from shared.events import ContractError, Purpose

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def d(purpose, granted, minutes, seq, version="v1"):
    return Decision(Purpose(purpose), granted, version, T0 + timedelta(minutes=minutes), seq)


def test_the_latest_decision_by_event_time_wins_per_purpose():
    state = current_state([d("email", True, 0, 1), d("email", False, 10, 2), d("sms", True, 5, 3)])
    assert state[Purpose.EMAIL].granted is False
    assert state[Purpose.SMS].granted is True
    assert state[Purpose.EMAIL].since == T0 + timedelta(minutes=10)


def test_a_late_older_decision_does_not_override_a_newer_one():
    state = current_state([d("profiling", False, 10, 1), d("profiling", True, 0, 2, version="v0")])
    assert state[Purpose.PROFILING].granted is False
    assert state[Purpose.PROFILING].policy_version == "v1"


def test_decisions_at_the_same_instant_are_settled_by_recording_order():
    state = current_state([d("push", True, 0, 7), d("push", False, 0, 8)])
    assert state[Purpose.PUSH].granted is False


def test_no_decisions_means_no_consent_at_all():
    assert current_state([]) == {}


def test_decisions_published_before_an_erasure_cannot_bring_the_customer_back_whatever_their_date():
    erased = T0 + timedelta(days=1)
    mark = ErasureMark(changed_offset=100, requested_at=erased)
    future = erased + timedelta(days=365 * 900)
    # Published before the erasure (below the log end it saw): erased, however it is dated.
    assert superseded_by_erasure(mark, offset=99, event_erased=False, occurred_at=future)
    # One of the erased decisions, re-published at a new offset or retried over HTTP.
    assert superseded_by_erasure(mark, offset=500, event_erased=True, occurred_at=T0)
    assert superseded_by_erasure(mark, offset=None, event_erased=True, occurred_at=T0)
    # Received after the erasure and made after it: a returning customer's decision.
    later = erased + timedelta(seconds=1)
    assert not superseded_by_erasure(mark, offset=100, event_erased=False, occurred_at=later)
    assert not superseded_by_erasure(mark, offset=None, event_erased=False, occurred_at=later)
    # Received after it but saying it was made before: it belongs to the erased past.
    assert superseded_by_erasure(mark, offset=100, event_erased=False, occurred_at=T0)
    assert superseded_by_erasure(mark, offset=None, event_erased=False, occurred_at=T0)
    assert not superseded_by_erasure(None, offset=1, event_erased=False, occurred_at=T0)
    # An erasure recorded before marks were kept has only event time.
    old = ErasureMark(changed_offset=None, requested_at=erased)
    assert superseded_by_erasure(old, offset=5, event_erased=False, occurred_at=T0)
    assert not superseded_by_erasure(old, offset=5, event_erased=False, occurred_at=later)


def test_a_decision_dated_beyond_the_allowed_skew_breaks_the_contract():
    check_occurred_at(T0 + timedelta(seconds=300), T0, 300)
    check_occurred_at(T0 - timedelta(days=30), T0, 300)
    with pytest.raises(ContractError) as err:
        check_occurred_at(T0 + timedelta(seconds=301), T0, 300)
    assert err.value.reason == "occurred_in_future"


def test_a_request_completes_only_when_every_expected_service_answered():
    parts = {"consent": Part("consent", T0, {}), "stranger": Part("stranger", T0, {})}
    assert not is_complete(["consent", "issuance"], parts)
    assert progress(["consent", "issuance"], parts) == {
        "consent": {"status": "completed", "completed_at": T0.isoformat()},
        "issuance": {"status": "pending", "completed_at": None},
    }
    parts["issuance"] = Part("issuance", T0, {"vouchers": 2})
    assert is_complete(["consent", "issuance"], parts)
    bundle = export_bundle("r1", "c1", ["consent", "issuance"], parts, T0)
    assert set(bundle["services"]) == {"consent", "issuance"}


def test_subject_hashes_are_keyed_and_stable():
    assert subject_hash(b"k1", "c-1") == subject_hash(b"k1", "c-1")
    assert subject_hash(b"k1", "c-1") != subject_hash(b"k2", "c-1")
    assert "c-1" not in subject_hash(b"k1", "c-1")


def test_the_expected_privacy_services_come_from_configuration(monkeypatch):
    monkeypatch.setenv("CONSENT_PRIVACY_SERVICES", "consent, segmentation,issuance,consent")
    assert ConsentSettings().privacy_services == ["consent", "segmentation", "issuance"]


def test_the_register_lists_undeclared_services_instead_of_hiding_them():
    from services.consent.api import REGISTER
    from shared.processing import register

    got = register(json.loads(REGISTER.read_text()), ["consent", "issuance", "loyalty-app"])
    assert {a["service"] for a in got["activities"]} == {"consent", "issuance"}
    assert got["undeclared_services"] == ["loyalty-app"]


def test_the_served_register_is_what_the_services_declare():
    from services.consent.api import REGISTER
    from tools import processing_register

    assert REGISTER.read_text() == processing_register.render(), \
        "services/consent/register.json is stale: run python -m tools.processing_register"
    assert set(json.loads(REGISTER.read_text())) == {"consent", "segmentation", "issuance", "analytics"}
