"""The consent service's use cases, shared by the Kafka consumer and the HTTP API: each takes a
connection inside a transaction, so the state change and its outbox events commit together."""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from services.consent import ledger, privacy, store
from services.consent.privacy import Part
from services.consent.settings import ConsentSettings
from shared import db, exports, sealing
from shared import events as ev
from shared.datakeys import DataKeys
from shared.kafka import Message
from shared.outbox import OutboxRecord, enqueue, event_record, partition_record, tombstone
from shared.topics import check_partition

log = logging.getLogger(__name__)
SOURCE = "voucherstream/consent"
RECEIVED_AT = "voucherstream.received-at"  # outbox header: when the deciding event was received


@dataclass(frozen=True, slots=True)
class Change:
    event_id: str
    change: ev.ConsentChanged
    offset: int | None = None  # its offset on consent-changed; None: recorded over HTTP


@dataclass(slots=True)
class Outcome:
    appended: int = 0
    duplicates: int = 0
    ignored_erased: int = 0
    states: dict[str, dict[ev.Purpose, ev.PurposeState]] = field(default_factory=dict)
    outbox_ids: list[int] = field(default_factory=list)


class ConsentHandlers:
    def __init__(self, settings: ConsentSettings, metrics, keys: DataKeys) -> None:
        self.settings = settings
        self.metrics = metrics
        self.keys = keys
        self.key = settings.pseudonym_key.get_secret_value().encode()
        self.export_key = sealing.derive_key(settings.pseudonym_key.get_secret_value(), "exports")
        self.watermarks: dict[int, int] = {}  # consent-changed partition -> the last watermark committed

    def opened(self, request_id: str, parts: dict[str, Part]) -> dict[str, Part]:
        """An export's parts with their data, as kept sealed under the settings' key."""
        return {s: replace(p, detail=orjson.loads(sealing.unseal(self.export_key, p.sealed,
                                                                 exports.context(request_id, s))))
                if p.sealed is not None else p for s, p in parts.items()}

    def subject(self, customer_id: str) -> str:
        return privacy.subject_hash(self.key, customer_id)

    # ------------------------------------------------------------------ consent changes

    async def record_changes(self, conn: asyncpg.Connection, changes: list[Change], *, via: str,
                             received_at: datetime) -> Outcome:
        """Appends the changes to the ledger (idempotent by event id) and publishes the new
        ``consent-state`` of every customer whose state changed."""
        outcome = Outcome()
        if not changes:
            return outcome
        customers = sorted({c.change.customer_id for c in changes})
        await store.lock_customers(conn, customers)
        marks = await store.latest_erasures(conn, [self.subject(c) for c in customers])
        erased_events = await store.erased_events(conn, [self.subject(c.event_id) for c in changes]) if marks else set()
        kept = [c for c in changes if not ledger.superseded_by_erasure(
            marks.get(self.subject(c.change.customer_id)), offset=c.offset,
            event_erased=self.subject(c.event_id) in erased_events, occurred_at=c.change.occurred_at)]
        outcome.ignored_erased = len(changes) - len(kept)
        before = await store.decisions(conn, customers)
        rows = [(c.event_id, c.change.customer_id, c.change.purpose.value, c.change.granted, c.change.policy_version,
                 c.change.source, c.change.occurred_at, received_at, via) for c in kept]
        added = await store.append(conn, rows)
        outcome.appended = len(added)
        outcome.duplicates = len(kept) - len(added)
        after = await store.decisions(conn, customers) if added else before
        records: list[OutboxRecord] = []
        for cid in customers:
            old, new = ledger.current_state(before.get(cid, [])), ledger.current_state(after.get(cid, []))
            outcome.states[cid] = new
            if new != old:
                state = ledger.state_event(cid, new, ev.now_utc())
                records.append(event_record("consent-state", state, source=SOURCE,
                                            headers=((RECEIVED_AT, f"{received_at.timestamp():.6f}"),)))
        outcome.outbox_ids = await enqueue(conn, records, keys=self.keys)
        for row in added:
            self.metrics.consents.labels(row["purpose"], "granted" if row["granted"] else "withdrawn").inc()
        if outcome.ignored_erased:
            self.metrics.consent_ignored.labels("erased_customer").inc(outcome.ignored_erased)
        if outcome.duplicates:
            self.metrics.consent_ignored.labels("duplicate").inc(outcome.duplicates)
        return outcome

    # ------------------------------------------------------------------ privacy requests

    async def request_erasure(self, conn: asyncpg.Connection, customer_id: str, changed_end: int) -> str:
        """Records the request, erases the consent service's own rows, tombstones
        ``consent-state`` and asks every other service, all in one transaction. ``changed_end`` is
        the log end of the customer's consent-changed partition, read before: decisions below it
        were published before the erasure and stay erased when replayed."""
        request_id = str(uuid.uuid4())
        now = ev.now_utc()
        await store.lock_customers(conn, [customer_id])
        # First the customer's data key: every sealed copy of their fields on Kafka is unreadable
        # from this commit on (each service destroys a key created meanwhile when it erases).
        await self.keys.destroy(conn, [customer_id])
        await store.create_request(conn, request_id, "erasure", self.subject(customer_id),
                                   self.settings.privacy_services, now, changed_offset=changed_end)
        event_ids = await store.erase_customer(conn, customer_id)
        await store.remember_erased_events(conn, request_id, [self.subject(e) for e in event_ids])
        erased = {"consent_ledger": len(event_ids),
                  "privacy_requests(exports)": await store.forget_exports_of(conn, self.subject(customer_id))}
        await enqueue(conn, [
            event_record("erasure-requested", ev.ErasureRequested(request_id=request_id, customer_id=customer_id,
                                                                 requested_at=now), source=SOURCE),
            tombstone("consent-state", customer_id),
            event_record("erasure-completed", ev.ErasureCompleted(request_id=request_id, customer_id=customer_id,
                                                                 service="consent", completed_at=ev.now_utc(),
                                                                 erased=erased), source=SOURCE),
        ])
        self.metrics.privacy_requests.labels("erasure").inc()
        return request_id

    async def request_export(self, conn: asyncpg.Connection, customer_id: str) -> str:
        """Every service's part is sealed for a key pair of this request (shared/exports.py); its
        private key is kept sealed under the settings' key until the bundle is delivered."""
        request_id = str(uuid.uuid4())
        now = ev.now_utc()
        private, public = sealing.new_recipient()
        await store.lock_customers(conn, [customer_id])
        await store.create_request(conn, request_id, "export", self.subject(customer_id),
                                   self.settings.privacy_services, now, customer_id=customer_id,
                                   recipient_private_sealed=sealing.seal(self.export_key, private, request_id.encode()))
        request = ev.ExportRequested(request_id=request_id, customer_id=customer_id, requested_at=now,
                                     recipient_key=public)
        await enqueue(conn, [
            event_record("export-requested", request, source=SOURCE),
            event_record("export-completed", exports.answer(request, "consent",
                                                            await self.export_part(conn, customer_id), ev.now_utc()),
                         source=SOURCE),
        ])
        self.metrics.privacy_requests.labels("export").inc()
        return request_id

    async def export_part(self, conn: asyncpg.Connection, customer_id: str) -> dict[str, Any]:
        current = ledger.current_state((await store.decisions(conn, [customer_id])).get(customer_id, []))
        history = await store.history(conn, customer_id)
        return {
            "customer_id": customer_id,
            "current_consent": {p.value: s.model_dump(mode="json") for p, s in current.items()},
            "ledger": [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(r).items()}
                       for r in history],
        }

    async def record_answers(self, conn: asyncpg.Connection, answers: list[ev.ErasureCompleted | ev.ExportCompleted]) -> None:
        """Stores each service's answer once; completes a request when every expected service
        answered. A completed erasure also drops the published outbox rows keyed by the customer."""
        by_request: dict[str, list] = defaultdict(list)
        for a in answers:
            by_request[a.request_id].append(a)
        for request_id in sorted(by_request):
            request = await store.lock_request(conn, request_id)
            if request is None:
                log.warning("answer for an unknown privacy request ignored", extra={"request_id": request_id})
                self.metrics.consent_ignored.labels("unknown_privacy_request").inc(len(by_request[request_id]))
                continue
            for a in by_request[request_id]:
                if isinstance(a, ev.ErasureCompleted):
                    await store.add_part(conn, request_id, a.service, a.completed_at, a.erased)
                    continue
                if request["recipient_private_sealed"] is None:  # delivered or expired: nothing to keep
                    self.metrics.consent_ignored.labels("export_part_after_delivery").inc()
                    continue
                private = sealing.unseal(self.export_key, request["recipient_private_sealed"], request_id.encode())
                data = exports.open_part(private, a)
                await store.add_part(conn, request_id, a.service, a.completed_at, {}, sealing.seal(
                    self.export_key, orjson.dumps(data), exports.context(request_id, a.service)))
            if request["completed_at"] is not None:
                continue
            parts = await store.parts(conn, request_id)
            if privacy.is_complete(list(request["expected"]), parts):
                now = ev.now_utc()
                await store.complete_request(conn, request_id, now)
                age = (now - request["requested_at"]).total_seconds()
                self.metrics.privacy_completed.labels(request["kind"]).observe(age)

    # ------------------------------------------------------------------ Kafka

    def validate(self, message: Message) -> None:
        """The contract beyond the schema, for consent-changed: on its customer's partition (the
        watermarks count offsets per partition) and not dated into the future."""
        if message.topic == "consent-changed":
            check_partition(message.partition, message.key, message.event)
            ledger.check_occurred_at(message.of(ev.ConsentChanged).occurred_at, ev.now_utc(),
                                     self.settings.max_future_skew_s)

    async def on_batch(self, pool: asyncpg.Pool, messages: list[Message]) -> None:
        received_at = ev.now_utc()
        changes = [Change(m.event_id, m.of(ev.ConsentChanged), m.offset) for m in messages
                   if m.topic == "consent-changed"]
        answers = [m.of(ev.ErasureCompleted) if m.topic == "erasure-completed" else m.of(ev.ExportCompleted)
                   for m in messages if m.topic in ("erasure-completed", "export-completed")]
        applied: dict[int, int] = {}
        for m in messages:
            if m.topic == "consent-changed":
                applied[m.partition] = max(applied.get(m.partition, 0), m.offset + 1)
        async with db.batch_transaction(pool) as conn:
            await self.record_changes(conn, changes, via="kafka", received_at=received_at)
            await self.record_answers(conn, answers)
            advanced = await self.publish_watermarks(conn, applied)
        self.watermarks.update(advanced)

    async def on_idle(self, pool: asyncpg.Pool, positions: dict[tuple[str, int], int]) -> None:
        """Idle, every assigned partition is applied up to its position (past dead letters and
        offset gaps too): watermarks that lag behind are brought up, and a newly started instance
        announces where each partition stands."""
        applied = {p: offset for (topic, p), offset in positions.items() if topic == "consent-changed"}
        if not any(offset > self.watermarks.get(p, -1) for p, offset in applied.items()):
            return
        async with db.batch_transaction(pool) as conn:
            advanced = await self.publish_watermarks(conn, applied)
        self.watermarks.update(advanced)

    async def publish_watermarks(self, conn: asyncpg.Connection, applied: dict[int, int]) -> dict[int, int]:
        """Enqueues, after the states this transaction wrote, one watermark per consent-changed
        partition that moved: on the same partition of consent-state, so a reader that sees it
        has seen every state that the decisions below it caused."""
        advanced = {p: offset for p, offset in sorted(applied.items()) if offset > self.watermarks.get(p, -1)}
        now = ev.now_utc()
        await enqueue(conn, [partition_record("consent-state", ev.ConsentWatermark(
            partition_key=f"watermark-{p}", partition=p, next_offset=offset, at=now), p, source=SOURCE)
            for p, offset in advanced.items()])
        return advanced

    def observe_published(self, topic: str, headers: dict[str, str], acked_at: float) -> None:
        if topic == "consent-state" and RECEIVED_AT in headers:
            self.metrics.consent_propagation.observe(max(acked_at - float(headers[RECEIVED_AT]), 0.0))

