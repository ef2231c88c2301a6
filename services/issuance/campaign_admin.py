"""Campaign administration: each change to a campaign and its ``campaign-changed`` event commit
together; partner codes are drawn in chunks."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

import asyncpg
from pydantic import ValidationError

from services.issuance import codes, store
from services.issuance.budget import Batch
from services.issuance.campaigns import CampaignSpec, Catalogue, offer_summary
from services.issuance.handlers import SOURCE
from services.issuance.metrics import IssuanceMetrics
from shared import events as ev
from shared.outbox import enqueue, event_record

log = logging.getLogger(__name__)


def parse_campaign(definition: dict) -> CampaignSpec:
    """Raises ``ValueError`` with pydantic's precise message."""
    try:
        return CampaignSpec.model_validate(definition)
    except ValidationError as exc:
        raise ValueError(ev.describe_validation_error(exc)) from None


class CampaignError(Exception):
    """A refused campaign change."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NoSuchCampaign(CampaignError):
    pass


class CampaignConflict(CampaignError):
    """The change contradicts the campaign as it is (exists already, ended, currency, budget)."""


def campaign_event(spec: CampaignSpec, status: str) -> ev.CampaignChanged:
    return ev.CampaignChanged(campaign_id=spec.id, name=spec.name, status=status, segment=spec.segment,
                              offer=offer_summary(spec.offer), budget_limit=spec.budget.limit,
                              variants=[ev.Variant(name=v.name, weight=v.weight) for v in spec.variants],
                              holdout_percent=spec.holdout_percent, updated_at=ev.now_utc())


class CampaignAdmin:
    """Campaign changes: each one and its ``campaign-changed`` event commit together."""

    def __init__(self, catalogue: Catalogue, hash_key: bytes, metrics: IssuanceMetrics) -> None:
        self.catalogue = catalogue
        self.hash_key = hash_key
        self.metrics = metrics

    async def create(self, conn: asyncpg.Connection, spec: CampaignSpec, status: str = "active") -> None:
        definition = spec.model_dump(mode="json")
        if not await store.insert_campaign(conn, spec.id, spec.segment, status, definition, spec.currency,
                                           spec.budget.limit.amount):
            raise CampaignConflict(f"campaign {spec.id} already exists")
        await enqueue(conn, [event_record("campaign-changed", campaign_event(spec, status), source=SOURCE)])

    async def replace(self, conn: asyncpg.Connection, spec: CampaignSpec) -> str:
        row = await store.campaign(conn, spec.id, for_update=True)
        if row is None:
            raise NoSuchCampaign(f"no campaign {spec.id}")
        old = self.catalogue.spec(row)
        if old.currency != spec.currency:
            raise CampaignConflict("a campaign's currency cannot change (its ledger is kept in it)")
        batch = Batch(await store.lock_ledgers(conn, [spec.id]))
        lg = batch.ledgers[spec.id]
        if spec.budget.limit.amount != lg.limit:
            if spec.budget.limit.amount < lg.reserved + lg.spent:
                raise CampaignConflict(f"budget.limit {spec.budget.limit.amount} is below what is already reserved "
                                         f"and spent ({lg.reserved + lg.spent})")
            batch.step(spec.id, lg.with_limit(spec.budget.limit.amount), "limit_changed", None)
            await store.save_planned(conn, batch.steps)
        await store.update_campaign(conn, spec.id, spec.segment, spec.model_dump(mode="json"))
        await enqueue(conn, [event_record("campaign-changed", campaign_event(spec, row["status"]), source=SOURCE)])
        return row["status"]

    async def set_status(self, conn: asyncpg.Connection, campaign_id: str, status: str) -> CampaignSpec:
        row = await store.campaign(conn, campaign_id, for_update=True)
        if row is None:
            raise NoSuchCampaign(f"no campaign {campaign_id}")
        if row["status"] == "ended":
            raise CampaignConflict(f"campaign {campaign_id} has ended")
        spec = self.catalogue.spec(row)
        if row["status"] != status:
            await store.set_status(conn, campaign_id, status)
            await enqueue(conn, [event_record("campaign-changed", campaign_event(spec, status), source=SOURCE)])
        return spec

    async def partner_codes(self, pool: asyncpg.Pool, campaign_id: str, partner: str, count: int,
                            progress=None) -> tuple[CampaignSpec, list[str], datetime]:
        """Non-personal codes for affiliates and influencers, attributed to ``partner``. They
        reserve nothing now; each redemption spends from the remaining budget."""
        async with pool.acquire() as conn:
            row = await store.campaign(conn, campaign_id)
            if row is None:
                raise NoSuchCampaign(f"no campaign {campaign_id}")
            spec = self.catalogue.spec(row)
        now = ev.now_utc()
        expires = spec.validity.expires_at(now)
        offer = spec.offer_for(spec.variants[0].name)
        out: list[str] = []
        chunk = 20_000
        while len(out) < count:
            n = min(chunk, count - len(out))
            fresh = [spec.code.generate() for _ in range(n)]
            rows = [store.NewVoucher(
                id=str(uuid.uuid4()), campaign_id=spec.id, customer_id=None, partner=partner,
                code_hash=codes.code_hash(self.hash_key, c), code_sealed=None, variant=spec.variants[0].name,
                channel="partner", kind=offer.kind, brand=None, currency=spec.currency, reserved=0,
                balance=offer.balance.amount if offer.kind == "gift_card" else None, status="active", trigger_key=None,
                issued_at=now, expires_at=expires) for c in fresh]
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await store.copy_vouchers(conn, rows)
            except asyncpg.UniqueViolationError:
                log.warning("partner code collision; drawing the chunk again")
                continue
            out.extend(fresh)
            self.metrics.partner_codes.labels(spec.id).inc(n)
            if progress is not None:
                progress(len(out), count)
        return spec, out, expires
