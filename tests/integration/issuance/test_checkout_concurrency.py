"""Requests fired truly concurrently at the issuance service as users run it (its own process,
a pool of 20 database connections): one code redeemed by 200 at once, round after round; 500
partner codes on a budget for 100; 50 partial spends of one gift card; 200 at once on one code
through the Voucherify-compatible surface, and 50 LOCK sessions on one code. The ledger history
is checked at every step.

The suite runs 5 rounds of the 200-at-once race; `make test-races` runs the full 100
(CHECKOUT_RACE_ROUNDS=100: passed in 78.7 s on a 2-core machine with the redemption writer).
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import uuid
from collections import Counter

import asyncpg
import httpx

from bench.common import free_port, service_process
from shared import events as ev
from shared.settings import PostgresSettings
from tests.integration.issuance.conftest import USD, campaign, consent_state, entered, publish
from tests.support import create_api_key, read_topic


def order(amount):
    return {"amount": {"amount": amount, "currency": USD}, "items": []}


async def fire(client, requests, idempotency_key: str | None = None):
    """All at once: every request is built first, then released together (each with its own
    Idempotency-Key unless one is given for all)."""
    gate = asyncio.Event()

    async def one(body):
        await gate.wait()
        return await client.post("/v1/redemptions", json=body,
                                 headers={"Idempotency-Key": idempotency_key or str(uuid.uuid4())})

    tasks = [asyncio.create_task(one(b)) for b in requests]
    await asyncio.sleep(0)
    gate.set()
    return await asyncio.gather(*tasks)


async def fire_voucherify(client, key: str, bodies, route: str = "redemptions"):
    """All at once through the Voucherify-compatible surface, authenticated as its SDK does."""
    _, app_id, token = key.split("_", 2)
    gate = asyncio.Event()

    async def one(body):
        await gate.wait()
        return await client.post(f"/voucherify/v1/{route}", json=body,
                                 headers={"X-App-Id": app_id, "X-App-Token": token, "Authorization": ""})

    tasks = [asyncio.create_task(one(b)) for b in bodies]
    await asyncio.sleep(0)
    gate.set()
    return await asyncio.gather(*tasks)


async def test_concurrent_redemptions_never_double_spend_or_overrun(kafka, issuance_schema, tmp_path):
    port = free_port()
    env = {"ISSUANCE_SCHEMA_NAME": issuance_schema, "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           "ISSUANCE_HTTP_PORT": str(port), "ISSUANCE_FAILED_ATTEMPTS_BURST": "100000000",
           "VOUCHERSTREAM_POSTGRES_POOL_MAX": "20", "ISSUANCE_LOG_LEVEL": "WARNING"}
    async with service_process("issuance", env, port, tmp_path / "issuance.log"):
        key = await create_api_key(issuance_schema)
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500, keepalive_expiry=10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                                     limits=limits, timeout=60) as c:
            rounds = int(os.environ.get("CHECKOUT_RACE_ROUNDS", "5"))
            customers = [f"cc-{i:03d}" for i in range(rounds + 53)]
            assert (await c.post("/v1/campaigns", json=campaign(budget={
                "limit": {"amount": len(customers) * 2000, "currency": USD}}))).status_code == 201
            assert (await c.post("/v1/campaigns", json=campaign(id="partners", segment="nobody", budget={
                "limit": {"amount": 100 * 2000, "currency": USD}, "per_customer": None}))).status_code == 201
            assert (await c.post("/v1/campaigns", json=campaign(id="gift", segment="vip", offer={
                "kind": "gift_card", "balance": {"amount": 10000, "currency": USD}}))).status_code == 201

            await publish(kafka, "consent-state", [consent_state(x, "personalized_offers", "email")
                                                   for x in customers + ["g-1"]])
            await asyncio.sleep(1)
            await publish(kafka, "segment-entered", [entered(x) for x in customers] + [entered("g-1", segment="vip")])
            records = await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"), expect=len(customers) + 1, timeout=60)
            codes = {d.customer_id: d.code for d in (ev.decode(r.value)[1] for r in records)}

            # 1. 200 at once on one code, round after round: exactly one wins each time.
            for customer in customers[:rounds]:
                answers = await fire(c, [{"code": codes[customer], "customer_id": customer, "order": order(15000)}] * 200)
                statuses = Counter(a.status_code for a in answers)
                assert statuses == Counter({201: 1, 409: 199}), (customer, statuses)

            # 1b. One Idempotency-Key sent 50 times at once with the same body: one redemption, one
            # answer for all; then 50 at once with one key on 50 other codes: one wins, 49 are refused.
            customer = customers[rounds]
            answers = await fire(c, [{"code": codes[customer], "customer_id": customer, "order": order(15000)}] * 50,
                                 idempotency_key="same-key")
            assert {a.status_code for a in answers} == {201}, Counter(a.status_code for a in answers)
            assert len({a.json()["redemption_id"] for a in answers}) == 1
            assert Counter(a.headers["Idempotent-Replayed"] for a in answers) == Counter({"true": 49, "false": 1})
            others = customers[rounds + 1:rounds + 51]
            answers = await fire(c, [{"code": codes[x], "customer_id": x, "order": order(15000)} for x in others],
                                 idempotency_key="shared-key")
            statuses = Counter(a.status_code for a in answers)
            assert statuses == Counter({201: 1, 422: 49}), statuses
            assert {a.json()["reason"] for a in answers if a.status_code == 422} == {"idempotency_key_reused"}
            # 1c. 200 at once on one code through the Voucherify-compatible surface (each its own
            # order): one redemption, 199 refusals in Voucherify's shape.
            customer = customers[rounds + 51]
            answers = await fire_voucherify(c, key, [{
                "redeemables": [{"object": "voucher", "id": codes[customer]}], "customer": {"source_id": customer},
                "order": {"source_id": f"race-{i}", "amount": 15000}} for i in range(200)])
            statuses = Counter(a.status_code for a in answers)
            assert statuses == Counter({200: 1, 400: 199}), statuses
            assert {a.json()["key"] for a in answers if a.status_code == 400} == {"quantity_exceeded"}
            redeemed_in_race = rounds + 3

            # 1d. 50 checkout sessions ask to LOCK one code at once: one holds it.
            customer = customers[rounds + 52]
            answers = await fire_voucherify(c, key, [{
                "redeemables": [{"object": "voucher", "id": codes[customer]}], "customer": {"source_id": customer},
                "order": {"amount": 15000}, "session": {"type": "LOCK", "key": f"s-{i}"}} for i in range(50)],
                route="validations")
            assert Counter(a.json()["valid"] for a in answers) == Counter({True: 1, False: 49})
            assert {a.json()["redeemables"][0]["result"]["error"]["key"] for a in answers
                    if not a.json()["valid"]} == {"multiple_requests"}

            # 2. 500 distinct partner codes at once on a budget for 100: exactly 100.
            r = await c.post("/v1/campaigns/partners/partner-codes", json={"partner": "aff-1", "count": 500})
            partner_codes = [row["code"] for row in csv.DictReader(io.StringIO(r.text))]
            answers = await fire(c, [{"code": code, "customer_id": f"p-{i}", "order": order(15000)}
                                     for i, code in enumerate(partner_codes)])
            statuses = Counter(a.status_code for a in answers)
            assert statuses[201] == 100 and statuses[409] == 400, statuses
            assert {a.json()["reason"] for a in answers if a.status_code == 409} == {"budget_exhausted"}

            # 3. 50 partial spends of one 100 USD gift card at once: never below zero, all of it spent.
            answers = await fire(c, [{"code": codes["g-1"], "customer_id": "g-1", "order": order(300)}] * 50)
            spent = sum(a.json()["discount"]["amount"] for a in answers if a.status_code == 201)
            balances = [a.json()["remaining_balance"]["amount"] for a in answers if a.status_code == 201]
            assert spent == 10000 and min(balances) == 0 and all(b >= 0 for b in balances)
            assert Counter(a.status_code for a in answers)[201] == 34  # 33 x 3.00 USD, then the last 1.00 USD

            budgets = {cid: (await c.get(f"/v1/campaigns/{cid}/budget")).json() for cid in ("cart-20", "partners", "gift")}
        assert "Traceback" not in (tmp_path / "issuance.log").read_text()

    assert budgets["cart-20"]["spent"] == redeemed_in_race * 2000
    assert budgets["cart-20"]["reserved"] == (len(customers) - redeemed_in_race) * 2000
    assert budgets["partners"]["spent"] == 100 * 2000 and budgets["partners"]["remaining"] == 0
    assert budgets["gift"]["spent"] == 10000 and budgets["gift"]["reserved"] == 0
    conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(), server_settings={"search_path": issuance_schema})
    try:
        history = await conn.fetch("SELECT campaign_id, seq, limit_minor, reserved, spent FROM budget_ledger_history"
                                   " ORDER BY campaign_id, seq")
        assert all(h["reserved"] + h["spent"] <= h["limit_minor"] and h["reserved"] >= 0 for h in history)
        for cid in ("cart-20", "partners", "gift"):
            seqs = [h["seq"] for h in history if h["campaign_id"] == cid]
            assert seqs == list(range(1, len(seqs) + 1))
        assert await conn.fetchval("SELECT count(*) FROM redemptions WHERE campaign_id = 'cart-20'") == redeemed_in_race
    finally:
        await conn.close()
