"""Consent and privacy: the consent service's state and watermarks, erasures and exports."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from shared.events.base import CustomerId, Event, Identifier, Purpose, Record, UtcDatetime


class PurposeState(Record):
    granted: bool
    since: UtcDatetime
    policy_version: str


class ConsentState(Event):
    """A customer's whole current consent, one entry per purpose they ever decided on.
    Published on the compacted ``consent-state`` topic; a tombstone means the customer was erased."""

    TYPE = "voucherstream.consent.state.v1"
    PERSONAL = ("purposes",)

    customer_id: CustomerId
    purposes: dict[Purpose, PurposeState] = Field(default_factory=dict)
    updated_at: UtcDatetime

    def granted(self, purpose: Purpose) -> bool:
        state = self.purposes.get(purpose)
        return bool(state and state.granted)


class ConsentWatermark(Event):
    """How far the consent service has applied one partition of ``consent-changed``: every
    decision below ``next_offset`` is applied and its ``consent-state`` record precedes this one
    on the same partition of ``consent-state``. Issuance holds a trigger until it has seen the
    watermark pass the consent decisions published before it (see docs/privacy.md)."""

    TYPE = "voucherstream.consent.watermark.v1"
    KEY_FIELD = "partition_key"

    partition_key: str = Field(pattern=r"^watermark-[0-9]+$")
    partition: int = Field(ge=0)
    next_offset: int = Field(ge=0)
    at: UtcDatetime


class ErasureRequested(Event):
    TYPE = "voucherstream.privacy.erasure.requested.v1"

    request_id: Identifier
    customer_id: CustomerId
    requested_at: UtcDatetime


class ErasureCompleted(Event):
    TYPE = "voucherstream.privacy.erasure.completed.v1"

    request_id: Identifier
    customer_id: CustomerId
    service: Identifier
    completed_at: UtcDatetime
    erased: dict[str, int] = Field(default_factory=dict, description="rows erased or pseudonymised, per table")


class ExportRequested(Event):
    TYPE = "voucherstream.privacy.export.requested.v1"

    request_id: Identifier
    customer_id: CustomerId
    requested_at: UtcDatetime
    recipient_key: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9+/]{43}=$",
                                      description="X25519 public key (base64) the parts are sealed for; only the "
                                                  "consent service holds its private key, for this request only")


class ExportCompleted(Event):
    TYPE = "voucherstream.privacy.export.completed.v1"

    request_id: Identifier
    customer_id: CustomerId
    service: Identifier
    completed_at: UtcDatetime
    data: dict[str, Any] = Field(default_factory=dict, description="the part in clear: only when the request "
                                 "carried no recipient_key (an older consent service)")
    sealed: str | None = Field(None, max_length=4_000_000, description="the part (JSON) sealed for the request's "
                               "recipient_key (shared/sealing.py: X25519, HKDF-SHA256, AES-GCM; context "
                               "'<request_id>/<service>')")
