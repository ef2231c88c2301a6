"""Rotated keys: codes issued under the old code-hash key still validate and redeem while it is
kept among the previous keys, new codes are stored under the new one; on-site codes sealed under
the old seal key are still shown."""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from services.issuance import codes
from services.issuance.app import IssuanceService
from shared import auth
from tests.integration.issuance.conftest import campaign
from tests.integration.issuance.test_checkout import issue, order

NEW_KEY = "rotated-code-hash-key-0123456789abcdef"


async def test_codes_issued_under_the_old_key_validate_after_a_rotation(issuance, kafka):
    await issuance.client.post("/v1/campaigns", json=campaign())
    old = await issue(issuance, kafka, ["r-1", "r-2"])
    await issue(issuance, kafka, ["r-5"], segment="cart-abandoned-300", channel="onsite")
    await issuance.stop()  # the operator restarts with the new key, the old one kept as previous

    async def started(**keys) -> tuple[IssuanceService, httpx.AsyncClient]:
        service = IssuanceService(issuance.settings.model_copy(update=keys))
        await service.start()
        async with service.pool.acquire() as conn:
            _, key = await auth.create_key(conn, "till", ["checkout"])
        return service, httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http(manage_lifecycle=False)),
                                          base_url="http://issuance", headers={"Authorization": f"Bearer {key}"})

    async def valid(client, customer: str, code: str) -> bool:
        r = await client.post("/v1/validations", json={"code": code, "customer_id": customer, "order": order(20000)})
        return r.json()["valid"]

    forgot, client = await started(code_hash_key=SecretStr(NEW_KEY))
    try:  # without the old key, the old codes are unknown: this is what the previous keys are for
        assert not await valid(client, "r-1", old["r-1"])
    finally:
        await client.aclose()
        await forgot.stop()

    rotated, client = await started(code_hash_key=SecretStr(NEW_KEY),
                                    code_hash_previous_keys=[issuance.settings.code_hash_key],
                                    code_seal_key=SecretStr(NEW_KEY + "-seal"),
                                    code_seal_previous_keys=[issuance.settings.code_seal_key])
    try:
        assert await valid(client, "r-1", old["r-1"])
        async with rotated.pool.acquire() as conn:
            _, site = await auth.create_key(conn, "site", ["onsite"])
        shown = (await client.get("/v1/customers/r-5/offers", headers={"Authorization": f"Bearer {site}"})).json()
        assert shown["offers"][0]["code"], shown  # sealed under the old seal key, opened with it
        r = await client.post("/v1/redemptions", headers={"Idempotency-Key": "rot-1"}, json={
            "code": old["r-2"], "customer_id": "r-2", "order": order(20000)})
        assert r.status_code == 201, r.text
        rotated.client = client
        new = await issue(rotated, kafka, ["r-3"])  # issued by the rotated service: under the new key
        assert await valid(client, "r-3", new["r-3"])
        assert await rotated.pool.fetchval("SELECT count(*) FROM vouchers WHERE code_hash = $1",
                                           codes.code_hash(NEW_KEY.encode(), new["r-3"])) == 1
    finally:
        await client.aclose()
        await rotated.stop()
        await issuance.start()  # the fixture stops it again
