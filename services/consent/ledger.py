"""Pure consent decisions: the current state is derived from the ledger, never edited in place."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.events import ConsentState, ContractError, Purpose, PurposeState


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
