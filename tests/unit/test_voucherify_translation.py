"""The Voucherify translation (services/issuance/voucherify.py), pure: requests in native terms
with precise errors, and every answer parsed by the real SDK's own models (voucherify 6.1.1)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from voucherify import models as vm

from services.issuance import voucherify as vf
from services.issuance.campaigns import CampaignSpec
from services.issuance.checkout import VoucherView, evaluate
from shared import events as ev

SPEC = CampaignSpec.model_validate({
    "id": "cart-20", "name": "20 USD off", "segment": "s", "currency": "USD",
    "offer": {"kind": "fixed_amount", "amount": {"amount": 2000, "currency": "USD"}},
    "validity": {"days_after_issue": 14}, "budget": {"limit": {"amount": 100000, "currency": "USD"}},
    "channels": ["email"]})
PERCENT = SPEC.model_copy(update={"offer": CampaignSpec.model_validate({
    **SPEC.model_dump(mode="json"), "offer": {"kind": "percentage", "percent": 15,
                                              "cap": {"amount": 5000, "currency": "USD"}, "brands": ["acme"]}}).offer})
GIFT = CampaignSpec.model_validate({**SPEC.model_dump(mode="json"), "id": "gift",
                                   "offer": {"kind": "gift_card", "balance": {"amount": 10000, "currency": "USD"}}})


def request(**over) -> dict:
    return {"redeemables": [{"object": "voucher", "id": "ABCD-1234"}], "customer": {"source_id": "c-1"},
            "order": {"source_id": "o-1", "amount": 15000, "items": [
                {"sku_id": "sku-1", "price": 5000, "quantity": 3, "product": {"metadata": {"brand": "acme"}}}]}} | over


def translate(body: dict) -> vf.CheckoutRequest:
    return vf.checkout_request(body, "EUR", default_ttl_s=3600)


def test_a_voucherify_body_becomes_the_native_checkout():
    req = translate(request())
    assert (req.code, req.customer_id, req.order, req.order_id) == ("ABCD-1234", "c-1", ev.Money(amount=15000,
                                                                                                   currency="EUR"), "o-1")
    item = req.items[0]
    assert (item.sku, item.brand, item.unit_price.amount, item.quantity) == ("sku-1", "acme", 5000, 3)
    assert req.idempotency_key() == "order:o-1:ABCD-1234" and req.lock is None
    # The amount comes from the items when the order names none; a session's key is the idempotency key.
    req = translate(request(order={"items": [{"source_id": "x", "amount": 3000, "quantity": 2}]}, session={"key": "s1"}))
    assert req.order.amount == 3000 and req.items[0].unit_price.amount == 1500 and req.idempotency_key() == "session:s1:ABCD-1234"
    # No order id and no session: every request is its own.
    assert translate(request(order={"amount": 1})).idempotency_key() != translate(request(order={"amount": 1})).idempotency_key()


def test_a_lock_session_gets_a_key_and_a_ttl():
    req = translate(request(session={"type": "LOCK", "ttl": 15, "ttl_unit": "MINUTES"}))
    assert req.lock is not None and req.lock.key.startswith("ssn_") and req.lock.ttl_s == 900
    assert req.session_key == req.lock.key
    assert translate(request(session={"type": "LOCK"})).lock.ttl_s == 3600  # the configured default


@pytest.mark.parametrize("body, code, key", [
    (request(redeemables=[]), 400, "invalid_payload"),
    (request(redeemables=[{"object": "voucher", "id": "ABCD-1"}, {"object": "voucher", "id": "ABCD-2"}]), 400,
     "applicable_redeemables_limit_exceeded"),
    (request(redeemables=[{"object": "promotion_tier", "id": "ABCD-1"}]), 400, "invalid_payload"),
    (request(redeemables=[{"object": "voucher", "id": "x"}]), 400, "invalid_payload"),
    (request(customer=None), 400, "missing_customer"),
    (request(customer={"source_id": "bad id with spaces"}), 400, "invalid_customer"),
    (request(order=None), 400, "missing_order"),
    (request(order={"source_id": "o-1"}), 400, "missing_amount"),
    (request(order={"amount": -5}), 400, "invalid_amount"),
    (request(order={"amount": 10, "items": [{"sku_id": "a"}]}), 400, "missing_order_items_amount"),
    (request(order={"amount": 10, "items": [{"sku_id": "a", "price": 1, "quantity": 0}]}), 400, "invalid_order"),
    (request(session={"type": "SHARED"}), 400, "invalid_payload"),
    (request(session={"type": "LOCK", "ttl_unit": "WEEKS"}), 400, "invalid_payload"),
    (request(session={"type": "LOCK", "ttl": 0}), 400, "invalid_payload"),
    (request(order={"amount": "lots"}), 400, "invalid_payload"),
    ([1, 2], 400, "invalid_payload"),
])
def test_bad_requests_get_voucherify_s_own_error_keys(body, code, key):
    with pytest.raises(vf.VoucherifyError) as info:
        translate(body)
    assert (info.value.code, info.value.key) == (code, key)
    parsed = vm.Error.from_dict(info.value.body())
    assert parsed.key == key and parsed.details


def test_every_refusal_reason_of_the_checkout_has_a_voucherify_error():
    sources = "".join((Path(vf.__file__).parent / name).read_text()
                      for name in ("checkout.py", "checkout_handlers.py", "checkout_sessions.py"))
    reasons = set(re.findall(r'Refuse\("([a-z_]+)"', sources)) | {"idempotency_key_reused"}
    assert reasons and reasons <= set(vf.REFUSALS), reasons - set(vf.REFUSALS)
    for reason in reasons:
        assert vm.Error.from_dict(vf.refusal_error(reason, "why").body()).key == vf.REFUSALS[reason][1]


def test_answers_parse_with_the_sdk_models():
    req = translate(request(session={"type": "LOCK", "ttl": 2, "ttl_unit": "HOURS"}))
    ok = vm.ValidationsValidateResponseBody.from_dict(vf.validation_valid(req, SPEC, "default", "single_use", None, 2000))
    assert ok.valid and ok.redeemables[0].result.discount.amount_off == 2000 and ok.order.total_amount == 13000
    assert (ok.session.type, ok.session.ttl, ok.session.ttl_unit) == ("LOCK", 2, "HOURS")
    pct = vm.ValidationsValidateResponseBody.from_dict(vf.validation_valid(req, PERCENT, "default", "single_use",
                                                                           None, 2250))
    assert (pct.redeemables[0].result.discount.type, pct.redeemables[0].result.discount.percent_off) == ("PERCENT", 15)
    assert pct.order.total_discount_amount == 2250
    gift = vm.ValidationsValidateResponseBody.from_dict(vf.validation_valid(req, GIFT, "default", "gift_card",
                                                                            8000, 8000))
    assert gift.redeemables[0].result.gift.credits == 8000
    bad = vm.ValidationsValidateResponseBody.from_dict(vf.validation_invalid(req, vf.refusal_error("expired", "x")))
    assert bad.valid is False and bad.inapplicable_redeemables[0].result.error.key == "voucher_expired"

    native = {"valid": True, "redemption_id": "r-1", "voucher_id": "v-1", "campaign_id": "cart-20",
              "discount": {"amount": 2000, "currency": "EUR"}, "remaining_balance": None}
    red = vm.RedemptionsRedeemResponseBody.from_dict(vf.redemption_answer(req, native))
    assert (red.redemptions[0].id, red.redemptions[0].result, red.redemptions[0].voucher.type) == (
        "r-1", "SUCCESS", "DISCOUNT_VOUCHER")
    with pytest.raises(vf.VoucherifyError) as info:
        vf.redemption_answer(req, {"valid": False, "reason": "already_redeemed", "detail": "used"})
    assert (info.value.code, info.value.key) == (400, "quantity_exceeded")

    back = vm.RedemptionsRollbackCreateResponseBody.from_dict(vf.rollback_answer(
        "r-1", {"changed": True, "returned": {"amount": 2000, "currency": "EUR"}}, "returned"))
    assert (back.result, back.redemption, back.amount, back.reason) == ("SUCCESS", "r-1", -2000, "returned")

    row = {"id": "v-1", "variant": "default", "status": "active", "kind": "single_use", "balance": None,
           "expires_at": datetime(2027, 1, 1, tzinfo=UTC)}
    got = vm.VouchersGetResponseBody.from_dict(vf.voucher_answer("ABCD-1234", SPEC, row))
    assert (got.code, got.active, got.discount.amount_off, got.redemption.redeemed_quantity) == ("ABCD-1234", True,
                                                                                                  2000, 0)
    got = vm.VouchersGetResponseBody.from_dict(vf.voucher_answer("ABCD-1234", GIFT, row | {"kind": "gift_card",
                                                                                             "balance": 2500}))
    assert (got.type, got.gift.balance, got.gift.subtracted_amount) == ("GIFT_VOUCHER", 2500, 7500)


def test_a_voucher_held_by_another_session_is_refused_until_the_hold_expires():
    now = datetime.now(UTC)
    voucher = VoucherView("v-1", "cart-20", "c-1", None, "default", "single_use", None, "USD", 2000, None, "active",
                          now + timedelta(days=1), "k1/s-1", now + timedelta(minutes=5))
    args = dict(customer_id="c-1", order=ev.Money(amount=15000, currency="USD"), items=[], budget_remaining=0)
    assert evaluate(voucher, SPEC, "active", now=now, session="k1/s-2", **args).reason == "locked"
    assert evaluate(voucher, SPEC, "active", now=now, **args).reason == "locked"
    assert evaluate(voucher, SPEC, "active", now=now, session="k1/s-1", **args).discount == 2000
    assert evaluate(voucher, SPEC, "active", now=now + timedelta(minutes=6), **args).discount == 2000
