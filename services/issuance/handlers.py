"""The issuance use cases. A consumed batch is decided in one PostgreSQL transaction: consent
updates, revocations, vouchers or refusals, erasures and exports, with their events written to the
outbox in the same transaction. The campaigns' ledger rows are locked first, in id order, so two
instances of the service serialise per campaign and never deadlock."""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from services.issuance import codes, ordering, ordering_store, store
from services.issuance.budget import Batch, Ledger
from services.issuance.campaigns import CampaignSpec, Catalogue, offer_summary, personal_brand
from services.issuance.gate import ConsentChanges, ConsentGate, Entry, Offsets
from services.issuance.keyset import IssuanceKeys
from services.issuance.metrics import IssuanceMetrics
from services.issuance.rules import NO_CONSENT, Deny, Issue, decide
from services.issuance.settings import IssuanceSettings
from shared import db, exports
from shared import events as ev
from shared.datakeys import DataKeys
from shared.outbox import enqueue, event_record

log = logging.getLogger(__name__)
SOURCE = "voucherstream/issuance"


class Issued(NamedTuple):
    """A voucher decided in this batch, until it is stored and announced."""

    voucher_id: str
    spec: CampaignSpec
    customer_id: str
    trigger: str
    outcome: Issue
    ledger: Ledger
    facts: dict[str, Any]
    trace: str | None  # the segment entry's trace context (shared.tracing)


class IssuanceHandlers:
    """Issuing from the consumed stream: the consent side of a batch, the segment entries it
    admits, expiry, and the privacy answers."""

    def __init__(self, settings: IssuanceSettings, metrics: IssuanceMetrics, positions: Offsets,
                 end_offsets: Offsets, keys: DataKeys, secrets: IssuanceKeys, catalogue: Catalogue) -> None:
        self.settings = settings
        self.metrics = metrics
        self.keys = keys
        self.secrets = secrets
        self.catalogue = catalogue
        self.gate = ConsentGate(secrets.pseudonym_key, settings.consent_hold_max_s, metrics, positions, end_offsets)

    # ------------------------------------------------------------------ the consumed batch

    async def on_batch(self, pool: asyncpg.Pool, messages) -> None:
        consumed = await self.gate.sort(messages)
        exports = [m.event for m in messages if m.topic == "export-requested"]
        async with db.batch_transaction(pool) as conn:
            known, changes = await self.gate.apply(conn, consumed)
            closing = await store.active_vouchers_of(conn, list(changes.customers)) if changes.customers else []
            unsent = await ordering_store.withdraw_unsent_deliveries(
                conn, list(changes.customers), [v["id"] for v in closing if v["channel"] in ordering.DELIVERED])
            ready = await self.gate.admit(conn, consumed.entries, known, changes)
            await ordering_store.save_marks(conn, known)
            released, unconfirmed = await self.gate.release(conn, known, sorted(known))
            batch = await self.decide(conn, ready + released, unconfirmed, closing, changes, unsent)
            for request in consumed.erasures:
                await self.erase(conn, batch, request)
            for request in exports:
                await self.export(conn, batch, request)
            await self.save(conn, batch)
            # Last, after what the batch sealed for them: the erased customers' data keys.
            await self.keys.destroy(conn, [r.customer_id for r in consumed.erasures])
        self.observe(batch, ready + released)

    async def release_held(self, pool: asyncpg.Pool) -> int:
        """Decides held entries whose consent caught up (marks moved by another instance) or whose
        wait ran out; returns how many."""
        async with db.batch_transaction(pool) as conn:
            released, unconfirmed = await self.gate.release(conn, None, None)
            if not released and not unconfirmed:
                return 0
            batch = await self.decide(conn, released, unconfirmed, [], None, set())
            await self.save(conn, batch)
        self.observe(batch, released)
        return len(released) + len(unconfirmed)

    async def decide(self, conn: asyncpg.Connection, entries: list[Entry], unconfirmed: list[Entry],
                     closing: list[asyncpg.Record], changes: ConsentChanges | None, unsent: set[str]) -> Batch:
        """Locks the ledgers every decision of the transaction needs (once, in order), closes what
        consent changes close, and decides the entries."""
        campaign_rows = await store.active_campaigns_for(conn, [e.event.segment for e in entries + unconfirmed])
        batch = Batch(await store.lock_ledgers(conn, {r["campaign_id"] for r in closing}
                                               | {r["id"] for r in campaign_rows}))
        if closing and changes is not None:
            specs = {r["id"]: self.catalogue.spec(r) for r in await store.campaigns_by_id(conn, {v["campaign_id"] for v in closing})}
            await self.gate.close(conn, batch, closing, changes, unsent,
                                  {cid: spec.revoke_on_withdrawal for cid, spec in specs.items()})
        if entries or unconfirmed:
            await self.issue(conn, batch, entries, campaign_rows, unconfirmed)
        return batch

    async def save(self, conn: asyncpg.Connection, batch: Batch) -> None:
        """The ledger's steps, then every event of the transaction in one outbox write (the
        delivery requests sealed under the outbox key: they carry the codes)."""
        await store.save_planned(conn, batch.steps)
        await enqueue(conn, batch.outbox, self.secrets.outbox_key, keys=self.keys)

    def observe(self, batch: Batch, entries: list[Entry]) -> None:
        now = time.time()
        for e in entries:
            self.metrics.segment_to_voucher.observe(max(now - e.entered_ms / 1000, 0))
        for cid in batch.changed:
            lg = batch.ledgers[cid]
            for name, value in (("limit", lg.limit), ("reserved", lg.reserved), ("spent", lg.spent),
                                ("remaining", lg.remaining)):
                self.metrics.ledger.labels(cid, name).set(value)

    # ------------------------------------------------------------------ issuing

    async def issue(self, conn: asyncpg.Connection, batch: Batch, entries: list[Entry], campaign_rows,
                    unconfirmed: Sequence[Entry] = ()) -> None:
        """Decides each (campaign, entry) once; ``unconfirmed`` entries are refused
        (``consent_unconfirmed``: consent did not catch up with them in time)."""
        now = ev.now_utc()
        by_segment: dict[str, list[CampaignSpec]] = defaultdict(list)
        for row in campaign_rows:
            by_segment[row["segment"]].append(self.catalogue.spec(row))
        pairs = []
        traces: dict[tuple[str, str, str], str | None] = {}
        seen: set[tuple[str, str, str]] = set()
        refused: set[tuple[str, str, str]] = set()
        for entry, confirmed in [*((x, True) for x in entries), *((x, False) for x in unconfirmed)]:
            e: ev.SegmentEntered = entry.event
            for spec in by_segment.get(e.segment, ()):
                key = (spec.id, e.customer_id, e.trigger_key)
                if key not in seen:
                    seen.add(key)
                    traces[key] = entry.trace
                    pairs.append((key, e, spec))
                    if not confirmed:
                        refused.add(key)
        if not pairs:
            return
        known = await store.known_attempts(conn, [k for k, _, _ in pairs])
        pairs = [p for p in pairs if p[0] not in known]  # a redelivery or a replay decides nothing again
        customers = [e.customer_id for _, e, _ in pairs]
        consent = await store.consents(conn, customers)
        counts = await store.voucher_counts(conn, [s.id for _, _, s in pairs], customers)
        attempts: list[store.Attempt] = []
        vouchers: list[Issued] = []
        for (campaign_id, customer_id, trigger), e, spec in pairs:
            trace = traces[(campaign_id, customer_id, trigger)]
            outcome = Deny(ordering.UNCONFIRMED) if (campaign_id, customer_id, trigger) in refused else decide(
                spec, customer_id=customer_id, preferred=e.preferred_channel,
                consent=consent.get(customer_id, NO_CONSENT),
                vouchers_of_customer=counts.get((campaign_id, customer_id), 0),
                vouchers_of_campaign=batch.ledgers[campaign_id].vouchers, now=now)
            if isinstance(outcome, Issue) and not batch.ledgers[campaign_id].fits(outcome.max_discount):
                outcome = Deny("budget_exhausted", outcome.variant)
            if isinstance(outcome, Deny):
                attempts.append(store.Attempt(campaign_id, customer_id, trigger, "denied", outcome.reason, outcome.variant,
                                              None, now))
                batch.outbox.append(event_record("issuance-denied", ev.IssuanceDenied(
                    campaign_id=campaign_id, customer_id=customer_id, reason=outcome.reason, trigger_key=trigger,
                    variant=outcome.variant, denied_at=now), source=SOURCE, traceparent=trace))
                self.metrics.denied.labels(campaign_id, outcome.reason).inc()
                continue
            voucher_id = str(uuid.uuid4())
            lg = batch.step(campaign_id, batch.ledgers[campaign_id].reserve(outcome.max_discount), "issued", voucher_id)
            counts[(campaign_id, customer_id)] = counts.get((campaign_id, customer_id), 0) + 1
            attempts.append(store.Attempt(campaign_id, customer_id, trigger, "issued", None, outcome.variant, voucher_id,
                                          now))
            vouchers.append(Issued(voucher_id, spec, customer_id, trigger, outcome, lg, e.facts, trace))
        await store.insert_attempts(conn, attempts)
        await self._store_vouchers(conn, batch, vouchers, now)
        for voucher_id, spec, customer_id, trigger, outcome, lg, _, trace in vouchers:
            batch.outbox.append(event_record("voucher-issued", ev.VoucherIssued(
                voucher_id=voucher_id, campaign_id=spec.id, customer_id=customer_id, variant=outcome.variant,
                channel=outcome.channel, trigger_key=trigger,
                max_discount=ev.Money(amount=outcome.max_discount, currency=spec.currency),
                expires_at=spec.validity.expires_at(now), issued_at=now, ledger=lg.snapshot()), source=SOURCE,
                traceparent=trace))
            self.metrics.issued.labels(spec.id, outcome.variant, outcome.channel.value).inc()

    async def _store_vouchers(self, conn: asyncpg.Connection, batch: Batch, vouchers: list[Issued],
                              now: datetime) -> None:
        """Draws each voucher's code, stores its hash (and, on-site, its sealed copy) and adds the
        delivery request to the batch's events; a hash collision (never seen, but possible) draws
        again."""
        pending = {v.voucher_id: v for v in vouchers}
        while pending:
            rows: list[store.NewVoucher] = []
            deliveries = {}
            for voucher_id, spec, customer_id, trigger, outcome, _, facts, trace in pending.values():
                code = spec.code.generate()
                offer = spec.offer_for(outcome.variant)
                brand = personal_brand(offer, facts)
                onsite = outcome.channel == ev.Channel.ONSITE
                rows.append(store.NewVoucher(
                    id=voucher_id, campaign_id=spec.id, customer_id=customer_id, partner=None,
                    code_hash=codes.code_hash(self.secrets.hash_key, code),
                    code_sealed=codes.seal(self.secrets.seal_key, code, voucher_id) if onsite else None,
                    variant=outcome.variant, channel=outcome.channel.value, kind=offer.kind, brand=brand,
                    currency=spec.currency, reserved=outcome.max_discount,
                    balance=offer.balance.amount if offer.kind == "gift_card" else None, status="active",
                    trigger_key=trigger, issued_at=now, expires_at=spec.validity.expires_at(now)))
                if not onsite:
                    deliveries[voucher_id] = event_record("delivery-requested", ev.DeliveryRequested(
                        voucher_id=voucher_id, campaign_id=spec.id, customer_id=customer_id,
                        channel=outcome.channel, code=code, offer=offer_summary(offer, brand),
                        expires_at=spec.validity.expires_at(now)), source=SOURCE, sealed=True,
                        headers=(("voucher-id", voucher_id),), traceparent=trace)
            collided = await store.insert_vouchers(conn, rows)
            batch.outbox += [r for vid, r in deliveries.items() if vid not in collided]
            if collided:
                log.warning("voucher code collision; drawing again", extra={"count": len(collided)})
            pending = {vid: v for vid, v in pending.items() if vid in collided}

    # ------------------------------------------------------------------ expiry

    async def expire_due(self, pool: asyncpg.Pool) -> int:
        """Expires active vouchers past their validity and releases what they reserved."""
        now = ev.now_utc()
        async with db.batch_transaction(pool) as conn:
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
            await store.save_planned(conn, batch.steps)
            await enqueue(conn, batch.outbox, keys=self.keys)
        return len(due)

    # ------------------------------------------------------------------ privacy

    async def erase(self, conn: asyncpg.Connection, batch: Batch, request: ev.ErasureRequested) -> None:
        erased = await store.pseudonymize(conn, request.customer_id, self.secrets.pseudonym(request.customer_id))
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
            "entries_waiting_for_consent": [_jsonable(r) for r in await ordering_store.held_of(conn, cid)],
            "note": "voucher codes are stored only as keyed hashes and cannot be exported",
        }
        batch.outbox.append(event_record("export-completed", exports.answer(request, "issuance", data, ev.now_utc()),
                                         source=SOURCE))


def _jsonable(record: asyncpg.Record) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(record).items()}
