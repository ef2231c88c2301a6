from __future__ import annotations

import httpx
import pytest

from services.consent.app import ConsentService
from services.consent.settings import ConsentSettings
from shared import auth, db
from shared.settings import PostgresSettings
from tests.support import unique


@pytest.fixture
def privacy_services() -> list[str]:
    return ["consent"]


@pytest.fixture
async def consent(kafka, privacy_services):
    """The consent service, running in this process on the test's topics and schema."""
    schema = unique("test_consent_")
    settings = ConsentSettings(kafka=kafka, schema_name=schema, privacy_services=privacy_services)
    service = ConsentService(settings)
    await service.start()
    async with service.pool.acquire() as conn:
        _, service.api_key = await auth.create_key(conn, "tests", auth.SCOPES)
    app = service.http(manage_lifecycle=False)
    service.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://consent",
                                       headers={"Authorization": f"Bearer {service.api_key}"})
    yield service
    await service.client.aclose()
    await service.stop()
    pool = await db.create_pool(PostgresSettings(), schema, min_size=1, max_size=1)
    await db.drop_schema(pool, schema)
    await pool.close()
