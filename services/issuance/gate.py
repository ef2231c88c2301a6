"""Consent's side of issuance's consumed batch: consent-state (once per offset), consent's
watermarks, erased customers, what a withdrawal or an erasure closes, and which segment entries
may be decided now (ordering.py says when; held ones wait in ``held_triggers``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from services.issuance import ordering, store
from services.issuance import ordering_store as held
from services.issuance.metrics import IssuanceMetrics
from services.issuance.rules import NO_CONSENT
from shared import erasure
from shared import events as ev
from shared.erasure import stale_for_erased, subject_hash
from shared.kafka import Message
from shared.outbox import event_record
from shared.topics import CUSTOMER_PARTITIONS, partition_for

if TYPE_CHECKING:
    from services.issuance.budget import Batch

log = logging.getLogger(__name__)
SOURCE = "voucherstream/issuance"
CONTACT_CHANNELS = {ev.Purpose.EMAIL: ev.Channel.EMAIL, ev.Purpose.SMS: ev.Channel.SMS, ev.Purpose.PUSH: ev.Channel.PUSH}
Offsets = Callable[[list[tuple[str, int]]], Awaitable[dict[tuple[str, int], int]]]


@dataclass(frozen=True, slots=True)
class Entry:
    """A segment entry to decide: the event (with its consent marks), its record time, and how
    long it was held for consent (0: not held)."""

    event: ev.SegmentEntered
    entered_ms: int
    held_s: float = 0.0
    trace: str | None = None  # the entry's trace context (shared.tracing); not kept while it is held


@dataclass(slots=True)
class Consumed:
    """The consent side of one batch, sorted out before its transaction (Kafka I/O included)."""

    states: dict[str, tuple[int, int, ev.ConsentState | None]] = field(default_factory=dict)  # cid -> (p, offset, state)
    watermarks: dict[int, int] = field(default_factory=dict)  # partition -> next offset consent applied
    state_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next consent-state offset consumed
    entries: list[Entry] = field(default_factory=list)
    erasures: list[ev.ErasureRequested] = field(default_factory=list)

    @property
    def partitions(self) -> set[int]:
        return ({p for p, _, _ in self.states.values()} | set(self.watermarks) | set(self.state_offsets)
                | {ordering.marks_of(e.event).partition for e in self.entries})


@dataclass(slots=True)
class ConsentChanges:
    offers_withdrawn: set[str] = field(default_factory=set)
    channels_withdrawn: dict[str, set[str]] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)  # erased in this batch

    @property
    def customers(self) -> set[str]:
        return self.offers_withdrawn | set(self.channels_withdrawn) | self.erased


def _partition(customer_id: str) -> int:
    return partition_for(customer_id.encode(), CUSTOMER_PARTITIONS)


class ConsentGate:
    def __init__(self, pseudonym_key: bytes, max_hold_s: float, metrics: IssuanceMetrics,
                 positions: Offsets, end_offsets: Offsets) -> None:
        self.key = pseudonym_key
        self.max_hold_s = max_hold_s
        self.metrics = metrics
        self.positions = positions  # this member's consumed positions (assigned partitions only)
        self.end_offsets = end_offsets

    def subject(self, customer_id: str) -> str:
        return subject_hash(self.key, customer_id)

    # ------------------------------------------------------------------ before the transaction

    async def sort(self, messages: list[Message]) -> Consumed:
        """Splits the consent side of a batch out and reads, from Kafka, this member's positions
        on consent-state (everything below is in this batch or an earlier one) and the marks of
        any entry that came without them."""
        out = Consumed()
        for m in messages:
            if m.topic == "consent-state":
                if isinstance(m.event, ev.ConsentWatermark):
                    out.watermarks[m.event.partition] = max(out.watermarks.get(m.event.partition, 0), m.event.next_offset)
                else:
                    state = None if m.is_tombstone else m.of(ev.ConsentState)
                    out.states[m.key or ""] = (m.partition, m.offset, state)  # the latest per customer wins
                out.state_offsets[m.partition] = max(out.state_offsets.get(m.partition, 0), m.offset + 1)
            elif m.topic == "erasure-requested":
                out.erasures.append(m.of(ev.ErasureRequested))
        entered = [(m, m.of(ev.SegmentEntered)) for m in messages if m.topic == "segment-entered"]
        unmarked = sorted({_partition(e.customer_id) for _, e in entered if e.consent_marks is None})
        fallback = await self._marks_now(unmarked) if unmarked else {}
        for m, e in entered:
            if e.consent_marks is None:
                e = e.model_copy(update={"consent_marks": fallback[_partition(e.customer_id)]})
            out.entries.append(Entry(e, m.timestamp_ms, trace=m.traceparent))
        entry_parts = {ordering.marks_of(e.event).partition for e in out.entries}
        positions = await self.positions([("consent-state", p) for p in sorted(entry_parts | set(out.state_offsets))])
        for (_, p), position in positions.items():
            out.state_offsets[p] = max(out.state_offsets.get(p, 0), position)
        return out

    async def _marks_now(self, partitions: list[int]) -> dict[int, ev.ConsentMarks]:
        """For an entry without marks (an older segmentation): the log ends now, later than the
        trigger was read, so no less safe — only a little slower."""
        ends = await self.end_offsets([(t, p) for p in partitions for t in ("consent-changed", "consent-state")])
        return {p: ev.ConsentMarks(partition=p, changed=ends[("consent-changed", p)], state=ends[("consent-state", p)])
                for p in partitions}

    # ------------------------------------------------------------------ in the transaction

    async def apply(self, conn: asyncpg.Connection, consumed: Consumed) -> tuple[dict[int, ordering.Known], ConsentChanges]:
        """Applies the batch's consent-state records once each (a record below the partition's
        applied offset was applied before: a redelivery or a replay), remembers erasures, and
        advances the marks. Returns the marks (locked until commit) and what changed."""
        known = await held.lock_marks(conn, consumed.partitions)
        changes = ConsentChanges()
        await erasure.remember(conn, [(self.subject(e.customer_id), e.requested_at) for e in consumed.erasures])
        changes.erased = {e.customer_id for e in consumed.erasures}
        if changes.erased:
            await held.forget_held(conn, list(changes.erased))
        fresh = {cid: s for cid, (p, offset, s) in consumed.states.items() if offset >= known[p].state}
        self.metrics.consent_states.labels("already_applied").inc(len(consumed.states) - len(fresh))
        erased_at = await erasure.erased(conn, [self.subject(c) for c in fresh]) if fresh else {}
        before = await store.consents(conn, list(fresh))
        rows = []
        for cid, state in fresh.items():
            if state is None:
                await store.forget_consent(conn, cid)
                continue
            if stale_for_erased(state.updated_at, erased_at.get(self.subject(cid))):
                self.metrics.consent_states.labels("stale_for_erased").inc()
                continue
            offers = state.granted(ev.Purpose.PERSONALIZED_OFFERS)
            channels = sorted(ch.value for p, ch in CONTACT_CHANNELS.items() if state.granted(p))
            rows.append((cid, offers, channels, state.updated_at))
            old = before.get(cid, NO_CONSENT)
            if not offers and old.personalized_offers:
                changes.offers_withdrawn.add(cid)
            removed = {c.value for c in old.channels} - set(channels)
            if removed:
                changes.channels_withdrawn[cid] = removed
        await store.save_consents(conn, rows)
        self.metrics.consent_states.labels("applied").inc(len(rows))
        for p in known:
            known[p] = known[p].advance(changed=consumed.watermarks.get(p, 0), state=consumed.state_offsets.get(p, 0))
        return known, changes

    async def admit(self, conn: asyncpg.Connection, entries: list[Entry], known: dict[int, ordering.Known],
                    changes: ConsentChanges) -> list[Entry]:
        """The entries that may be decided now. An erased customer's entry is dropped (unless they
        consented again since); one whose consent marks are not yet passed is held."""
        if not entries:
            return []
        gone = changes.erased | await self._erased_without_consent(conn, {e.event.customer_id for e in entries})
        kept = [e for e in entries if e.event.customer_id not in gone]
        if len(kept) < len(entries):
            self.metrics.holds.labels("dropped_erased").inc(len(entries) - len(kept))
        ready: list[Entry] = []
        waiting: list[Entry] = []
        for e in kept:
            marks = ordering.marks_of(e.event)
            (ready if ordering.ready(marks, known[marks.partition]) else waiting).append(e)
        if waiting:
            now = ev.now_utc()
            newly = await held.hold(conn, [(e.event, e.entered_ms, now) for e in waiting])
            self.metrics.holds.labels("held").inc(newly)
        for _ in ready:
            self.metrics.consent_hold.observe(0.0)
        return ready

    async def _erased_without_consent(self, conn: asyncpg.Connection, customers: set[str]) -> set[str]:
        subjects = {self.subject(c): c for c in customers}
        erased = await erasure.erased(conn, subjects)
        if not erased:
            return set()
        maybe = {subjects[h] for h in erased}
        returned = await store.consents(conn, list(maybe))  # only a consent given after the erasure is kept
        return maybe - set(returned)

    async def release(self, conn: asyncpg.Connection, known: dict[int, ordering.Known] | None,
                      partitions: list[int] | None) -> tuple[list[Entry], list[Entry]]:
        """Held entries that may be decided now: (ready, refused because consent stayed unconfirmed
        for ``max_hold_s``). ``known``: the marks this transaction holds (else read now)."""
        rows = await held.held(conn, partitions)
        if not rows:
            return [], []
        if known is None:
            known = await held.marks(conn, {r["partition"] for r in rows})
        now = ev.now_utc()
        ready, unconfirmed, decided = [], [], []
        for r in rows:
            event = ev.SegmentEntered.model_validate(r["event"])
            entry = Entry(event, r["entered_ms"], (now - r["held_at"]).total_seconds())
            if ordering.ready(ordering.marks_of(event), known.get(r["partition"], ordering.Known())):
                ready.append(entry)
            elif ordering.expired(r["held_at"], now, self.max_hold_s):
                unconfirmed.append(entry)
            else:
                continue
            decided.append((r["customer_id"], r["segment"], r["trigger_key"]))
            self.metrics.consent_hold.observe(entry.held_s)
        await held.unhold(conn, decided)
        if ready:
            self.metrics.holds.labels("released").inc(len(ready))
        if unconfirmed:
            self.metrics.holds.labels("timed_out").inc(len(unconfirmed))
            log.warning("segment entries refused: consent did not catch up with them in time",
                        extra={"count": len(unconfirmed), "max_hold_s": self.max_hold_s})
        return ready, unconfirmed

    async def close(self, conn: asyncpg.Connection, batch: Batch, vouchers: list[asyncpg.Record],
                    changes: ConsentChanges, unsent: set[str], revoke_on_withdrawal: dict[str, bool]) -> None:
        """Revokes what the batch's withdrawals and erasures close, and cancels their deliveries."""
        now = ev.now_utc()
        revoked = []
        for v in vouchers:
            cid = v["customer_id"]
            action = ordering.closing(
                v["channel"], erased=cid in changes.erased, offers_withdrawn=cid in changes.offers_withdrawn,
                channel_withdrawn=v["channel"] in changes.channels_withdrawn.get(cid, ()), unsent=v["id"] in unsent,
                revoke_on_withdrawal=revoke_on_withdrawal[v["campaign_id"]])
            if action.revoke is not None:
                lg = batch.step(v["campaign_id"], batch.ledgers[v["campaign_id"]].release(v["reserved"]), "revoked",
                                v["id"])
                revoked.append(v["id"])
                batch.outbox.append(event_record("voucher-revoked", ev.VoucherRevoked(
                    voucher_id=v["id"], campaign_id=v["campaign_id"], customer_id=cid, reason=action.revoke,
                    released=ev.Money(amount=v["reserved"], currency=v["currency"]), revoked_at=now,
                    ledger=lg.snapshot()), source=SOURCE))
                self.metrics.closed.labels(v["campaign_id"], "revoked").inc()
            if action.cancel is not None:
                batch.outbox.append(event_record("delivery-requested", ev.DeliveryCancelled(
                    voucher_id=v["id"], campaign_id=v["campaign_id"], customer_id=cid, channel=v["channel"],
                    reason=action.cancel, cancelled_at=now), source=SOURCE))
                self.metrics.deliveries_cancelled.labels(action.cancel, "unsent" if v["id"] in unsent else "sent").inc()
        await store.close_vouchers(conn, revoked, "revoked", now)
