"""What every service applies the same way after an erasure: keyed hashes that stand in for a
customer's id (a service recognises an erased customer again — proof, replays — without keeping
the id; irreversible without the key), and which consent-state copies belong to the erased past."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime


def subject_hash(key: bytes, customer_id: str) -> str:
    return hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest()


def stale_for_erased(updated_at: datetime, erased_at: datetime | None) -> bool:
    """A consent-state of an erased customer that the consent service wrote before the erasure
    (a replay, a stale copy re-published): it must not bring them back. Both times are the consent
    service's own clock, never a time the shop chose; a state written after the erasure is a
    returning customer's."""
    return erased_at is not None and updated_at <= erased_at
