"""Pure consent decisions: the current state is derived from the ledger, never edited in place."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.events import ConsentChanged, ConsentState, ContractError, Purpose, PurposeState


@dataclass(frozen=True, slots=True)
class Decision:
    """One ledger row, as far as the state is concerned. ``seq`` (the ledger id) breaks ties
    between decisions with the same event time: the one recorded later wins."""

    purpose: Purpose
    granted: bool
    policy_version: str
    occurred_at: datetime
    seq: int


def current_state(decisions: Iterable[Decision]) -> dict[Purpose, PurposeState]:
    """For each purpose, the latest decision by event time. A late-arriving older decision stays
    in the ledger but does not override a newer one."""
    latest: dict[Purpose, Decision] = {}
    for d in decisions:
        best = latest.get(d.purpose)
        if best is None or (d.occurred_at, d.seq) > (best.occurred_at, best.seq):
            latest[d.purpose] = d
    return {
        p: PurposeState(granted=d.granted, since=d.occurred_at, policy_version=d.policy_version)
        for p, d in sorted(latest.items())
    }


def state_event(customer_id: str, purposes: dict[Purpose, PurposeState], now: datetime) -> ConsentState:
    return ConsentState(customer_id=customer_id, purposes=purposes, updated_at=now)


def check_occurred_at(occurred_at: datetime, received_at: datetime, max_skew_s: float) -> None:
    """A decision dated later than its receipt plus a small clock skew breaks the contract: a
    grant dated into the future would outrank every real decision until that date."""
    if occurred_at > received_at + timedelta(seconds=max_skew_s):
        raise ContractError("occurred_in_future", f"occurred_at is more than {max_skew_s:g} s after its receipt "
                            f"({received_at.isoformat()}); send the time the customer decided")


@dataclass(frozen=True, slots=True)
class ErasureMark:
    """What consent remembers of a customer's latest erasure: the log end of their
    consent-changed partition when it was requested (None: erased before this was kept)."""

    changed_offset: int | None
    requested_at: datetime


def superseded_by_erasure(mark: ErasureMark | None, *, offset: int | None, event_erased: bool,
                          occurred_at: datetime) -> bool:
    """Whether a decision belongs to the erased past (and replaying it must not bring the customer
    back): it is one of the erased decisions (its event id), it was published on Kafka before the
    erasure (its offset lies below the mark), or it says it was made before the erasure. What
    lets a decision through is receipt order alone: a sender's date can only keep one out (a
    decision dated after the erasure but published before it stays erased)."""
    if mark is None:
        return False
    if event_erased or occurred_at <= mark.requested_at:
        return True
    return offset is not None and mark.changed_offset is not None and offset < mark.changed_offset


def idempotent_event_id(api_key_id: str, customer_id: str, idempotency_key: str) -> str:
    """The ledger's event id of a decision recorded over HTTP with an Idempotency-Key: one
    namespace per API key and customer, so two callers (or two customers) never share a key."""
    digest = hashlib.sha256("\0".join((api_key_id, customer_id, idempotency_key)).encode()).hexdigest()
    return f"http:{digest[:40]}"


def same_decision(stored: Mapping[str, Any] | None, change: ConsentChanged) -> bool:
    """Whether a ledger row already under an Idempotency-Key records this very decision (a retry)
    rather than another one sent with a reused key."""
    return stored is not None and (
        stored["customer_id"], stored["purpose"], stored["granted"], stored["policy_version"], stored["source"],
        stored["occurred_at"]) == (change.customer_id, change.purpose.value, change.granted, change.policy_version,
                                   change.source, change.occurred_at)
