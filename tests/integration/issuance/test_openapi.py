"""The issuance service's served OpenAPI document survives schemathesis: no 5xx, no answer off
the schema, every status code documented."""

from __future__ import annotations

import httpx

from bench.common import free_port, service_process
from tests.support import create_api_key, schemathesis


async def test_schemathesis_finds_no_server_error_and_no_off_schema_answer(kafka, issuance_schema, tmp_path):
    port = free_port()
    env = {"ISSUANCE_SCHEMA_NAME": issuance_schema, "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           "ISSUANCE_HTTP_PORT": str(port)}
    async with service_process("issuance", env, port, tmp_path / "issuance.log"):
        key = await create_api_key(issuance_schema)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as c:
            assert (await c.post("/v1/campaigns", json={
                "id": "cart-20", "name": "x", "segment": "s", "currency": "USD",
                "offer": {"kind": "fixed_amount", "amount": {"amount": 2000, "currency": "USD"}},
                "validity": {"days_after_issue": 3}, "budget": {"limit": {"amount": 100000, "currency": "USD"}}})
                    ).status_code == 201
        code, report = await schemathesis(f"http://127.0.0.1:{port}", key, max_time=30)
    assert code == 0, report[-8000:]
    assert "Traceback" not in (tmp_path / "issuance.log").read_text()
