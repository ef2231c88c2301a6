"""Consent before triggers, decided without I/O: when issuance may decide a segment entry.

A trigger carries its **consent marks** (``ev.ConsentMarks``): where the customer's partition of
``consent-changed`` and of ``consent-state`` ended when the trigger was read. Every consent
decision the shop published before the trigger lies below them. Issuance knows, per partition,
how far it has applied ``consent-state`` (its own position) and how far consent has applied
``consent-changed`` (the latest :class:`ev.ConsentWatermark` it applied, which follows every
state it caused on the same partition). A trigger is decided once both have passed its marks;
until then it is held, at most ``max_hold_s``, after which it is refused (``consent_unconfirmed``)
rather than decided on consent that may be stale. See docs/privacy.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from shared import events as ev

UNCONFIRMED = "consent_unconfirmed"


@dataclass(frozen=True, slots=True)
class Known:
    """What issuance has applied on one customer partition."""

    changed: int = 0  # consent applied consent-changed below this (its latest watermark)
    state: int = 0  # issuance applied consent-state below this

    def advance(self, *, changed: int = 0, state: int = 0) -> Known:
        """Marks only move forward (a redelivered older watermark changes nothing)."""
        return replace(self, changed=max(self.changed, changed), state=max(self.state, state))


def marks_of(entry: ev.SegmentEntered) -> ev.ConsentMarks:
    """An entry's consent marks: every entry decided or held has them (the gate reads Kafka's
    for one that came without)."""
    if entry.consent_marks is None:
        raise ValueError(f"segment entry {entry.trigger_key!r} has no consent marks yet")
    return entry.consent_marks


def ready(marks: ev.ConsentMarks, known: Known) -> bool:
    """Whether every consent decision published before the trigger has been applied."""
    return known.changed >= marks.changed and known.state >= marks.state


def expired(held_at: datetime, now: datetime, max_hold_s: float) -> bool:
    return (now - held_at).total_seconds() >= max_hold_s


@dataclass(frozen=True, slots=True)
class Closing:
    """What a consent change or an erasure does to one active voucher."""

    revoke: str | None  # the revocation reason, None: the voucher stays
    cancel: str | None  # the delivery-cancelled reason, None: nothing to cancel


DELIVERED = {ev.Channel.EMAIL.value, ev.Channel.SMS.value, ev.Channel.PUSH.value}


def closing(channel: str, *, erased: bool, offers_withdrawn: bool, channel_withdrawn: bool, unsent: bool,
            revoke_on_withdrawal: bool) -> Closing:
    """Delivery follows consent: a voucher whose delivery was not sent yet when its customer
    withdrew offers or its channel (or was erased) is revoked and its delivery cancelled. One
    already sent is revoked on erasure, and on an offers withdrawal if its campaign says so; its
    sender is told to drop the delivery if it still holds it."""
    sent_by_channel = channel in DELIVERED
    if erased:
        return Closing("customer_erased", "customer_erased" if sent_by_channel else None)
    reason = "consent_withdrawn" if offers_withdrawn else "channel_withdrawn" if channel_withdrawn else None
    if reason is None:
        return Closing(None, None)
    if unsent:
        return Closing(reason, reason)
    if offers_withdrawn and revoke_on_withdrawal:
        return Closing(reason, reason if sent_by_channel else None)
    return Closing(None, None)
