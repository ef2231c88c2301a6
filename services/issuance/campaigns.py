"""Campaign definitions and the pure decisions that depend only on them: validation, the
voucher's maximum discount, variant assignment, channel choice, validity."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.issuance import codes
from shared.events import Channel, Identifier, Money, OfferSummary, UtcDatetime
from shared.events import Variant as VariantEvent

Slug = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]
Label = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PercentageOffer(Strict):
    """``percent`` off the matching items (all items when no restriction), at most ``cap``."""

    kind: Literal["percentage"] = "percentage"
    percent: int = Field(ge=1, le=100)
    cap: Money
    brands: list[Label] = Field(default_factory=list)
    categories: list[Label] = Field(default_factory=list)
    skus: list[Label] = Field(default_factory=list)
    favourite_brand: bool = Field(False, description="restrict each voucher to the brand its customer buys most "
                                  "(the segment's favourite_brand fact)")

    @property
    def max_discount(self) -> Money:
        return self.cap

    @property
    def currency(self) -> str:
        return self.cap.currency


class FixedAmountOffer(Strict):
    kind: Literal["fixed_amount"] = "fixed_amount"
    amount: Money
    min_order: Money | None = None

    @property
    def max_discount(self) -> Money:
        return self.amount

    @property
    def currency(self) -> str:
        return self.amount.currency

    @model_validator(mode="after")
    def _same_currency(self) -> FixedAmountOffer:
        if self.min_order and self.min_order.currency != self.amount.currency:
            raise ValueError("min_order.currency must equal amount.currency")
        return self


class GiftCardOffer(Strict):
    """A balance spent over several orders until it is gone or expires."""

    kind: Literal["gift_card"] = "gift_card"
    balance: Money

    @property
    def max_discount(self) -> Money:
        return self.balance

    @property
    def currency(self) -> str:
        return self.balance.currency


Offer = Annotated[PercentageOffer | FixedAmountOffer | GiftCardOffer, Field(discriminator="kind")]


class Validity(Strict):
    """Either ``days_after_issue`` or a fixed window ``starts_at``..``ends_at``."""

    days_after_issue: int | None = Field(default=None, ge=1, le=3660)
    starts_at: UtcDatetime | None = None
    ends_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> Validity:
        fixed = self.starts_at is not None or self.ends_at is not None
        if (self.days_after_issue is None) == (not fixed):
            raise ValueError("give either days_after_issue or ends_at (with an optional starts_at), not both")
        if fixed and self.ends_at is None:
            raise ValueError("a fixed window needs ends_at")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self

    def expires_at(self, issued_at: datetime) -> datetime:
        if self.days_after_issue is not None:
            return issued_at + timedelta(days=self.days_after_issue)
        assert self.ends_at is not None
        return self.ends_at

    def open_at(self, at: datetime) -> bool:
        return (self.starts_at is None or at >= self.starts_at) and (self.ends_at is None or at < self.ends_at)


class Budget(Strict):
    limit: Money
    max_vouchers: int | None = Field(default=None, ge=1)
    per_customer: int | None = Field(default=1, ge=1, description="vouchers per customer; null: no limit")


class Variant(Strict):
    name: Identifier
    weight: int = Field(default=1, ge=0, le=10_000)
    offer: Offer | None = Field(default=None, description="overrides the campaign's offer for this variant")


class CodeSpec(Strict):
    charset: str = Field(default=codes.UNAMBIGUOUS, min_length=10, max_length=64, pattern=r"^[A-Z0-9]+$")
    length: int = Field(default=13, ge=4, le=40)
    prefix: str = Field(default="", max_length=16, pattern=r"^[A-Z0-9]*$")
    postfix: str = Field(default="", max_length=16, pattern=r"^[A-Z0-9]*$")
    pattern: str | None = Field(default=None, max_length=64, pattern=r"^[A-Z0-9#-]*#[A-Z0-9#-]*$",
                                description="'#' is one random symbol, e.g. XMAS-####-####-####")

    @model_validator(mode="after")
    def _enough_entropy(self) -> CodeSpec:
        bits = codes.entropy_bits(self.charset, codes.symbols_in(self.pattern, self.length))
        if bits < codes.MIN_ENTROPY_BITS:
            raise ValueError(f"codes would carry {bits:.1f} bits of randomness; at least "
                             f"{codes.MIN_ENTROPY_BITS} are required (a longer code or a larger charset)")
        if len(set(self.charset)) != len(self.charset):
            raise ValueError("charset repeats a symbol")
        return self

    def generate(self) -> str:
        return codes.generate(charset=self.charset, length=self.length, prefix=self.prefix,
                              postfix=self.postfix, pattern=self.pattern)


class CampaignSpec(Strict):
    """What a marketer defines. Validated with precise errors; every amount in ``currency``."""

    id: Slug
    name: Label
    segment: Identifier
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    offer: Offer
    validity: Validity
    budget: Budget
    channels: list[Channel] = Field(default_factory=lambda: [Channel.EMAIL, Channel.SMS, Channel.PUSH, Channel.ONSITE],
                                    min_length=1, description="priority order")
    variants: list[Variant] = Field(default_factory=lambda: [Variant(name="A")], min_length=1, max_length=10)
    holdout_percent: int = Field(default=0, ge=0, le=90)
    code: CodeSpec = Field(default_factory=CodeSpec)
    revoke_on_withdrawal: bool = Field(default=True, description="revoke unredeemed vouchers when the customer "
                                       "withdraws personalized_offers")

    @model_validator(mode="after")
    def _consistent(self) -> CampaignSpec:
        offers = [("offer", self.offer)] + [(f"variants[{i}].offer", v.offer) for i, v in enumerate(self.variants) if v.offer]
        for where, offer in offers:
            if offer.currency != self.currency:
                raise ValueError(f"{where} is in {offer.currency}, the campaign in {self.currency}")
        if self.budget.limit.currency != self.currency:
            raise ValueError(f"budget.limit is in {self.budget.limit.currency}, the campaign in {self.currency}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        if sum(v.weight for v in self.variants) == 0:
            raise ValueError("at least one variant needs a positive weight")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels lists a channel twice")
        for where, offer in offers:
            if offer.max_discount.amount > self.budget.limit.amount:
                raise ValueError(f"{where}'s maximum discount exceeds the whole budget")
        return self

    def offer_for(self, variant: str) -> PercentageOffer | FixedAmountOffer | GiftCardOffer:
        for v in self.variants:
            if v.name == variant and v.offer is not None:
                return v.offer
        return self.offer


HOLDOUT = "holdout"


def assign_variant(campaign_id: str, customer_id: str, variants: list[Variant], holdout_percent: int) -> str:
    """Deterministic: the same customer always lands in the same variant of a campaign."""
    bucket = int.from_bytes(hashlib.sha256(f"{campaign_id}\x00{customer_id}".encode()).digest()[:8], "big") % 10_000
    if bucket < holdout_percent * 100:
        return HOLDOUT
    total = sum(v.weight for v in variants)
    point = (bucket - holdout_percent * 100) * total // (10_000 - holdout_percent * 100)
    for v in variants:
        if point < v.weight:
            return v.name
        point -= v.weight
    return variants[-1].name


def choose_channel(preferred: Channel | None, consented: set[Channel], priority: list[Channel]) -> Channel | None:
    """The preferred channel if the customer consented to it; else the first of the campaign's
    priority with consent; else on-site (needs no contact consent) if the campaign shows on-site;
    else ``None``."""
    if preferred is not None and preferred != Channel.ONSITE and preferred in consented:
        return preferred
    for channel in priority:
        if channel != Channel.ONSITE and channel in consented:
            return channel
    if Channel.ONSITE in priority or preferred == Channel.ONSITE:
        return Channel.ONSITE
    return None


def personal_brand(offer, facts: dict) -> str | None:
    """The brand a voucher is restricted to for its customer, when the offer says so."""
    if isinstance(offer, PercentageOffer) and offer.favourite_brand:
        brand = facts.get("favourite_brand")
        return str(brand) if brand else None
    return None


def offer_summary(offer: PercentageOffer | FixedAmountOffer | GiftCardOffer, brand: str | None = None) -> OfferSummary:
    if isinstance(offer, PercentageOffer):
        return OfferSummary(kind="percentage", percent=offer.percent, amount=offer.cap,
                            brand=brand or (offer.brands[0] if len(offer.brands) == 1 else None),
                            category=offer.categories[0] if len(offer.categories) == 1 else None, skus=offer.skus)
    if isinstance(offer, FixedAmountOffer):
        return OfferSummary(kind="fixed_amount", amount=offer.amount, min_order=offer.min_order)
    return OfferSummary(kind="gift_card", amount=offer.balance)


def variants_event(spec: CampaignSpec) -> list[VariantEvent]:
    return [VariantEvent(name=v.name, weight=v.weight) for v in spec.variants]


class Catalogue:
    """Parsed campaign definitions, cached by (id, version): a row of ``campaigns`` (or any
    mapping with ``id``, ``version`` and ``definition``) to its :class:`CampaignSpec`."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, int], CampaignSpec] = {}

    def spec(self, row: Mapping[str, Any]) -> CampaignSpec:
        key = (row["id"], row["version"])
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = CampaignSpec.model_validate(row["definition"])
        return spec
