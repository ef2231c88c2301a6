"""The checkout API on the real database: discounts and refusals, idempotent redemption,
rollback, offers, keys and scopes, rate limiting."""

from __future__ import annotations

import uuid

import httpx

from services.issuance import store
from shared import auth
from shared import events as ev
from tests.integration.issuance.conftest import USD, campaign, consent_state, entered, publish
from tests.support import read_topic, wait_for


def order(amount, *items, currency=USD):
    return {"amount": {"amount": amount, "currency": currency},
            "items": [{"sku": s, "brand": b, "category": c, "quantity": q, "unit_price": {"amount": p, "currency": currency}}
                      for s, b, c, q, p in items]}


async def issue(issuance, kafka, customers, segment="cart-abandoned-300", channel="email"):
    """Issues one voucher per customer through the stream; returns {customer: code}."""
    grants = ("personalized_offers", channel) if channel != "onsite" else ("personalized_offers",)
    await publish(kafka, "consent-state", [consent_state(c, *grants) for c in customers])
    await wait_for(lambda: _ge(issuance.pool.fetchval("SELECT count(*) FROM customer_consent WHERE customer_id = ANY($1::text[])",
                                                      list(customers)), len(customers)), what="consents")
    await publish(kafka, "segment-entered", [entered(c, segment=segment) for c in customers])
    await wait_for(lambda: _ge(issuance.pool.fetchval("SELECT count(*) FROM vouchers WHERE customer_id = ANY($1::text[])",
                                                      list(customers)), len(customers)), what="vouchers")
    if channel == "onsite":
        return {}
    async def codes():
        records = await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"))
        got = {d.customer_id: d.code for d in (ev.decode(r.value)[1] for r in records)
               if isinstance(d, ev.DeliveryRequested) and d.customer_id in customers}
        return got if len(got) == len(customers) else None

    return await wait_for(codes, what="the delivery requests")


async def _ge(value, n):
    return (await value) >= n


async def test_validation_gives_the_discount_or_the_reason(issuance, kafka):
    c = issuance.client
    await c.post("/v1/campaigns", json=campaign())
    await c.post("/v1/campaigns", json=campaign(id="perfume-25", segment="birthday-week", offer={
        "kind": "percentage", "percent": 25, "cap": {"amount": 5000, "currency": USD}, "categories": ["perfume"]}))
    await c.post("/v1/campaigns", json=campaign(id="gift", segment="vip", offer={
        "kind": "gift_card", "balance": {"amount": 10000, "currency": USD}}))
    codes = await issue(issuance, kafka, ["v-1"])
    perfume = await issue(issuance, kafka, ["v-2"], segment="birthday-week")
    gift = await issue(issuance, kafka, ["v-3"], segment="vip")

    async def check(code, customer, o):
        return (await c.post("/v1/validations", json={"code": code, "customer_id": customer, "order": o})).json()

    ok = await check(codes["v-1"], "v-1", order(12000))
    assert ok["valid"] and ok["discount"] == {"amount": 2000, "currency": USD}
    assert (await check(codes["v-1"].lower(), "v-1", order(12000)))["valid"]  # typed in lower case
    assert (await check(codes["v-1"], "v-1", order(4000)))["reason"] == "min_order_not_met"
    assert (await check(codes["v-1"], "someone-else", order(12000)))["reason"] == "unknown_code"
    assert (await check("NOPE-NOPE-NOPE", "v-1", order(12000)))["reason"] == "unknown_code"
    assert (await check(codes["v-1"], "v-1", order(12000, currency="EUR")))["reason"] == "currency_mismatch"
    # 25 % of the perfume only (8,000 of a 10,000 order), within the 50 USD cap.
    p = await check(perfume["v-2"], "v-2", order(10000, ("p1", "Maison", "perfume", 2, 4000), ("s1", "X", "shoes", 1, 2000)))
    assert p["discount"]["amount"] == 2000
    capped = await check(perfume["v-2"], "v-2", order(90000, ("p1", "Maison", "perfume", 3, 30000)))
    assert capped["discount"]["amount"] == 5000
    assert (await check(perfume["v-2"], "v-2", order(2000, ("s1", "X", "shoes", 1, 2000))))["reason"] == "not_applicable_items"
    assert (await check(gift["v-3"], "v-3", order(3000)))["discount"]["amount"] == 3000
    assert (await check(gift["v-3"], "v-3", order(30000)))["discount"]["amount"] == 10000
    await c.post("/v1/campaigns/cart-20/pause")
    assert (await check(codes["v-1"], "v-1", order(12000)))["reason"] == "campaign_paused"


async def test_redeem_roll_back_redeem_again_with_idempotency_and_an_exact_ledger(issuance, kafka):
    c = issuance.client
    await c.post("/v1/campaigns", json=campaign())
    code = (await issue(issuance, kafka, ["r-1"]))["r-1"]
    body = {"code": code, "customer_id": "r-1", "order": order(15000), "order_id": "ord-1"}
    first = await c.post("/v1/redemptions", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201, first.text
    replay = await c.post("/v1/redemptions", json=body, headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 201 and replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    other = await c.post("/v1/redemptions", json=body | {"order_id": "ord-2"}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422 and other.json()["reason"] == "idempotency_key_reused"
    again = await c.post("/v1/redemptions", json=body, headers={"Idempotency-Key": "k2"})
    assert again.status_code == 409 and again.json()["reason"] == "already_redeemed"
    budget = (await c.get("/v1/campaigns/cart-20/budget")).json()
    assert (budget["reserved"], budget["spent"]) == (0, 2000)

    rid = first.json()["redemption_id"]
    async with issuance.pool.acquire() as conn:  # another till of the shop: not the key that redeemed
        _, other_till = await auth.create_key(conn, "till-2", ["checkout"])
    refused = await c.post(f"/v1/redemptions/{rid}/rollback", headers={"Authorization": f"Bearer {other_till}"})
    assert refused.status_code == 404 and "made with this API key" in refused.json()["detail"]
    back = await c.post(f"/v1/redemptions/{rid}/rollback")
    assert back.json()["changed"] is True and back.json()["voucher_status"] == "active"
    twice = await c.post(f"/v1/redemptions/{rid}/rollback")
    assert twice.status_code == 200 and twice.json()["changed"] is False
    budget = (await c.get("/v1/campaigns/cart-20/budget")).json()
    assert (budget["reserved"], budget["spent"]) == (2000, 0)
    third = await c.post("/v1/redemptions", json=body, headers={"Idempotency-Key": "k3"})
    assert third.status_code == 201
    assert (await c.post(f"/v1/redemptions/{uuid.uuid4()}/rollback")).status_code == 404

    # Idempotency-Key answers are kept for ISSUANCE_IDEMPOTENCY_RETENTION_DAYS, then forgotten.
    await issuance.pool.execute("UPDATE idempotency_keys SET created_at = now() - interval '91 days' WHERE key = 'k1'")
    assert await store.forget_idempotent_answers(issuance.pool, 90, 100) == 1
    assert await issuance.pool.fetchval("SELECT array_agg(key ORDER BY key) FROM idempotency_keys") == ["k2", "k3"]

    history = await issuance.pool.fetch("SELECT seq, limit_minor, reserved, spent, cause FROM budget_ledger_history"
                                        " WHERE campaign_id = 'cart-20' ORDER BY seq")
    assert [h["cause"] for h in history] == ["issued", "redeemed", "rolled_back", "redeemed"]
    assert all(h["reserved"] + h["spent"] <= h["limit_minor"] for h in history)
    events = [ev.decode(r.value)[1] for r in await read_topic(kafka.bootstrap, kafka.topic("voucher-redeemed"), expect=2)]
    assert [e.ledger.seq for e in events] == [2, 4] and events[0].discount.amount == 2000
    rolled = ev.decode((await read_topic(kafka.bootstrap, kafka.topic("redemption-rolled-back"), expect=1))[0].value)[1]
    assert rolled.ledger.seq == 3 and rolled.returned.amount == 2000


async def test_keys_scopes_rate_limits_and_onsite_codes(issuance, kafka):
    base = issuance.client
    await base.post("/v1/campaigns", json=campaign(channels=["onsite"]))
    await issue(issuance, kafka, ["o-1"], channel="onsite")
    transport = issuance.transport
    async with issuance.pool.acquire() as conn:
        _, checkout_key = await auth.create_key(conn, "till", ["checkout"])
        _, onsite_key = await auth.create_key(conn, "site", ["onsite"])
    anon = httpx.AsyncClient(transport=transport, base_url="http://issuance")
    till = httpx.AsyncClient(transport=transport, base_url="http://issuance",
                             headers={"Authorization": f"Bearer {checkout_key}"})
    site = httpx.AsyncClient(transport=transport, base_url="http://issuance", headers={"X-API-Key": onsite_key})
    try:
        assert (await anon.get("/v1/customers/o-1/offers")).status_code == 401
        assert (await till.get("/v1/campaigns")).status_code == 403
        offers = (await till.get("/v1/customers/o-1/offers")).json()["offers"]
        assert len(offers) == 1 and offers[0]["code"] is None  # no onsite scope: no code
        shown = (await site.get("/v1/customers/o-1/offers")).json()["offers"]
        code = shown[0]["code"]
        assert code and shown[0]["channel"] == "onsite"
        valid = await till.post("/v1/validations", json={"code": code, "customer_id": "o-1", "order": order(20000)})
        assert valid.json()["valid"]

        # Guessing codes: after the burst of failures, 429 with Retry-After.
        statuses = []
        for i in range(40):
            r = await till.post("/v1/validations", json={"code": f"GUESS{i:04d}XX", "customer_id": "o-1",
                                                          "order": order(20000)})
            statuses.append(r.status_code)
        assert statuses[:30] == [200] * 30 and statuses[-1] == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert "voucherstream_checkout_rate_limited_total" in issuance.metrics.render().decode()

        # Listings that reveal on-site codes are limited per customer (one was made above);
        # listings without codes are not.
        listings = [(await site.get("/v1/customers/o-1/offers")).status_code for _ in range(60)]
        assert listings.count(200) == 59 and listings[-1] == 429
        assert (await till.get("/v1/customers/o-1/offers")).status_code == 200
    finally:
        for client in (anon, till, site):
            await client.aclose()


async def test_validate_and_redeem_answer_bad_requests_as_documented(issuance):
    """The two routes are served by fast handlers (shared.fastpath); whatever those do not take
    as it is reaches the FastAPI routes, whose errors are the documented ones."""
    transport = issuance.transport
    async with issuance.pool.acquire() as conn:
        _, marketing_key = await auth.create_key(conn, "console", ["marketing"])
    anon = httpx.AsyncClient(transport=transport, base_url="http://issuance")
    console = httpx.AsyncClient(transport=transport, base_url="http://issuance",
                                headers={"Authorization": f"Bearer {marketing_key}"})
    c = issuance.client
    body = {"code": "NOSUCHCODE23", "customer_id": "b-1", "order": order(5000)}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    try:
        for path, headers, status in (("/v1/validations", {}, 200), ("/v1/redemptions", key, 422)):
            refused = await c.post(path, json=body, headers=headers)
            assert refused.status_code == status and refused.json()["reason"] == "unknown_code", refused.text
            assert (await anon.post(path, json=body, headers=headers)).status_code == 401
            assert (await console.post(path, json=body, headers=headers)).status_code == 403
            invalid = await c.post(path, json={**body, "order": {"amount": {"amount": -1, "currency": "usd"}}},
                                   headers=headers)
            assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"][:2] == ["body", "order"]
            broken = await c.post(path, content=b"{", headers={**headers, "content-type": "application/json"})
            assert broken.status_code == 422 and broken.json()["detail"][0]["type"] == "json_invalid"
            long_shopper = await c.post(path, json=body, headers={**headers, "X-Shopper-Id": "s" * 201})
            assert long_shopper.status_code == 422 and long_shopper.json()["detail"][0]["loc"] == ["header", "X-Shopper-Id"]
        no_key = await c.post("/v1/redemptions", json=body)
        assert no_key.status_code == 422 and no_key.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
        replayed = await c.post("/v1/redemptions", json=body, headers=key)
        assert replayed.headers["Idempotent-Replayed"] == "true" and replayed.json()["reason"] == "unknown_code"

        # The Voucherify-compatible pair, in Voucherify's error shape.
        vf_body = {"redeemables": [{"object": "voucher", "id": "NOSUCHCODE23"}], "customer": {"source_id": "b-1"},
                   "order": {"amount": 5000, "source_id": "o-b-1"}}
        invalid = (await c.post("/voucherify/v1/validations", json=vf_body)).json()
        assert invalid["valid"] is False and invalid["redeemables"][0]["result"]["error"]["key"] == "resource_not_found"
        refused = await c.post("/voucherify/v1/redemptions", json=vf_body)
        assert (refused.status_code, refused.json()["key"]) == (404, "resource_not_found")
        for path in ("/voucherify/v1/validations", "/voucherify/v1/redemptions"):
            unknown = await anon.post(path, json=vf_body, headers={"X-App-Id": "nobody", "X-App-Token": "x"})
            assert (unknown.status_code, unknown.json()["key"]) == (401, "unauthorized")
            assert (await console.post(path, json=vf_body)).json()["key"] == "forbidden"
            for bad in (await c.post(path, content=b"{", headers={"content-type": "application/json"}),
                        await c.post(path, content=b"[1]", headers={"content-type": "application/json"}),
                        await c.post(path, json=vf_body, headers={"X-Shopper-Id": "s" * 201})):
                assert (bad.status_code, bad.json()["key"]) == (400, "invalid_payload"), bad.text
            several = await c.post(path, json={**vf_body, "redeemables": vf_body["redeemables"] * 2})
            assert several.json()["key"] == "applicable_redeemables_limit_exceeded"
    finally:
        await anon.aclose()
        await console.aclose()
