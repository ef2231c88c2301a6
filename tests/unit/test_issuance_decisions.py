import hashlib
import hmac
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.exceptions import InvalidTag

from services.issuance import codes
from services.issuance.budget import BudgetExhausted, Ledger
from services.issuance.campaign_admin import parse_campaign
from services.issuance.campaigns import CampaignSpec, Variant, assign_variant, choose_channel
from services.issuance.rules import CustomerConsent, Deny, Issue, decide
from shared import erasure
from shared.events import Channel

NOW = datetime(2026, 11, 29, tzinfo=UTC)
USD = "USD"


def spec(**over) -> CampaignSpec:
    base = {"id": "cart-20", "name": "Abandoned cart", "segment": "cart-abandoned-300", "currency": USD,
            "offer": {"kind": "fixed_amount", "amount": {"amount": 2000, "currency": USD},
                      "min_order": {"amount": 5000, "currency": USD}},
            "validity": {"days_after_issue": 14}, "budget": {"limit": {"amount": 200_000, "currency": USD}},
            "channels": ["email", "sms", "onsite"]}
    return CampaignSpec.model_validate(base | over)


def test_a_campaign_definition_error_names_the_field():
    with pytest.raises(ValueError) as info:
        parse_campaign(spec().model_dump(mode="json") | {"offer": {"kind": "percentage", "percent": 250,
                                                                   "cap": {"amount": 1, "currency": USD}}})
    assert "offer.percentage.percent" in str(info.value)
    with pytest.raises(ValueError, match="budget.limit is in EUR"):
        parse_campaign(spec().model_dump(mode="json") | {"budget": {"limit": {"amount": 5, "currency": "EUR"}}})
    with pytest.raises(ValueError, match="either days_after_issue or ends_at"):
        parse_campaign(spec().model_dump(mode="json") | {"validity": {}})
    with pytest.raises(ValueError, match="bits of randomness"):
        parse_campaign(spec().model_dump(mode="json") | {"code": {"length": 6}})


def test_the_default_code_carries_at_least_60_bits_in_an_unambiguous_alphabet():
    s = spec().code
    assert codes.entropy_bits(s.charset, s.length) >= 60
    assert not set("0O1IL") & set(s.charset)
    sample = {s.generate() for _ in range(10_000)}
    assert len(sample) == 10_000


def test_patterns_prefixes_and_hashes():
    s = spec(code={"pattern": "XMAS-####-####-####-##", "charset": "ABCDEFGHJKMNPQRSTUVWXYZ23456789"}).code
    code = s.generate()
    assert code.startswith("XMAS-") and len(code) == len("XMAS-####-####-####-##")
    key = b"k"
    assert codes.code_hash(key, code) == codes.code_hash(key, code.lower().replace("-", " "))
    assert codes.code_hash(key, code) != codes.code_hash(b"other", code)


def test_sealed_codes_open_only_for_their_own_voucher():
    key = codes.seal_key("secret")
    sealed = codes.seal(key, "ABCD-1234", "v-1")
    assert b"ABCD" not in sealed
    assert codes.unseal([key], sealed, "v-1") == "ABCD-1234"
    with pytest.raises(InvalidTag):
        codes.unseal([key], sealed, "v-2")


def test_variant_assignment_is_deterministic_weighted_and_keeps_its_holdout():
    variants = [Variant(name="A", weight=3), Variant(name="B", weight=1)]
    picks = Counter(assign_variant("c", f"cust-{i}", variants, 10) for i in range(20_000))
    assert assign_variant("c", "cust-7", variants, 10) == assign_variant("c", "cust-7", variants, 10)
    assert 0.08 < picks["holdout"] / 20_000 < 0.12
    assert 2.6 < picks["A"] / picks["B"] < 3.4


def test_channel_choice_prefers_the_customer_then_the_campaign_then_onsite():
    consented = {Channel.SMS, Channel.PUSH}
    assert choose_channel(Channel.PUSH, consented, [Channel.EMAIL, Channel.SMS]) == Channel.PUSH
    assert choose_channel(Channel.EMAIL, consented, [Channel.EMAIL, Channel.SMS, Channel.ONSITE]) == Channel.SMS
    assert choose_channel(Channel.EMAIL, set(), [Channel.EMAIL, Channel.ONSITE]) == Channel.ONSITE
    assert choose_channel(Channel.EMAIL, set(), [Channel.EMAIL, Channel.SMS]) is None


def test_the_issuing_order_is_consent_channel_variant_limits():
    consent = CustomerConsent(True, frozenset({Channel.EMAIL}))
    s = spec()
    assert decide(s, customer_id="c", preferred=None, consent=CustomerConsent(False, frozenset()),
                  vouchers_of_customer=0, vouchers_of_campaign=0, now=NOW) == Deny("no_consent")
    issued = decide(s, customer_id="c", preferred=Channel.SMS, consent=consent, vouchers_of_customer=0,
                    vouchers_of_campaign=0, now=NOW)
    assert issued == Issue("A", Channel.EMAIL, 2000)
    assert decide(s, customer_id="c", preferred=None, consent=consent, vouchers_of_customer=1,
                  vouchers_of_campaign=0, now=NOW) == Deny("per_customer_limit", "A")
    capped = spec(budget={"limit": {"amount": 200_000, "currency": USD}, "max_vouchers": 5})
    assert decide(capped, customer_id="c", preferred=None, consent=consent, vouchers_of_customer=0,
                  vouchers_of_campaign=5, now=NOW) == Deny("voucher_limit", "A")
    windowed = spec(validity={"starts_at": (NOW + timedelta(days=1)).isoformat(),
                              "ends_at": (NOW + timedelta(days=2)).isoformat()})
    assert decide(windowed, customer_id="c", preferred=None, consent=consent, vouchers_of_customer=0,
                  vouchers_of_campaign=0, now=NOW) == Deny("campaign_not_running")


def test_the_ledger_cannot_be_overrun_and_counts_every_step():
    lg = Ledger("c", USD, 5000, 0, 0, 0, 0)
    lg = lg.reserve(2000).reserve(2000)
    assert (lg.reserved, lg.seq, lg.remaining) == (4000, 2, 1000)
    with pytest.raises(BudgetExhausted):
        lg.reserve(2000)
    lg = lg.spend(2000, 1500)
    assert (lg.reserved, lg.spent, lg.remaining) == (2000, 1500, 1500)
    lg = lg.unspend(1500, 2000)
    assert (lg.reserved, lg.spent) == (4000, 0)
    lg = lg.release(2000)
    assert (lg.reserved, lg.seq) == (2000, 5)
    with pytest.raises(ValueError):
        Ledger("c", USD, 100, 60, 50, 0, 0)


def test_the_reference_campaigns_are_valid_definitions():
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy/campaigns/reference.yaml").read_text())
    specs = [CampaignSpec.model_validate(c) for c in doc["campaigns"]]
    assert {s.segment for s in specs} == {"birthday-week", "cart-abandoned-300", "spend-2000-12m"}
    birthday = next(s for s in specs if s.segment == "birthday-week")
    assert birthday.offer.percent == 25 and birthday.offer.favourite_brand


def test_code_symbols_are_uniform_and_skip_the_bytes_that_would_bias_them(monkeypatch):
    counts = Counter(codes.symbols(codes.UNAMBIGUOUS, 310_000))
    assert set(counts) == set(codes.UNAMBIGUOUS)
    assert all(abs(n - 10_000) < 600 for n in counts.values()), counts  # 6 standard deviations
    # 31 symbols: bytes 248..255 would favour the first eight symbols, so they are skipped.
    draws = iter([bytes([255, 248, 0, 30, 31]), bytes([249, 1, 2, 3, 4, 5])])
    monkeypatch.setattr(codes.secrets, "token_bytes", lambda n: next(draws)[:n])
    assert codes.symbols(codes.UNAMBIGUOUS, 5) == [codes.UNAMBIGUOUS[i] for i in (0, 30, 0, 1, 2)]
    with pytest.raises(ValueError, match="2 to 256 symbols"):
        codes.symbols("A", 4)


def test_keyed_hashes_are_the_same_hmac_sha256_as_before():
    # Stored subjects and code hashes must not change with the function that computes them.
    key = b"k" * 32
    assert erasure.subject_hash(key, "c-1") == hmac.new(key, b"c-1", hashlib.sha256).hexdigest()
    assert codes.code_hash(key, "ab-cd 12") == hmac.new(key, b"ABCD12", hashlib.sha256).digest()
