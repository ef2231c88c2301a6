"""Wiring of the consent service: the consumer of consent-changed and the privacy answers, the
pending-requests gauges, the export purge, and the HTTP API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.consent import api, store
from services.consent.handlers import ConsentHandlers
from services.consent.metrics import ConsentMetrics
from services.consent.settings import ConsentSettings
from shared import events as ev
from shared.service import Service
from shared.topics import CUSTOMER_PARTITIONS, partition_for


class ConsentService(Service):
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, settings: ConsentSettings) -> None:
        super().__init__(settings)
        self.settings: ConsentSettings = settings
        self.metrics: ConsentMetrics = ConsentMetrics(settings.service)
        self.handlers = ConsentHandlers(settings, self.metrics, self.keys)

    async def on_start(self) -> None:
        self.relay.on_published = self.handlers.observe_published
        self.consume(["consent-changed", "erasure-completed", "export-completed"],
                     lambda batch: self.handlers.on_batch(self.pool, batch),
                     validate=self.handlers.validate,
                     on_idle=lambda positions: self.handlers.on_idle(self.pool, positions))
        self.every("privacy-gauges", 5.0, self.update_gauges)
        self.every("export-purge", 3600.0, self.purge_exports)

    async def changed_end(self, customer_id: str) -> int:
        """The log end of the customer's partition of consent-changed (raises while Kafka is away)."""
        p = partition_for(customer_id.encode(), CUSTOMER_PARTITIONS)
        return (await self.consumer.end_offsets([("consent-changed", p)]))[("consent-changed", p)]

    async def update_gauges(self) -> None:
        async with self.pool.acquire() as conn:
            rows = {r["kind"]: r for r in await store.pending_requests(conn)}
        for kind in ("export", "erasure"):
            self.metrics.privacy_pending.labels(kind).set(rows[kind]["n"] if kind in rows else 0)
        oldest = rows.get("erasure")
        self.metrics.oldest_pending_erasure.set(
            (ev.now_utc() - oldest["oldest"]).total_seconds() if oldest else 0)

    async def purge_exports(self) -> None:
        async with self.pool.acquire() as conn:
            await store.purge_old_exports(conn, self.settings.export_retention_days * 86400.0)

    def routes(self, app: FastAPI) -> None:
        api.routes(app, self)


def create_app(settings: ConsentSettings | None = None) -> ConsentService:
    return ConsentService(settings or ConsentSettings())
