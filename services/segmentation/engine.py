"""What one consumed batch does to segmentation's state, decided without I/O.

The handler loads the stored state of every customer a batch touches (:class:`Customer`: the
profiling consent and the profile), hands it here with the batch's new messages, and writes back
what :func:`apply_batch` returns — the changed customers, the events to emit — in the same
transaction as the consumed offsets. So every input changes state once, whatever Kafka
redelivers, and these rules are tested with plain values.

Messages are applied in the order given (per partition, the log's order). A customer's topics
share a partition (Kafka's murmur2 of the customer id), so one worker — and one lock — holds a
customer's consent, profile and events together.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from services.segmentation import profile as prof
from services.segmentation import rules
from shared import events as ev
from shared import exports
from shared.erasure import stale_for_erased
from shared.topics import CUSTOMER_PARTITIONS, partition_for

TICKS = "segmentation-ticks"


def partition_of(key: bytes, partitions: int = CUSTOMER_PARTITIONS) -> int:
    """Kafka's default (Java client) partitioner: murmur2 of the key. The shop must partition
    the same way (librdkafka/kcat: ``partitioner=murmur2_random``) so a customer's events and
    consent meet on one partition."""
    return partition_for(key, partitions)


@dataclass(slots=True)
class Customer:
    """What segmentation keeps on one customer: nothing at all without profiling consent."""

    profiling_since: str | None = None  # when profiling consent was given (ISO-8601), None: not given
    profile: prof.Profile | None = None

    @property
    def kept(self) -> bool:
        return self.profiling_since is not None


@dataclass(frozen=True, slots=True)
class Input:
    """One message of the batch, as the engine needs it (``event`` None: a tombstone). The
    consumer's ``shared.kafka.Message`` has the same fields and is passed as it is."""

    topic: str
    partition: int
    key: str | None
    event: ev.Event | None
    traceparent: str | None = None  # the trace context what it causes carries


@dataclass(slots=True)
class Outcome:
    customers: dict[str, Customer]  # every customer loaded or touched, as it is after the batch
    changed: set[str] = field(default_factory=set)  # those to write back (or delete when not kept)
    emit: list[tuple[str, ev.Event]] = field(default_factory=list)  # (registry topic, event), in order
    causes: list[str | None] = field(default_factory=list)  # each emitted event's cause's trace context
    erased: dict[str, datetime] = field(default_factory=dict)  # erased customers the batch names -> when
    newly_erased: dict[str, datetime] = field(default_factory=dict)  # erased by this batch
    counts: Counter = field(default_factory=Counter)  # (topic, outcome) -> n
    entries: Counter = field(default_factory=Counter)  # segment -> n


def in_time_order(messages: list) -> list:
    """The batch with its topics interleaved by record time, each partition kept in log order
    (Kafka orders a partition, not two topics: a consent published before a cart should be
    applied before it when both arrive in one batch)."""
    runs: dict[tuple[str, int], list] = {}
    for m in messages:
        runs.setdefault((m.topic, m.partition), []).append(m)
    if len(runs) == 1:
        return messages
    return list(heapq.merge(*runs.values(), key=lambda m: m.timestamp_ms))


def apply_batch(customers: dict[str, Customer], inputs: Iterable[Input], ruleset: rules.RuleSet, now: datetime,
                partitions: int = CUSTOMER_PARTITIONS, erased: dict[str, datetime] | None = None,
                marks: dict[int, ev.ConsentMarks] | None = None) -> Outcome:
    """Applies ``inputs`` in order to ``customers`` (every customer the inputs name, and every
    customer of a ticked partition, as stored; absent ones are new). ``erased``: those of the
    named customers that were erased, and when. ``marks``: the consent marks per customer
    partition, which each segment entry carries."""
    out = Outcome(customers=dict(customers), erased=dict(erased or {}))
    batch = _Batch(ruleset, now, now.isoformat(), partitions, marks or {})
    for item in inputs:
        _apply(out, item, batch)
        out.causes += [item.traceparent] * (len(out.emit) - len(out.causes))
    return out


@dataclass(frozen=True, slots=True)
class _Batch:
    """What every input of a batch is decided with."""

    ruleset: rules.RuleSet
    now: datetime
    now_iso: str
    partitions: int
    marks: dict[int, ev.ConsentMarks]


def _apply(out: Outcome, item: Input, batch: _Batch) -> None:
    e = item.event
    if e is None:  # a consent-state tombstone: the customer was erased
        _forget(out, item.key)
        out.counts[(item.topic, "tombstone")] += 1
        return
    if type(e) in _PROFILED:  # the hot path first, by exact type (pydantic's isinstance goes through ABCMeta)
        shop = cast(_Profiled, e)
        known = out.customers.get(shop.customer_id)
        if known is None or not known.kept:
            out.counts[(item.topic, "dropped_no_profiling_consent")] += 1
            return
        before = known.profile or prof.empty()
        _evaluate(out, shop.customer_id, before, prof.apply(before, shop, batch.now), shop, batch)
    elif isinstance(e, ev.ConsentWatermark):
        out.counts[(item.topic, "watermark")] += 1  # for issuance; segmentation's consent needs no ordering
        return
    elif isinstance(e, ev.ConsentState):
        if stale_for_erased(e.updated_at, out.erased.get(e.customer_id)):
            out.counts[(item.topic, "stale_for_erased")] += 1
            return
        _on_consent(out, e)
    elif isinstance(e, ev.ErasureRequested):
        _forget(out, e.customer_id)
        out.erased[e.customer_id] = out.newly_erased[e.customer_id] = e.requested_at
        out.emit.append(("erasure-completed", ev.ErasureCompleted(
            request_id=e.request_id, customer_id=e.customer_id, service="segmentation", completed_at=batch.now,
            erased={"profiles": 1, "consent": 1})))
    elif isinstance(e, ev.ExportRequested):
        c = out.customers.get(e.customer_id) or Customer()
        out.emit.append(("export-completed", exports.answer(
            e, "segmentation", {"profiling_consent_since": c.profiling_since, "profile": c.profile}, batch.now)))
    elif isinstance(e, ev.SegmentationTick):
        for cid in sorted(out.customers):
            c = out.customers[cid]
            if c.profile is not None and partition_of(cid.encode(), batch.partitions) == e.partition:
                _evaluate(out, cid, c.profile, c.profile, None, batch)
    else:
        raise TypeError(f"segmentation does not consume {type(e).__name__}")
    out.counts[(item.topic, "handled")] += 1


_Profiled = ev.CustomerRegistered | ev.CustomerUpdated | ev.OrderPlaced | ev.CartAbandoned
_PROFILED = frozenset({ev.CustomerRegistered, ev.CustomerUpdated, ev.OrderPlaced, ev.CartAbandoned})


def _on_consent(out: Outcome, state: ev.ConsentState) -> None:
    cid = state.customer_id
    if not state.granted(ev.Purpose.PROFILING):
        _forget(out, cid)  # withdrawal deletes the profile at once
        return
    since = state.purposes[ev.Purpose.PROFILING].since.isoformat()
    c = out.customers.get(cid) or Customer()
    if c.profiling_since != since:
        out.customers[cid] = Customer(since, c.profile)
        out.changed.add(cid)


def _forget(out: Outcome, cid: str | None) -> None:
    if cid is None:
        return
    c = out.customers.get(cid)
    if c is not None and (c.kept or c.profile is not None):
        out.customers[cid] = Customer()
        out.changed.add(cid)


def _evaluate(out: Outcome, cid: str, before: prof.Profile, after: prof.Profile, event: ev.Event | None,
              batch: _Batch) -> None:
    """Stores ``after`` with the segments it enters now, each emitted once per trigger key."""
    ruleset = batch.ruleset
    facts = rules.facts(before, after, event, batch.now)
    entries = rules.evaluate(ruleset, facts, set(after.get("emitted", ())))
    if entries:
        caused_by = [_cause(event)]
        segments: dict[str, Any] = dict(after.get("segments", {}))
        marks = batch.marks.get(partition_of(cid.encode(), batch.partitions))
        for entry in entries:
            out.emit.append(("segment-entered", ev.SegmentEntered(
                customer_id=cid, segment=entry.segment, rule_version=ruleset.version, trigger_key=entry.trigger_key,
                facts=entry.facts, caused_by=caused_by, preferred_channel=after.get("preferred_channel"),
                evaluated_at=batch.now, consent_marks=marks)))
            after = prof.remember(after, entry.trigger_key)
            segments[entry.segment] = {"entered_at": batch.now_iso, "rule_version": ruleset.version,
                                       "trigger_key": entry.trigger_key, "facts": entry.facts, "caused_by": caused_by}
            out.entries[entry.segment] += 1
        after = {**after, "segments": segments}
    current = out.customers[cid]
    if after != current.profile:
        out.customers[cid] = Customer(current.profiling_since, after)
        out.changed.add(cid)


def _cause(event: ev.Event | None) -> str:
    if type(event) is ev.CartAbandoned:
        return event.cart_id
    if type(event) is ev.OrderPlaced:
        return event.order_id
    return "daily"
