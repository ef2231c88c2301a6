"""Voucherify's own Python SDK (``voucherify`` from PyPI, unchanged but for its host) against the
issuance service running as users run it: validate, read the voucher, redeem, roll back, redeem
again; LOCK sessions held, refused to others, released and expired, with the budget ledger
checked at each step; errors in Voucherify's shape."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import voucherify
from voucherify import models as vm

from bench.common import free_port, service_process
from shared import events as ev
from tests.integration.issuance.conftest import USD, campaign, consent_state, entered, publish
from tests.support import create_api_key, read_topic


def sdk(port: int, key: str) -> voucherify.ApiClient:
    _, app_id, token = key.split("_", 2)
    return voucherify.ApiClient(voucherify.Configuration(host=f"http://127.0.0.1:{port}/voucherify",
                                                         api_key={"X-App-Id": app_id, "X-App-Token": token}))


def body(cls, code: str, customer: str, amount: int, *, order_id: str | None = None, session: dict | None = None):
    return cls(redeemables=[{"object": "voucher", "id": code}], customer=vm.Customer(source_id=customer),
               order=vm.Order(source_id=order_id, amount=amount, items=[vm.OrderItem(
                   source_id="sku-1", price=amount // 2, quantity=2, amount=amount,
                   product=vm.OrderItemProduct(metadata={"brand": "acme"}))]),
               session=vm.Session(**session) if session else None)


def refused(call) -> dict:
    with pytest.raises(voucherify.ApiException) as info:
        call()
    return {"status": info.value.status, **json.loads(info.value.body)}


async def test_the_voucherify_sdk_validates_redeems_and_rolls_back(kafka, issuance_schema, tmp_path):
    port = free_port()
    env = {"ISSUANCE_SCHEMA_NAME": issuance_schema, "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           "ISSUANCE_HTTP_PORT": str(port), "ISSUANCE_EXPIRY_INTERVAL_S": "0.5", "ISSUANCE_LOG_LEVEL": "WARNING"}
    async with service_process("issuance", env, port, tmp_path / "issuance.log"):
        key = await create_api_key(issuance_schema, ["checkout", "marketing"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                                     timeout=30) as native:
            assert (await native.post("/v1/campaigns", json=campaign())).status_code == 201
            assert (await native.post("/v1/campaigns", json=campaign(id="partners", segment="nobody", budget={
                "limit": {"amount": 10 * 2000, "currency": USD}, "per_customer": None}))).status_code == 201
            assert (await native.post("/v1/campaigns", json=campaign(id="gift", segment="vip", offer={
                "kind": "gift_card", "balance": {"amount": 10000, "currency": USD}}))).status_code == 201
            customers = [f"vf-{i}" for i in range(4)]
            await publish(kafka, "consent-state", [consent_state(c, "personalized_offers", "email")
                                                   for c in customers + ["vf-g"]])
            await asyncio.sleep(1)
            await publish(kafka, "segment-entered", [entered(c) for c in customers] + [entered("vf-g", segment="vip")])
            records = await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"), expect=5, timeout=60)
            codes = {d.customer_id: d.code for d in (ev.decode(r.value)[1] for r in records)}
            r = await native.post("/v1/campaigns/partners/partner-codes", json={"partner": "aff-1", "count": 1})
            partner_code = r.text.splitlines()[1].split(",")[0]

            async def budget(cid: str = "cart-20") -> dict:
                return (await native.get(f"/v1/campaigns/{cid}/budget")).json()

            client = sdk(port, key)
            validations = voucherify.ValidationsApi(client)
            redemptions = voucherify.RedemptionsApi(client)
            vouchers = voucherify.VouchersApi(client)
            code = codes["vf-0"]

            # 1. Validate, read, redeem, roll back, redeem again: the SDK's own models parse every answer.
            v = validations.validate_stacked_discounts(body(vm.ValidationsValidateRequestBody, code, "vf-0", 15000))
            assert v.valid is True and v.redeemables[0].status == "APPLICABLE"
            assert v.redeemables[0].result.discount.type == "AMOUNT"
            assert v.redeemables[0].result.discount.amount_off == 2000
            assert v.order.total_discount_amount == 2000 and v.order.total_amount == 13000
            assert v.stacking_rules.redeemables_limit == 1 and v.redeemables[0].campaign_id == "cart-20"

            got = vouchers.get_voucher(code)
            assert (got.code, got.type, got.active, got.discount.amount_off) == (code, "DISCOUNT_VOUCHER", True, 2000)
            assert got.redemption.redeemed_quantity == 0 and got.campaign_id == "cart-20"

            red = redemptions.redeem_stacked_discounts(
                body(vm.RedemptionsRedeemRequestBody, code, "vf-0", 15000, order_id="o-1"))
            first = red.redemptions[0]
            assert (first.result, first.status, first.amount, first.voucher.code) == ("SUCCESS", "SUCCEEDED", 2000, code)
            assert first.id and red.order.total_discount_amount == 2000
            assert (await budget())["spent"] == 2000
            assert vouchers.get_voucher(code).redemption.redeemed_quantity == 1

            # The same order again is the same redemption (its Idempotency-Key: order + code) ...
            again = redemptions.redeem_stacked_discounts(
                body(vm.RedemptionsRedeemRequestBody, code, "vf-0", 15000, order_id="o-1"))
            assert again.redemptions[0].id == first.id
            # ... another order is refused, in Voucherify's error shape.
            err = refused(lambda: redemptions.redeem_stacked_discounts(
                body(vm.RedemptionsRedeemRequestBody, code, "vf-0", 15000, order_id="o-2")))
            assert (err["status"], err["code"], err["key"]) == (400, 400, "quantity_exceeded")
            invalid = validations.validate_stacked_discounts(body(vm.ValidationsValidateRequestBody, code, "vf-0",
                                                                  15000))
            assert invalid.valid is False and invalid.inapplicable_redeemables[0].result.error.key == "quantity_exceeded"

            back = redemptions.rollback_redemption(first.id, reason="customer returned the order")
            assert (back.result, back.status, back.redemption, back.amount) == ("SUCCESS", "SUCCEEDED", first.id, -2000)
            assert (await budget())["spent"] == 0
            err = refused(lambda: redemptions.rollback_redemption(first.id))
            assert err["key"] == "already_rolled_back"
            red2 = redemptions.redeem_stacked_discounts(
                body(vm.RedemptionsRedeemRequestBody, code, "vf-0", 15000, order_id="o-3"))
            assert red2.redemptions[0].result == "SUCCESS" and red2.redemptions[0].id != first.id
            assert (await budget())["spent"] == 2000

            # 2. A LOCK session holds the voucher: others are refused until it redeems.
            held = validations.validate_stacked_discounts(body(
                vm.ValidationsValidateRequestBody, codes["vf-1"], "vf-1", 15000,
                session={"type": "LOCK", "ttl": 60, "ttl_unit": "SECONDS"}))
            assert held.valid is True and held.session.type == "LOCK" and held.session.key
            other = validations.validate_stacked_discounts(body(vm.ValidationsValidateRequestBody, codes["vf-1"],
                                                                "vf-1", 15000))
            assert other.valid is False and other.redeemables[0].result.error.key == "multiple_requests"
            err = refused(lambda: redemptions.redeem_stacked_discounts(
                body(vm.RedemptionsRedeemRequestBody, codes["vf-1"], "vf-1", 15000, order_id="o-4")))
            assert err["key"] == "multiple_requests"
            mine = redemptions.redeem_stacked_discounts(body(
                vm.RedemptionsRedeemRequestBody, codes["vf-1"], "vf-1", 15000, session={"key": held.session.key}))
            assert mine.redemptions[0].result == "SUCCESS"

            # 3. Released: anyone may redeem it again; a second release finds nothing.
            lock = validations.validate_stacked_discounts(body(
                vm.ValidationsValidateRequestBody, codes["vf-2"], "vf-2", 15000, session={"type": "LOCK"}))
            vouchers.release_validation_session(codes["vf-2"], lock.session.key)
            assert refused(lambda: vouchers.release_validation_session(codes["vf-2"], lock.session.key))["status"] == 404
            assert redemptions.redeem_stacked_discounts(body(
                vm.RedemptionsRedeemRequestBody, codes["vf-2"], "vf-2", 15000, order_id="o-5")).redemptions[0].id

            # 4. A partner code's hold reserves its discount in the ledger, until released or expired.
            before = await budget("partners")
            lock = validations.validate_stacked_discounts(body(
                vm.ValidationsValidateRequestBody, partner_code, "anyone", 15000, session={"type": "LOCK"}))
            assert lock.valid is True and (await budget("partners"))["reserved"] == before["reserved"] + 2000
            vouchers.release_validation_session(partner_code, lock.session.key)
            assert (await budget("partners"))["reserved"] == before["reserved"]
            validations.validate_stacked_discounts(body(
                vm.ValidationsValidateRequestBody, partner_code, "anyone", 15000,
                session={"type": "LOCK", "ttl": 1, "ttl_unit": "SECONDS"}))
            assert (await budget("partners"))["reserved"] == before["reserved"] + 2000
            deadline = time.monotonic() + 15
            while (await budget("partners"))["reserved"] != before["reserved"]:
                assert time.monotonic() < deadline, "an expired hold still reserves its discount"
                await asyncio.sleep(0.2)
            red = redemptions.redeem_stacked_discounts(body(
                vm.RedemptionsRedeemRequestBody, partner_code, "anyone", 15000, order_id="o-6"))
            assert red.redemptions[0].result == "SUCCESS"
            after = await budget("partners")
            assert (after["reserved"], after["spent"]) == (before["reserved"], before["spent"] + 2000)

            # A gift card held by a session: spent in part by it, which ends the hold.
            lock = validations.validate_stacked_discounts(body(
                vm.ValidationsValidateRequestBody, codes["vf-g"], "vf-g", 3000, session={"type": "LOCK"}))
            assert lock.valid is True and lock.redeemables[0].result.gift.credits == 3000
            assert validations.validate_stacked_discounts(body(
                vm.ValidationsValidateRequestBody, codes["vf-g"], "vf-g", 3000)).valid is False
            spent = redemptions.redeem_stacked_discounts(body(
                vm.RedemptionsRedeemRequestBody, codes["vf-g"], "vf-g", 3000, session={"key": lock.session.key}))
            assert spent.redemptions[0].amount == 3000 and spent.redemptions[0].voucher.gift.balance == 7000
            assert validations.validate_stacked_discounts(body(
                vm.ValidationsValidateRequestBody, codes["vf-g"], "vf-g", 3000)).valid is True
            assert vouchers.get_voucher(codes["vf-g"]).gift.balance == 7000

            # 5. Errors the SDK's callers see: a wrong token, several vouchers, a missing customer.
            assert refused(lambda: voucherify.VouchersApi(sdk(port, key[:-2] + "xx")).get_voucher(code))["key"] \
                == "unauthorized"
            err = refused(lambda: validations.validate_stacked_discounts(vm.ValidationsValidateRequestBody(
                redeemables=[{"object": "voucher", "id": code}, {"object": "voucher", "id": codes["vf-3"]}],
                customer=vm.Customer(source_id="vf-0"), order=vm.Order(amount=15000))))
            assert (err["status"], err["key"]) == (400, "applicable_redeemables_limit_exceeded")
            err = refused(lambda: validations.validate_stacked_discounts(vm.ValidationsValidateRequestBody(
                redeemables=[{"object": "voucher", "id": code}], order=vm.Order(amount=15000))))
            assert err["key"] == "missing_customer"
            assert refused(lambda: vouchers.get_voucher("NO-SUCH-CODE"))["key"] == "resource_not_found"
        assert "Traceback" not in (tmp_path / "issuance.log").read_text()
