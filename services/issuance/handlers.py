"""The issuance use cases. A consumed batch is decided in one PostgreSQL transaction: consent
updates, revocations, vouchers or refusals, erasures and exports, with their events written to the
outbox in the same transaction. The campaigns' ledger rows are locked first, in id order, so two
instances of the service serialise per campaign and never deadlock."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
from pydantic import ValidationError

from services.issuance import codes, store
from services.issuance.budget import Ledger
from services.issuance.campaigns import CampaignSpec, offer_summary, personal_brand
from services.issuance.metrics import IssuanceMetrics
from services.issuance.rules import NO_CONSENT, Deny, Issue, decide
from services.issuance.settings import IssuanceSettings
from shared import events as ev
from shared import sealing
from shared.outbox import OutboxRecord, enqueue, event_record

log = logging.getLogger(__name__)
SOURCE = "voucherstream/issuance"
CONTACT_CHANNELS = {ev.Purpose.EMAIL: ev.Channel.EMAIL, ev.Purpose.SMS: ev.Channel.SMS, ev.Purpose.PUSH: ev.Channel.PUSH}


@dataclass
class Batch:
    """What one transaction changes, gathered so it is written in a few statements."""

    ledgers: dict[str, Ledger]
    changed: set[str] = field(default_factory=set)
    history: list[tuple] = field(default_factory=list)
    outbox: list[OutboxRecord] = field(default_factory=list)

    def step(self, campaign_id: str, new: Ledger, cause: str, voucher_id: str | None) -> Ledger:
        self.ledgers[campaign_id] = new
        self.changed.add(campaign_id)
        self.history.append((campaign_id, new.seq, new.limit, new.reserved, new.spent, cause, voucher_id))
        return new


class IssuanceHandlers:
    def __init__(self, settings: IssuanceSettings, metrics: IssuanceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.hash_key = settings.code_hash_key.get_secret_value().encode()
        self.seal_key = codes.seal_key(settings.code_seal_key.get_secret_value())
        self.outbox_key = sealing.derive_key(settings.code_seal_key.get_secret_value(), "outbox")
        self.pseudonym_key = settings.pseudonym_key.get_secret_value().encode()
        self._specs: dict[tuple[str, int], CampaignSpec] = {}

    def spec(self, row: asyncpg.Record) -> CampaignSpec:
        """Parsed campaign definitions, cached by (id, version)."""
        key = (row["id"], row["version"])
        spec = self._specs.get(key)
        if spec is None:
            spec = CampaignSpec.model_validate(row["definition"])
            self._specs[key] = spec
        return spec

    def pseudonym(self, customer_id: str) -> str:
        return "erased-" + hmac.new(self.pseudonym_key, customer_id.encode(), hashlib.sha256).hexdigest()[:32]

    # ------------------------------------------------------------------ the consumed batch

    async def on_batch(self, pool: asyncpg.Pool, messages) -> None:
        states: dict[str, ev.ConsentState | None] = {}
        entries, erasures, exports = [], [], []
        for m in messages:
            if m.topic == "consent-state":
                states[m.key] = m.event  # the latest per customer wins; None is a tombstone
            elif m.topic == "segment-entered":
                entries.append(m)
            elif m.topic == "erasure-requested":
                erasures.append(m.event)
            elif m.topic == "export-requested":
                exports.append(m.event)
        async with pool.acquire() as conn, conn.transaction():
            withdrawn = await self.apply_consent(conn, states)
            erased = [e.customer_id for e in erasures]
            closing = await store.active_vouchers_of(conn, withdrawn + erased) if withdrawn or erased else []
            campaign_rows = await store.active_campaigns_for(conn, [m.event.segment for m in entries])
            batch = Batch(await store.lock_ledgers(conn, {r["campaign_id"] for r in closing}
                                                   | {r["id"] for r in campaign_rows}))
            if closing:
                await self.revoke(conn, batch, closing, withdrawn, set(erased))
            if entries:
                await self.issue(conn, batch, entries, campaign_rows)
            for request in erasures:
                await self.erase(conn, batch, request)
            for request in exports:
                await self.export(conn, batch, request)
            await store.save_ledgers(conn, [batch.ledgers[c] for c in sorted(batch.changed)], batch.history)
            await enqueue(conn, batch.outbox)
        now = time.time()
        for m in entries:
            self.metrics.segment_to_voucher.observe(max(now - m.timestamp_ms / 1000, 0))
        for cid in batch.changed:
            lg = batch.ledgers[cid]
            for name, value in (("limit", lg.limit), ("reserved", lg.reserved), ("spent", lg.spent),
                                ("remaining", lg.remaining)):
                self.metrics.ledger.labels(cid, name).set(value)

    # ------------------------------------------------------------------ consent

    async def apply_consent(self, conn: asyncpg.Connection, states: dict[str, ev.ConsentState | None]) -> list[str]:
        """Keeps each customer's offer and channel consent; returns the customers who no longer
        consent to personalized offers (their vouchers may be revoked)."""
        if not states:
            return []
        before = await store.consents(conn, list(states))
        rows, withdrawn = [], []
        for cid, state in states.items():
            if state is None:
                await store.forget_consent(conn, cid)
                continue
            offers = state.granted(ev.Purpose.PERSONALIZED_OFFERS)
            channels = sorted(ch.value for p, ch in CONTACT_CHANNELS.items() if state.granted(p))
            rows.append((cid, offers, channels, state.updated_at))
            if not offers and before.get(cid, NO_CONSENT).personalized_offers:
                withdrawn.append(cid)
        await store.save_consents(conn, rows)
        return withdrawn

    async def revoke(self, conn: asyncpg.Connection, batch: Batch, vouchers: list[asyncpg.Record],
                     withdrawn: list[str], erased: set[str]) -> None:
        specs = {r["id"]: self.spec(r) for r in await _campaign_rows(conn, {v["campaign_id"] for v in vouchers})}
        now = ev.now_utc()
        closing = []
        for v in vouchers:
            reason = "customer_erased" if v["customer_id"] in erased else "consent_withdrawn"
            if reason == "consent_withdrawn" and not specs[v["campaign_id"]].revoke_on_withdrawal:
                continue
            lg = batch.step(v["campaign_id"], batch.ledgers[v["campaign_id"]].release(v["reserved"]), "revoked", v["id"])
            closing.append(v["id"])
            batch.outbox.append(event_record("voucher-revoked", ev.VoucherRevoked(
                voucher_id=v["id"], campaign_id=v["campaign_id"], customer_id=v["customer_id"], reason=reason,
                released=ev.Money(amount=v["reserved"], currency=v["currency"]), revoked_at=now,
                ledger=lg.snapshot()), source=SOURCE))
            self.metrics.closed.labels(v["campaign_id"], "revoked").inc()
        await store.close_vouchers(conn, closing, "revoked", now)

    # ------------------------------------------------------------------ issuing

    async def issue(self, conn: asyncpg.Connection, batch: Batch, entries, campaign_rows) -> None:
        now = ev.now_utc()
        by_segment: dict[str, list[CampaignSpec]] = defaultdict(list)
        for row in campaign_rows:
            by_segment[row["segment"]].append(self.spec(row))
        pairs = []
        seen: set[tuple[str, str, str]] = set()
        for m in entries:
            e: ev.SegmentEntered = m.event
            for spec in by_segment.get(e.segment, ()):
                key = (spec.id, e.customer_id, e.trigger_key)
                if key not in seen:
                    seen.add(key)
                    pairs.append((key, e, spec))
        if not pairs:
            return
        known = await store.known_attempts(conn, [k for k, _, _ in pairs])
        pairs = [p for p in pairs if p[0] not in known]  # a redelivery or a replay decides nothing again
        customers = [e.customer_id for _, e, _ in pairs]
        consent = await store.consents(conn, customers)
        counts = await store.voucher_counts(conn, [s.id for _, _, s in pairs], customers)
        attempts, vouchers = [], []
        for (campaign_id, customer_id, trigger), e, spec in pairs:
            outcome = decide(spec, customer_id=customer_id, preferred=e.preferred_channel,
                             consent=consent.get(customer_id, NO_CONSENT),
                             vouchers_of_customer=counts.get((campaign_id, customer_id), 0),
                             vouchers_of_campaign=batch.ledgers[campaign_id].vouchers, now=now)
            if isinstance(outcome, Issue) and not batch.ledgers[campaign_id].fits(outcome.max_discount):
                outcome = Deny("budget_exhausted", outcome.variant)
            if isinstance(outcome, Deny):
                attempts.append((campaign_id, customer_id, trigger, "denied", outcome.reason, outcome.variant, None, now))
                batch.outbox.append(event_record("issuance-denied", ev.IssuanceDenied(
                    campaign_id=campaign_id, customer_id=customer_id, reason=outcome.reason, trigger_key=trigger,
                    variant=outcome.variant, denied_at=now), source=SOURCE))
                self.metrics.denied.labels(campaign_id, outcome.reason).inc()
                continue
            voucher_id = str(uuid.uuid4())
            lg = batch.step(campaign_id, batch.ledgers[campaign_id].reserve(outcome.max_discount), "issued", voucher_id)
            counts[(campaign_id, customer_id)] = counts.get((campaign_id, customer_id), 0) + 1
            attempts.append((campaign_id, customer_id, trigger, "issued", None, outcome.variant, voucher_id, now))
            vouchers.append((voucher_id, spec, customer_id, trigger, outcome, lg, e.facts))
        await store.insert_attempts(conn, attempts)
        await self._store_vouchers(conn, vouchers, now)
        for voucher_id, spec, customer_id, trigger, outcome, lg, _ in vouchers:
            batch.outbox.append(event_record("voucher-issued", ev.VoucherIssued(
                voucher_id=voucher_id, campaign_id=spec.id, customer_id=customer_id, variant=outcome.variant,
                channel=outcome.channel, trigger_key=trigger,
                max_discount=ev.Money(amount=outcome.max_discount, currency=spec.currency),
                expires_at=spec.validity.expires_at(now), issued_at=now, ledger=lg.snapshot()), source=SOURCE))
            self.metrics.issued.labels(spec.id, outcome.variant, outcome.channel.value).inc()

    async def _store_vouchers(self, conn: asyncpg.Connection, vouchers: list, now: datetime) -> None:
        """Draws each voucher's code, stores its hash (and, on-site, its sealed copy) and queues
        the delivery request; a hash collision (never seen, but possible) draws again."""
        pending = {v[0]: v for v in vouchers}
        while pending:
            rows, deliveries = [], {}
            for voucher_id, spec, customer_id, trigger, outcome, _, facts in pending.values():
                code = spec.code.generate()
                offer = spec.offer_for(outcome.variant)
                brand = personal_brand(offer, facts)
                onsite = outcome.channel == ev.Channel.ONSITE
                rows.append((voucher_id, spec.id, customer_id, None, codes.code_hash(self.hash_key, code),
                             codes.seal(self.seal_key, code, voucher_id) if onsite else None,
                             outcome.variant, outcome.channel.value, offer.kind, brand, spec.currency,
                             outcome.max_discount,
                             offer.balance.amount if offer.kind == "gift_card" else None, "active", trigger, now,
                             spec.validity.expires_at(now)))
                if not onsite:
                    deliveries[voucher_id] = event_record("delivery-requested", ev.DeliveryRequested(
                        voucher_id=voucher_id, campaign_id=spec.id, customer_id=customer_id,
                        channel=outcome.channel, code=code, offer=offer_summary(offer, brand),
                        expires_at=spec.validity.expires_at(now)), source=SOURCE, sealed=True)
            collided = await store.insert_vouchers(conn, rows)
            await enqueue(conn, [r for vid, r in deliveries.items() if vid not in collided], self.outbox_key)
            if collided:
                log.warning("voucher code collision; drawing again", extra={"count": len(collided)})
            pending = {vid: v for vid, v in pending.items() if vid in collided}

    # ------------------------------------------------------------------ expiry

    async def expire_due(self, pool: asyncpg.Pool) -> int:
        """Expires active vouchers past their validity and releases what they reserved."""
        now = ev.now_utc()
        async with pool.acquire() as conn, conn.transaction():
            due = await store.due_vouchers(conn, now, self.settings.expiry_batch)
            if not due:
                return 0
            batch = Batch(await store.lock_ledgers(conn, {v["campaign_id"] for v in due}))
            for v in due:
                lg = batch.step(v["campaign_id"], batch.ledgers[v["campaign_id"]].release(v["reserved"]), "expired", v["id"])
                if v["customer_id"] is not None:
                    batch.outbox.append(event_record("voucher-expired", ev.VoucherExpired(
                        voucher_id=v["id"], campaign_id=v["campaign_id"], customer_id=v["customer_id"],
                        released=ev.Money(amount=v["reserved"], currency=v["currency"]), expired_at=now,
                        ledger=lg.snapshot()), source=SOURCE))
                self.metrics.closed.labels(v["campaign_id"], "expired").inc()
            await store.close_vouchers(conn, [v["id"] for v in due], "expired", now)
            await store.save_ledgers(conn, [batch.ledgers[c] for c in sorted(batch.changed)], batch.history)
            await enqueue(conn, batch.outbox)
        return len(due)

    # ------------------------------------------------------------------ privacy

    async def erase(self, conn: asyncpg.Connection, batch: Batch, request: ev.ErasureRequested) -> None:
        erased = await store.pseudonymize(conn, request.customer_id, self.pseudonym(request.customer_id))
        batch.outbox.append(event_record("erasure-completed", ev.ErasureCompleted(
            request_id=request.request_id, customer_id=request.customer_id, service="issuance",
            completed_at=ev.now_utc(), erased=erased), source=SOURCE))

    async def export(self, conn: asyncpg.Connection, batch: Batch, request: ev.ExportRequested) -> None:
        cid = request.customer_id
        consent = (await store.consents(conn, [cid])).get(cid)
        data = {
            "consent_as_known_to_issuance": None if consent is None else {
                "personalized_offers": consent.personalized_offers, "channels": sorted(consent.channels)},
            "vouchers": [_jsonable(r) for r in await store.vouchers_of(conn, cid)],
            "issuance_decisions": [_jsonable(r) for r in await store.attempts_of(conn, cid)],
            "redemptions": [_jsonable(r) for r in await store.redemptions_of(conn, cid)],
            "note": "voucher codes are stored only as keyed hashes and cannot be exported",
        }
        batch.outbox.append(event_record("export-completed", ev.ExportCompleted(
            request_id=request.request_id, customer_id=cid, service="issuance", completed_at=ev.now_utc(),
            data=data), source=SOURCE))


async def _campaign_rows(conn: asyncpg.Connection, ids: set[str]) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, definition, version FROM campaigns WHERE id = ANY($1::text[])", list(ids))


def _jsonable(record: asyncpg.Record) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(record).items()}


def parse_campaign(definition: dict) -> CampaignSpec:
    """Raises ``ValueError`` with pydantic's precise message."""
    try:
        return CampaignSpec.model_validate(definition)
    except ValidationError as exc:
        raise ValueError(ev.describe_validation_error(exc)) from None


class CampaignError(Exception):
    """A refused campaign change; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def campaign_event(spec: CampaignSpec, status: str) -> ev.CampaignChanged:
    return ev.CampaignChanged(campaign_id=spec.id, name=spec.name, status=status, segment=spec.segment,
                              offer=offer_summary(spec.offer), budget_limit=spec.budget.limit,
                              variants=[ev.Variant(name=v.name, weight=v.weight) for v in spec.variants],
                              holdout_percent=spec.holdout_percent, updated_at=ev.now_utc())


class CampaignAdmin:
    """Campaign changes: each one and its ``campaign-changed`` event commit together."""

    def __init__(self, handlers: IssuanceHandlers) -> None:
        self.handlers = handlers

    async def create(self, conn: asyncpg.Connection, spec: CampaignSpec, status: str = "active") -> None:
        definition = spec.model_dump(mode="json")
        if not await store.insert_campaign(conn, spec.id, spec.segment, status, definition, spec.currency,
                                           spec.budget.limit.amount):
            raise CampaignError(409, f"campaign {spec.id} already exists")
        await enqueue(conn, [event_record("campaign-changed", campaign_event(spec, status), source=SOURCE)])

    async def replace(self, conn: asyncpg.Connection, spec: CampaignSpec) -> str:
        row = await store.campaign(conn, spec.id, for_update=True)
        if row is None:
            raise CampaignError(404, f"no campaign {spec.id}")
        old = self.handlers.spec(row)
        if old.currency != spec.currency:
            raise CampaignError(409, "a campaign's currency cannot change (its ledger is kept in it)")
        batch = Batch(await store.lock_ledgers(conn, [spec.id]))
        lg = batch.ledgers[spec.id]
        if spec.budget.limit.amount != lg.limit:
            if spec.budget.limit.amount < lg.reserved + lg.spent:
                raise CampaignError(409, f"budget.limit {spec.budget.limit.amount} is below what is already reserved "
                                         f"and spent ({lg.reserved + lg.spent})")
            from dataclasses import replace as _replace

            batch.step(spec.id, _replace(lg, limit=spec.budget.limit.amount, seq=lg.seq + 1), "limit_changed", None)
            await store.save_ledgers(conn, [batch.ledgers[spec.id]], batch.history)
        await store.update_campaign(conn, spec.id, spec.segment, spec.model_dump(mode="json"))
        await enqueue(conn, [event_record("campaign-changed", campaign_event(spec, row["status"]), source=SOURCE)])
        return row["status"]

    async def set_status(self, conn: asyncpg.Connection, campaign_id: str, status: str) -> CampaignSpec:
        row = await store.campaign(conn, campaign_id, for_update=True)
        if row is None:
            raise CampaignError(404, f"no campaign {campaign_id}")
        if row["status"] == "ended":
            raise CampaignError(409, f"campaign {campaign_id} has ended")
        spec = self.handlers.spec(row)
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
                raise CampaignError(404, f"no campaign {campaign_id}")
            spec = self.handlers.spec(row)
        now = ev.now_utc()
        expires = spec.validity.expires_at(now)
        offer = spec.offer_for(spec.variants[0].name)
        out: list[str] = []
        chunk = 20_000
        while len(out) < count:
            n = min(chunk, count - len(out))
            fresh = [spec.code.generate() for _ in range(n)]
            rows = [(str(uuid.uuid4()), spec.id, None, partner, codes.code_hash(self.handlers.hash_key, c), None,
                     spec.variants[0].name, "partner", offer.kind, None, spec.currency, 0,
                     offer.balance.amount if offer.kind == "gift_card" else None, "active", None, now, expires)
                    for c in fresh]
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await store.copy_vouchers(conn, rows)
            except asyncpg.UniqueViolationError:
                log.warning("partner code collision; drawing the chunk again")
                continue
            out.extend(fresh)
            self.handlers.metrics.partner_codes.labels(spec.id).inc(n)
            if progress is not None:
                progress(len(out), count)
        return spec, out, expires
