"""Segmentation, issuance and analytics: segments entered, vouchers and their lifecycle, budgets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shared.events.base import Channel, CurrencyCode, CustomerId, Event, Identifier, MinorUnits, Money, Record, UtcDatetime


class ConsentMarks(Record):
    """Log-end offsets of the customer's partition of ``consent-changed`` and ``consent-state``,
    read after the trigger was read: every consent decision published before the trigger lies
    below them."""

    partition: int = Field(ge=0)
    changed: int = Field(ge=0)
    state: int = Field(ge=0)


class SegmentEntered(Event):
    """A customer entered a segment. ``facts`` and ``caused_by`` are the explanation."""

    TYPE = "voucherstream.segment.entered.v1"
    PERSONAL = ("trigger_key", "facts", "caused_by", "preferred_channel")

    customer_id: CustomerId
    segment: Identifier
    rule_version: str = Field(min_length=1, max_length=64)
    trigger_key: str = Field(
        min_length=1, max_length=200, description="what made this entry unique, e.g. birthday:2026 or cart:c-17"
    )
    facts: dict[str, Any] = Field(default_factory=dict)
    caused_by: list[str] = Field(default_factory=list, description="ids of the events that caused it")
    preferred_channel: Channel | None = None
    evaluated_at: UtcDatetime
    consent_marks: ConsentMarks | None = Field(
        None, description="where consent-changed and consent-state ended on the customer's partition when the "
        "trigger was read: issuance decides once consent has applied everything below them")


class SegmentationTick(Event):
    """Internal to segmentation: wakes the worker that owns ``partition`` to evaluate time-based
    rules (birthdays) for the customers of that partition, as an input like any other (so its
    effects are applied once, with the partition's consumed offsets)."""

    TYPE = "voucherstream.segmentation.tick.v1"
    KEY_FIELD = "partition_key"

    partition_key: str = Field(pattern=r"^tick-[0-9]+$")
    partition: int = Field(ge=0)
    at: UtcDatetime


# --------------------------------------------------------------------------- issuance


class LedgerSnapshot(Record):
    """A campaign's budget ledger right after a change; ``seq`` grows by one per change."""

    currency: CurrencyCode
    limit: MinorUnits
    reserved: MinorUnits
    spent: MinorUnits
    seq: int = Field(strict=True, ge=0)


class OfferSummary(Record):
    kind: Literal["percentage", "fixed_amount", "gift_card"]
    percent: int | None = Field(default=None, ge=1, le=100)
    amount: Money | None = Field(default=None, description="fixed amount, percentage cap, or gift-card balance")
    min_order: Money | None = None
    brand: str | None = None
    category: str | None = None
    skus: list[str] = Field(default_factory=list)


class VoucherIssued(Event):
    """Never carries the code itself."""

    TYPE = "voucherstream.voucher.issued.v1"
    PERSONAL = ("trigger_key",)

    voucher_id: Identifier
    campaign_id: Identifier
    customer_id: CustomerId
    variant: str
    channel: Channel
    trigger_key: str
    max_discount: Money
    expires_at: UtcDatetime
    issued_at: UtcDatetime
    ledger: LedgerSnapshot


class IssuanceDenied(Event):
    TYPE = "voucherstream.issuance.denied.v1"
    PERSONAL = ("trigger_key",)

    campaign_id: Identifier
    customer_id: CustomerId
    reason: Identifier
    trigger_key: str
    variant: str | None = None
    denied_at: UtcDatetime


class DeliveryRequested(Event):
    """For the shop's e-mail, SMS and push senders: the only event that carries a code."""

    TYPE = "voucherstream.delivery.requested.v1"
    PERSONAL = ("code", "offer")

    voucher_id: Identifier
    campaign_id: Identifier
    customer_id: CustomerId
    channel: Literal[Channel.EMAIL, Channel.SMS, Channel.PUSH]
    code: str = Field(min_length=4, max_length=64)
    offer: OfferSummary
    expires_at: UtcDatetime


class DeliveryCancelled(Event):
    """For the shop's senders: do not deliver this voucher (its customer withdrew consent or was
    erased before it was sent). Published on ``delivery-requested``, after the request it cancels."""

    TYPE = "voucherstream.delivery.cancelled.v1"

    voucher_id: Identifier
    campaign_id: Identifier
    customer_id: CustomerId
    channel: Literal[Channel.EMAIL, Channel.SMS, Channel.PUSH]
    reason: Literal["consent_withdrawn", "channel_withdrawn", "customer_erased"]
    cancelled_at: UtcDatetime


class VoucherRedeemed(Event):
    TYPE = "voucherstream.voucher.redeemed.v1"
    PERSONAL = ("order_amount",)

    redemption_id: Identifier
    voucher_id: Identifier
    campaign_id: Identifier
    customer_id: CustomerId
    variant: str
    channel: Channel
    discount: Money
    order_amount: Money
    redeemed_at: UtcDatetime
    ledger: LedgerSnapshot


class RedemptionRolledBack(Event):
    TYPE = "voucherstream.redemption.rolled_back.v1"

    redemption_id: Identifier
    voucher_id: Identifier
    campaign_id: Identifier
    customer_id: CustomerId
    returned: Money
    rolled_back_at: UtcDatetime
    ledger: LedgerSnapshot


class VoucherExpired(Event):
    TYPE = "voucherstream.voucher.expired.v1"

    voucher_id: Identifier
    campaign_id: Identifier
    customer_id: CustomerId
    released: Money
    expired_at: UtcDatetime
    ledger: LedgerSnapshot


class VoucherRevoked(Event):
    TYPE = "voucherstream.voucher.revoked.v1"

    voucher_id: Identifier
    campaign_id: Identifier
    customer_id: CustomerId
    reason: Identifier
    released: Money
    revoked_at: UtcDatetime
    ledger: LedgerSnapshot


class Variant(Record):
    name: Identifier
    weight: int = Field(strict=True, ge=0, le=10_000)


class CampaignChanged(Event):
    TYPE = "voucherstream.campaign.changed.v1"
    KEY_FIELD = "campaign_id"

    campaign_id: Identifier
    name: str = Field(min_length=1, max_length=200)
    status: Literal["active", "paused", "ended"]
    segment: Identifier
    offer: OfferSummary
    budget_limit: Money
    variants: list[Variant] = Field(default_factory=list)
    holdout_percent: int = Field(default=0, ge=0, le=100)
    updated_at: UtcDatetime


# --------------------------------------------------------------------------- analytics


class BudgetCounters(Event):
    TYPE = "voucherstream.budget.counters.v1"
    KEY_FIELD = "campaign_id"

    campaign_id: Identifier
    ledger: LedgerSnapshot
    issued: int = Field(ge=0)
    redeemed: int = Field(ge=0)
    denied: dict[str, int] = Field(default_factory=dict)
    updated_at: UtcDatetime


class BudgetThresholdCrossed(Event):
    TYPE = "voucherstream.budget.threshold_crossed.v1"
    KEY_FIELD = "campaign_id"

    campaign_id: Identifier
    threshold_percent: Literal[50, 80, 100]
    ledger: LedgerSnapshot
    crossed_at: UtcDatetime
