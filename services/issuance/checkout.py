"""Pure checkout decisions: is this voucher good for this order, and how much off?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.issuance.campaigns import CampaignSpec, FixedAmountOffer, GiftCardOffer, PercentageOffer
from shared.events import LineItem, Money


@dataclass(frozen=True, slots=True)
class VoucherView:
    """What checkout needs to know about a stored voucher."""

    id: str
    campaign_id: str
    customer_id: str | None  # None: a partner code, anyone may use it
    partner: str | None
    variant: str
    kind: str
    brand: str | None
    currency: str
    reserved: int
    balance: int | None
    status: str
    expires_at: datetime
    session: str | None = None  # the checkout session holding it (a LOCK), until session_expires_at
    session_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Accept:
    discount: int


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str
    detail: str


def matching_total(offer: PercentageOffer, personal_brand: str | None, items: list[LineItem]) -> int:
    """The value of the items the percentage applies to: every item when the offer has no
    restriction, else those matching its brands, categories or SKUs (and the voucher's own brand)."""
    brands = set(offer.brands) | ({personal_brand} if personal_brand else set())
    restricted = bool(brands or offer.categories or offer.skus)
    total = 0
    for item in items:
        if not restricted:
            ok = True
        else:
            ok = ((not brands or item.brand in brands)
                  and (not offer.categories or item.category in offer.categories)
                  and (not offer.skus or item.sku in offer.skus))
        if ok:
            total += item.unit_price.amount * item.quantity
    return total


def evaluate(voucher: VoucherView | None, spec: CampaignSpec | None, campaign_status: str | None, *,
             customer_id: str, order: Money, items: list[LineItem], now: datetime,
             budget_remaining: int, session: str | None = None) -> Accept | Refuse:
    """The discount this voucher gives this order, or the reason it gives none. Checked in the
    order a customer would want to hear about it. ``session`` is the checkout session the request
    belongs to: a voucher another session holds (a LOCK, until it expires) is refused."""
    # Someone else's voucher is answered as no voucher at all: whoever holds a code learns
    # nothing about it unless it is theirs.
    if voucher is None or spec is None or (voucher.customer_id is not None and voucher.customer_id != customer_id):
        return Refuse("unknown_code", "no voucher of this customer has this code")
    if voucher.status == "redeemed":
        return Refuse("already_redeemed", "this voucher was already used")
    if voucher.status == "revoked":
        return Refuse("revoked", "this voucher was withdrawn")
    if voucher.status == "expired" or now >= voucher.expires_at:
        return Refuse("expired", f"this voucher expired at {voucher.expires_at.isoformat()}")
    if (voucher.session is not None and voucher.session != session and voucher.session_expires_at is not None
            and now < voucher.session_expires_at):
        return Refuse("locked", "another checkout session holds this voucher until "
                      f"{voucher.session_expires_at.isoformat()}")
    if campaign_status != "active":
        return Refuse("campaign_paused", f"the campaign is {campaign_status}")
    if order.currency != voucher.currency:
        return Refuse("currency_mismatch", f"the voucher is in {voucher.currency}, the order in {order.currency}")
    offer = spec.offer_for(voucher.variant)
    if isinstance(offer, FixedAmountOffer):
        if offer.min_order and order.amount < offer.min_order.amount:
            return Refuse("min_order_not_met", f"the order must reach {offer.min_order}")
        discount = min(offer.amount.amount, order.amount)
    elif isinstance(offer, PercentageOffer):
        base = matching_total(offer, voucher.brand, items)
        if base == 0:
            return Refuse("not_applicable_items", "no item of the order is covered by this voucher")
        discount = min(base * offer.percent // 100, offer.cap.amount, order.amount)
    else:
        assert isinstance(offer, GiftCardOffer)
        balance = voucher.balance or 0
        if balance <= 0:
            return Refuse("already_redeemed", "this gift card has no balance left")
        discount = min(balance, order.amount)
    if discount <= 0:
        return Refuse("nothing_to_discount", "the order amount is zero")
    if voucher.customer_id is None and discount > budget_remaining:
        return Refuse("budget_exhausted", "the campaign's budget is spent")
    return Accept(discount)
