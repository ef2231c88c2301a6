"""Pure consent decisions: the current state is derived from the ledger, never edited in place."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from shared.events import ConsentState, Purpose, PurposeState


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


def superseded_by_erasure(occurred_at: datetime, erased_at: datetime | None) -> bool:
    """A decision made before the customer's erasure belongs to the erased past: replaying it
    must not bring the customer back. One made after it is a returning customer's new decision."""
    return erased_at is not None and occurred_at <= erased_at
