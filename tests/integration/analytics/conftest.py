import httpx
import pytest

from services.analytics.app import AnalyticsService
from services.analytics.settings import AnalyticsSettings
from shared import auth, db
from shared.settings import PostgresSettings
from tests.integration.issuance.conftest import issuance, issuance_schema  # noqa: F401 - shared fixtures
from tests.support import unique


@pytest.fixture
async def analytics(kafka):
    """The analytics service on the test's topics and its own schema (dropped afterwards), with an
    HTTP ``client``; counters published at most every 0.2 s so the tests need not wait."""
    schema = unique("test_analytics_")
    service = AnalyticsService(AnalyticsSettings(kafka=kafka, schema_name=schema, publish_interval_s=0.2))
    await service.start()
    async with service.pool.acquire() as conn:
        _, key = await auth.create_key(conn, "tests", ["marketing"])
    service.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http(manage_lifecycle=False)),
                                       base_url="http://analytics", headers={"Authorization": f"Bearer {key}"})
    try:
        yield service
    finally:
        await service.client.aclose()
        await service.stop()
        pool = await db.create_pool(PostgresSettings(), schema, min_size=1, max_size=1)
        await db.drop_schema(pool, schema)
        await pool.close()
