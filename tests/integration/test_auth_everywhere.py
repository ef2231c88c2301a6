"""Every route that serves data, in every service's served OpenAPI document, refuses a missing key
(401) and a key without its scope (403), and is open to some scope; schemathesis with a key finds
no 5xx in the services whose routes had none before."""

from __future__ import annotations

import re

import httpx
import pytest

from bench.common import free_port, service_process
from shared import auth, db
from shared.settings import PostgresSettings
from tests.support import create_api_key, schemathesis, unique

OPEN = {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
SERVICES = ("consent", "segmentation", "issuance", "analytics")


def filled(path: str) -> str:
    """A concrete path for a template (every path parameter accepts a short lower-case id)."""
    return re.sub(r"\{[^}]+\}", "abc1", path)


@pytest.mark.parametrize("service", SERVICES)
async def test_every_data_route_needs_a_key_with_its_scope(service, kafka, tmp_path):
    port, schema = free_port(), unique(f"test_{service}_")
    env = {f"{service.upper()}_SCHEMA_NAME": schema, "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           f"{service.upper()}_HTTP_PORT": str(port)}
    try:
        await walk(service, schema, port, env, tmp_path)
    finally:
        pool = await db.create_pool(PostgresSettings(), schema, min_size=1, max_size=1)
        await db.drop_schema(pool, schema)
        await pool.close()


async def walk(service: str, schema: str, port: int, env: dict, tmp_path) -> None:
    async with service_process(service, env, port, tmp_path / f"{service}.log"):
        keys = {scope: await create_api_key(schema, [scope]) for scope in auth.SCOPES}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            spec = (await c.get("/openapi.json")).json()
            assert "bearer" in spec["components"]["securitySchemes"]
            routes = [(method, path) for path, ops in spec["paths"].items() for method in ops if path not in OPEN]
            assert routes, f"{service} serves no data route"
            for method, path in routes:
                assert spec["paths"][path][method].get("security"), f"{method} {path} declares no security"

                async def call(key: str | None, method: str = method, path: str = path) -> int:
                    headers = {"Authorization": f"Bearer {key}"} if key else {}
                    if method in ("post", "put"):
                        headers["Idempotency-Key"] = "k-1"
                    r = await c.request(method.upper(), filled(path), headers=headers,
                                        json={} if method in ("post", "put") else None)
                    return r.status_code

                assert await call(None) == 401, f"{method} {path} without a key"
                assert await call("vs_deadbeef_not-a-key") == 401, f"{method} {path} with an unknown key"
                answers = {scope: await call(key) for scope, key in keys.items()}
                assert 403 in answers.values(), f"{method} {path} is open to every scope: {answers}"
                assert set(answers.values()) - {401, 403}, f"{method} {path} is open to no scope: {answers}"
        if service in ("segmentation", "analytics"):
            code, report = await schemathesis(f"http://127.0.0.1:{port}", await create_api_key(schema), max_time=15)
            assert code == 0, report[-8000:]
    assert "Traceback" not in (tmp_path / f"{service}.log").read_text()
