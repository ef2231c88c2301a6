"""Wiring of the issuance service: the consumer of segment-entered, consent-state and the privacy
requests; the expiry job; the HTTP API."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from fastapi import FastAPI

from services.issuance import api, store, voucherify_api
from services.issuance.campaign_admin import CampaignAdmin
from services.issuance.campaigns import Catalogue
from services.issuance.checkout_handlers import CheckoutHandlers
from services.issuance.checkout_sessions import CheckoutSessions
from services.issuance.handlers import IssuanceHandlers
from services.issuance.keyset import IssuanceKeys
from services.issuance.metrics import IssuanceMetrics
from services.issuance.ratelimit import FailureLimiter
from services.issuance.redemption_writer import RedemptionWriter
from services.issuance.settings import IssuanceSettings
from shared import db
from shared.service import Service


class IssuanceService(Service):
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, settings: IssuanceSettings) -> None:
        super().__init__(settings)
        self.settings: IssuanceSettings = settings
        self.metrics: IssuanceMetrics = IssuanceMetrics(settings.service)
        secrets = IssuanceKeys.of(settings)
        catalogue = Catalogue()
        self.handlers = IssuanceHandlers(settings, self.metrics,
                                         positions=lambda partitions: self.consumer.positions(partitions),
                                         end_offsets=lambda partitions: self.consumer.end_offsets(partitions),
                                         keys=self.keys, secrets=secrets, catalogue=catalogue)
        self.admin = CampaignAdmin(catalogue, secrets.hash_key, self.metrics)
        self.outbox_seal_key = secrets.outbox_key
        self.outbox_previous_seal_keys = secrets.outbox_keys[1:]
        self.writer_pool: asyncpg.Pool | None = None
        self.reader_pool: asyncpg.Pool | None = None
        self.limiter = FailureLimiter(lambda: self.reader_pool, secrets.pseudonym_key,
                                      per_minute=settings.failed_attempts_per_minute,
                                      burst=settings.failed_attempts_burst)
        self.listings = FailureLimiter(lambda: self.reader_pool, secrets.pseudonym_key, purpose="onsite",
                                       per_minute=settings.onsite_listings_per_minute,
                                       burst=settings.onsite_listings_burst)
        writer = RedemptionWriter(lambda: self.writer_pool, self.keys, max_batch=settings.redemption_batch_max,
                                  observe=self.observe_redemption_write)
        self.checkout = CheckoutHandlers(catalogue, secrets, self.keys, self.metrics, lambda: self.pool,
                                         lambda: self.reader_pool, writer, self.limiter,
                                         max_batch=settings.redemption_batch_max)
        self.sessions = CheckoutSessions(self.checkout, lambda: self.pool)

    async def on_start(self) -> None:
        s = self.settings
        self.writer_pool = await db.create_pool(s.postgres, s.db_schema, application_name=f"{s.service}-redemptions",
                                                min_size=1, max_size=s.redemption_write_connections)
        # The checkout's reads and failure-limit tokens: statements by key, run per request.
        self.reader_pool = await db.create_pool(s.postgres, s.db_schema, application_name=f"{s.service}-checkout",
                                                min_size=1, max_size=s.checkout_read_connections,
                                                session=db.KEY_PROBES)
        # Range assignment gives one instance the same partition of every input, so the consent-state
        # position it reads for a segment entry's partition is its own (see ordering.py).
        self.consume(["consent-state", "segment-entered", "erasure-requested", "export-requested"],
                     lambda batch: self.handlers.on_batch(self.pool, batch),
                     assignors=(RangePartitionAssignor,))
        self.every("expiry", self.settings.expiry_interval_s, self.expire)
        self.every("consent-holds", self.settings.consent_hold_check_s, self.release_held)
        self.every("failure-buckets", 60.0, self.forget_full_buckets)
        self.every("idempotency-retention", 3600.0, self.forget_idempotent_answers)

    def observe_redemption_write(self, size: int, seconds: float) -> None:
        self.metrics.redemption_batch.observe(size)
        self.metrics.redemption_write.observe(seconds)

    async def stop(self) -> None:
        await self.limiter.drain()  # (the HTTP server has stopped: no new give-backs)
        await self.listings.drain()
        await super().stop()
        for pool in (self.writer_pool, self.reader_pool):
            if pool is not None:
                await pool.close()

    async def forget_idempotent_answers(self) -> None:
        while await store.forget_idempotent_answers(self.pool, self.settings.idempotency_retention_days, 10_000) \
                >= 10_000:
            pass

    async def forget_full_buckets(self) -> None:
        await self.limiter.forget_full(self.pool)
        await self.listings.forget_full(self.pool)

    async def release_held(self) -> None:
        while await self.handlers.release_held(self.pool) >= 1000:
            pass

    async def expire(self) -> None:
        while await self.handlers.expire_due(self.pool) >= self.settings.expiry_batch:
            pass
        while await self.sessions.expire(self.pool, self.settings.expiry_batch) >= self.settings.expiry_batch:
            pass

    def routes(self, app: FastAPI) -> None:
        api.routes(app, self)
        voucherify_api.routes(app, self)


def create_app(settings: IssuanceSettings | None = None) -> IssuanceService:
    return IssuanceService(settings or IssuanceSettings())
