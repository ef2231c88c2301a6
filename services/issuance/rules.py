"""Whether a customer entering a segment gets a campaign's voucher: consent, channel, variant,
per-customer limit, count limit — in that order. Budget comes last, in the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.issuance.campaigns import HOLDOUT, CampaignSpec, assign_variant, choose_channel
from shared.events import Channel


@dataclass(frozen=True, slots=True)
class CustomerConsent:
    personalized_offers: bool
    channels: frozenset[Channel]


NO_CONSENT = CustomerConsent(False, frozenset())


@dataclass(frozen=True, slots=True)
class Issue:
    variant: str
    channel: Channel
    max_discount: int


@dataclass(frozen=True, slots=True)
class Deny:
    reason: str
    variant: str | None = None


def decide(spec: CampaignSpec, *, customer_id: str, preferred: Channel | None, consent: CustomerConsent,
           vouchers_of_customer: int, vouchers_of_campaign: int, now: datetime) -> Issue | Deny:
    if not consent.personalized_offers:
        return Deny("no_consent")
    if not spec.validity.open_at(now) and spec.validity.days_after_issue is None:
        return Deny("campaign_not_running")
    channel = choose_channel(preferred, set(consent.channels), list(spec.channels))
    if channel is None:
        return Deny("no_channel_consent")
    variant = assign_variant(spec.id, customer_id, list(spec.variants), spec.holdout_percent)
    if variant == HOLDOUT:
        return Deny("holdout", HOLDOUT)
    if spec.budget.per_customer is not None and vouchers_of_customer >= spec.budget.per_customer:
        return Deny("per_customer_limit", variant)
    if spec.budget.max_vouchers is not None and vouchers_of_campaign >= spec.budget.max_vouchers:
        return Deny("voucher_limit", variant)
    return Issue(variant, channel, spec.offer_for(variant).max_discount.amount)
