"""Wiring of the redemption analytics service: exact counters per campaign, variant and channel,
derived from the issuance events, published on the compacted ``budget-counters`` topic (at most
once a second per campaign), as Prometheus metrics, and at ``GET /v1/campaigns/{id}/stats``.

Why PostgreSQL here (as in segmentation): the events are keyed by customer, the counters by
campaign. Exactness needs per-voucher and per-redemption state (so a duplicate is a no-op) and the
ledger snapshot with the highest sequence number; one transaction per consumed batch gives both
without a repartition topic. The state is still a pure function of the stream: dropping the
schema and replaying the topics rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.analytics import api
from services.analytics.handlers import TOPICS, AnalyticsHandlers
from services.analytics.metrics import AnalyticsMetrics
from services.analytics.settings import AnalyticsSettings
from shared.service import Service


class AnalyticsService(Service):
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, settings: AnalyticsSettings) -> None:
        super().__init__(settings)
        self.settings: AnalyticsSettings = settings
        self.metrics: AnalyticsMetrics = AnalyticsMetrics(settings.service)
        self.handlers = AnalyticsHandlers(settings, self.metrics, self.keys)

    async def on_start(self) -> None:
        self.consume(TOPICS, lambda batch: self.handlers.on_batch(self.pool, batch))
        self.every("publish-counters", self.settings.check_interval_s, self.publish)

    async def publish(self) -> None:
        if await self.handlers.publish(self.pool):
            self.relay.wake()  # the counters go out now, not at the relay's next poll

    def routes(self, app: FastAPI) -> None:
        api.routes(app, self.auth, lambda: self.pool)


def create_app(settings: AnalyticsSettings | None = None) -> AnalyticsService:
    return AnalyticsService(settings or AnalyticsSettings())
