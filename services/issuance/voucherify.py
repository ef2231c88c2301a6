"""Voucherify's checkout API in Voucherstream's terms, and back (pure translation, no I/O).

A shop whose checkout calls Voucherify through its SDKs points them at ``/voucherify`` of the
issuance service; the routes (``voucherify_api.py``) turn each request into the native checkout's
inputs here, run the native use case, and turn its answer into Voucherify's shapes here. There is
one implementation of validation and redemption: the native one. docs/voucherify.md has the
mapping and what is not supported.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from services.issuance import codes
from services.issuance.campaigns import CampaignSpec, FixedAmountOffer, GiftCardOffer, PercentageOffer
from shared import events as ev


class VoucherifyError(Exception):
    """An answer in Voucherify's error shape: ``{code, key, message, details}``."""

    def __init__(self, code: int, key: str, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.code, self.key, self.message, self.details = code, key, message, details

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "key": self.key, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out


# Our refusal reasons as Voucherify's error keys (its documented list), with the HTTP status a
# failed redemption is answered with. docs/voucherify.md shows the same table.
REFUSALS: dict[str, tuple[int, str, str]] = {
    "unknown_code": (404, "resource_not_found", "Resource not found"),
    "expired": (400, "voucher_expired", "voucher expired"),
    "already_redeemed": (400, "quantity_exceeded", "quantity exceeded"),
    "revoked": (400, "voucher_disabled", "voucher is disabled"),
    "campaign_paused": (400, "voucher_disabled", "voucher is disabled"),
    "min_order_not_met": (400, "order_rules_violated", "order does not match validation rules"),
    "not_applicable_items": (400, "order_rules_violated", "order does not match validation rules"),
    "currency_mismatch": (400, "invalid_order", "invalid order"),
    "nothing_to_discount": (400, "invalid_amount", "invalid order amount"),
    "budget_exhausted": (400, "redemption_rules_violated", "redemption does not match validation rules"),
    "locked": (400, "multiple_requests", "voucher is held by another session"),
    "idempotency_key_reused": (409, "duplicate_resource_key", "the session key or order was used with another "
                                                               "request"),
}

STACKING_RULES: dict[str, Any] = {
    # One voucher per order until stacking is supported: a request with more is refused.
    "redeemables_limit": 1, "applicable_redeemables_limit": 1, "applicable_redeemables_per_category_limit": 1,
    "applicable_exclusive_redeemables_limit": 1, "applicable_exclusive_redeemables_per_category_limit": 1,
    "exclusive_categories": [], "joint_categories": [], "redeemables_application_mode": "ALL",
    "redeemables_sorting_rule": "REQUESTED_ORDER",
}

TTL_UNITS = {"DAYS": 86400.0, "HOURS": 3600.0, "MINUTES": 60.0, "SECONDS": 1.0, "MILLISECONDS": 1e-3,
             "MICROSECONDS": 1e-6, "NANOSECONDS": 1e-9}
CODE = re.compile(codes.SUBMITTED)
SESSION_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Product(_Lenient):
    id: str | None = None
    source_id: str | None = None
    price: int | None = None
    metadata: dict[str, Any] | None = None


class _Item(_Lenient):
    sku_id: str | None = None
    product_id: str | None = None
    source_id: str | None = None
    quantity: int | None = None
    price: int | None = None
    amount: int | None = None
    product: _Product | None = None
    sku: _Product | None = None
    metadata: dict[str, Any] | None = None


class _Order(_Lenient):
    id: str | None = None
    source_id: str | None = None
    amount: int | None = None
    items: list[_Item] | None = None
    metadata: dict[str, Any] | None = None


class _Customer(_Lenient):
    id: str | None = None
    source_id: str | None = None


class _Redeemable(_Lenient):
    object: str = "voucher"
    id: str


class _Session(_Lenient):
    key: str | None = None
    type: str | None = None
    ttl: float | None = None
    ttl_unit: str | None = None


class _Request(_Lenient):
    redeemables: list[_Redeemable] = []
    order: _Order | None = None
    customer: _Customer | None = None
    session: _Session | None = None
    tracking_id: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Lock:
    key: str
    ttl_s: float
    ttl: float
    ttl_unit: str


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    """A Voucherify validation or redemption in native terms."""

    code: str
    customer_id: str
    order: ev.Money
    items: list[ev.LineItem]
    order_id: str | None
    session_key: str | None  # the lock this request holds (or asks for)
    lock: Lock | None  # a validation asking for a LOCK session
    tracking_id: str
    metadata: dict[str, Any]

    def idempotency_key(self) -> str:
        """A redemption's Idempotency-Key: its session, else its order and code (a retry of the
        same order is answered as before), else none to match (every request is new)."""
        if self.session_key:
            return f"session:{self.session_key}:{self.code}"
        if self.order_id:
            return f"order:{self.order_id}:{self.code}"
        return f"once:{uuid.uuid4()}"

    def native_body(self) -> dict[str, Any]:
        """The native redemption body (what a replayed Idempotency-Key is compared with)."""
        return {"code": self.code, "customer_id": self.customer_id, "order_id": self.order_id,
                "order": {"amount": self.order.model_dump(mode="json"),
                          "items": [i.model_dump(mode="json") for i in self.items]}}


def _bad(key: str, details: str) -> VoucherifyError:
    return VoucherifyError(400, key, key.replace("_", " "), details)


_IDENTIFIER, _CUSTOMER = TypeAdapter(ev.Identifier), TypeAdapter(ev.CustomerId)  # the native API's own types


def _identifier(value: str | None, what: str, key: str, kind: TypeAdapter = _IDENTIFIER) -> str | None:
    if value is None or value == "":
        return None
    try:
        return kind.validate_python(value)
    except ValidationError:
        raise _bad(key, f"{what} must be 1-128 letters, digits or ._:- (starting with a letter or digit)") from None


def _line_item(i: int, item: _Item, currency: str) -> ev.LineItem:
    product, sku = item.product or _Product(), item.sku or _Product()
    ident = item.sku_id or sku.source_id or item.source_id or item.product_id or product.source_id or product.id
    quantity = item.quantity if item.quantity is not None else 1
    if quantity < 1:
        raise _bad("invalid_order", f"order.items[{i}].quantity must be at least 1")
    price = item.price if item.price is not None else (product.price if product.price is not None else sku.price)
    if price is None and item.amount is not None:
        price = item.amount // quantity
    if price is None:
        raise _bad("missing_order_items_amount", f"order.items[{i}] has no price or amount")
    meta = {**(product.metadata or {}), **(sku.metadata or {}), **(item.metadata or {})}
    label = lambda k: str(meta[k])[:128] if isinstance(meta.get(k), (str, int)) else None  # noqa: E731
    try:
        return ev.LineItem(sku=_identifier(str(ident) if ident is not None else None, f"order.items[{i}] id",
                                           "invalid_order") or f"item-{i}",
                           brand=label("brand"), category=label("category"),
                           unit_price=ev.Money(amount=price, currency=currency), quantity=quantity)
    except ValidationError as exc:
        raise _bad("invalid_order", f"order.items[{i}]: {exc.errors()[0]['msg']}") from None


def checkout_request(body: Any, currency: str, *, default_ttl_s: float) -> CheckoutRequest:
    """A Voucherify validation or redemption body in native terms, or :class:`VoucherifyError`
    naming what is missing or wrong (its keys: invalid_payload, missing_customer, missing_order,
    missing_amount, invalid_order, ...)."""
    try:
        req = _Request.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _bad("invalid_payload", f"{where}: {first['msg']}") from None
    if not req.redeemables:
        raise _bad("invalid_payload", "redeemables: one voucher is required")
    if len(req.redeemables) > 1:
        raise VoucherifyError(400, "applicable_redeemables_limit_exceeded", "Applicable redeemables limit exceeded",
                              "one voucher per order: stacking is not supported")
    redeemable = req.redeemables[0]
    if redeemable.object != "voucher":
        raise _bad("invalid_payload", f"redeemables[0].object {redeemable.object!r} is not supported, only voucher")
    if not CODE.fullmatch(redeemable.id):
        raise _bad("invalid_payload", "redeemables[0].id: a code is 4-64 letters, digits, spaces, _ or -")
    customer = _identifier((req.customer.source_id or req.customer.id) if req.customer else None, "customer.source_id",
                           "invalid_customer", _CUSTOMER)
    if customer is None:
        raise VoucherifyError(400, "missing_customer", "missing customer", "customer.source_id is required")
    if req.order is None:
        raise VoucherifyError(400, "missing_order", "missing order", "order is required")
    items = [_line_item(i, item, currency) for i, item in enumerate(req.order.items or [])]
    amount = req.order.amount
    if amount is None and items:
        amount = sum(i.unit_price.amount * i.quantity for i in items)
    if amount is None:
        raise VoucherifyError(400, "missing_amount", "missing amount", "order.amount (or its items) is required")
    if not 0 <= amount <= 10**15:
        raise _bad("invalid_amount", "order.amount must be 0 or more (minor units)")
    lock = None
    session = req.session
    session_key = session.key if session and session.key else None
    if session_key is not None and not SESSION_KEY.fullmatch(session_key):
        raise _bad("invalid_payload", "session.key must be 1-128 letters, digits or _.:-")
    if session is not None and session.type is not None:
        if session.type != "LOCK":
            raise _bad("invalid_payload", "session.type must be LOCK")
        unit = session.ttl_unit or "DAYS"
        if unit not in TTL_UNITS:
            raise _bad("invalid_payload", f"session.ttl_unit must be one of {', '.join(TTL_UNITS)}")
        ttl = session.ttl if session.ttl is not None else default_ttl_s / TTL_UNITS[unit]
        if not ttl > 0:
            raise _bad("invalid_payload", "session.ttl must be more than 0")
        session_key = session_key or f"ssn_{uuid.uuid4().hex}"
        lock = Lock(session_key, min(ttl * TTL_UNITS[unit], 366 * 86400.0), ttl, unit)
    return CheckoutRequest(
        code=redeemable.id, customer_id=customer, order=ev.Money(amount=amount, currency=currency), items=items,
        order_id=_identifier(req.order.source_id or req.order.id, "order.source_id", "invalid_order"),
        session_key=session_key, lock=lock, tracking_id=req.tracking_id or customer, metadata=req.metadata or {})


# ------------------------------------------------------------------ answers


def refusal_error(reason: str, detail: str | None) -> VoucherifyError:
    code, key, message = REFUSALS.get(reason, (400, "redemption_rules_violated", reason.replace("_", " ")))
    return VoucherifyError(code, key, message, detail)


def discount_of(offer: PercentageOffer | FixedAmountOffer | GiftCardOffer) -> dict[str, Any] | None:
    if isinstance(offer, FixedAmountOffer):
        return {"type": "AMOUNT", "amount_off": offer.amount.amount, "effect": "APPLY_TO_ORDER"}
    if isinstance(offer, PercentageOffer):
        return {"type": "PERCENT", "percent_off": offer.percent, "amount_limit": offer.cap.amount,
                "effect": "APPLY_TO_ITEMS" if (offer.brands or offer.categories or offer.skus) else "APPLY_TO_ORDER"}
    return None


def voucher_type(kind: str) -> str:
    return "GIFT_VOUCHER" if kind == "gift_card" else "DISCOUNT_VOUCHER"


def order_block(req: CheckoutRequest, discount: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "object": "order", "amount": req.order.amount, "discount_amount": discount,
        "total_discount_amount": discount, "total_amount": req.order.amount - discount,
        "applied_discount_amount": discount, "total_applied_discount_amount": discount,
        "items_discount_amount": 0, "customer_id": req.customer_id}
    if req.order_id:
        out["source_id"] = req.order_id
    return out


def session_block(lock: Lock) -> dict[str, Any]:
    return {"key": lock.key, "type": "LOCK", "ttl": lock.ttl, "ttl_unit": lock.ttl_unit}


def validation_valid(req: CheckoutRequest, spec: CampaignSpec, variant: str, kind: str, balance: int | None,
                     discount: int) -> dict[str, Any]:
    offer = spec.offer_for(variant)
    result: dict[str, Any] = {}
    if kind == "gift_card":
        result["gift"] = {"credits": discount, "balance": balance or 0}
    else:
        result["discount"] = discount_of(offer)
    order = order_block(req, discount)
    out: dict[str, Any] = {
        "valid": True, "redeemables": [{
            "status": "APPLICABLE", "id": req.code, "object": "voucher", "order": order, "result": result,
            "campaign_id": spec.id, "campaign_name": spec.name, "metadata": {}}],
        "order": order, "tracking_id": req.tracking_id, "stacking_rules": STACKING_RULES}
    if req.lock is not None:
        out["session"] = session_block(req.lock)
    return out


def validation_invalid(req: CheckoutRequest, error: VoucherifyError) -> dict[str, Any]:
    item = {"status": "INAPPLICABLE", "id": req.code, "object": "voucher", "result": {"error": error.body()}}
    return {"valid": False, "redeemables": [item], "inapplicable_redeemables": [item],
            "order": order_block(req, 0), "tracking_id": req.tracking_id, "stacking_rules": STACKING_RULES}


def redemption_answer(req: CheckoutRequest, native: dict[str, Any]) -> dict[str, Any]:
    """A native redemption answer (201: redeemed) as Voucherify's; refusals raise their error."""
    if not native.get("valid"):
        raise refusal_error(native.get("reason") or "", native.get("detail"))
    discount = native["discount"]["amount"]
    remaining = native.get("remaining_balance")
    voucher: dict[str, Any] = {"id": native["voucher_id"], "code": req.code, "campaign_id": native["campaign_id"],
                               "object": "voucher", "type": "GIFT_VOUCHER" if remaining else "DISCOUNT_VOUCHER"}
    if remaining:
        voucher["gift"] = {"balance": remaining["amount"], "subtracted_amount": discount, "effect": "APPLY_TO_ORDER"}
    redemption = {
        "id": native["redemption_id"], "object": "redemption", "customer_id": req.customer_id,
        "tracking_id": req.tracking_id, "metadata": req.metadata, "amount": discount, "result": "SUCCESS",
        "status": "SUCCEEDED", "related_object_type": "voucher", "related_object_id": native["voucher_id"],
        "voucher": voucher}
    return {"redemptions": [redemption], "order": order_block(req, discount)}


def rollback_answer(redemption_id: str, native: dict[str, Any], reason: str | None) -> dict[str, Any]:
    if not native.get("changed"):
        raise VoucherifyError(400, "already_rolled_back", "already rolled back", native.get("detail"))
    out = {"id": f"rr_{redemption_id}", "object": "redemption_rollback", "redemption": redemption_id,
           "result": "SUCCESS", "status": "SUCCEEDED", "amount": -native["returned"]["amount"]}
    if reason:
        out["reason"] = reason
    return out


def voucher_answer(code: str, spec: CampaignSpec, row: Any) -> dict[str, Any]:
    """``GET /v1/vouchers/{code}``: what the code gives, its validity and whether it was used.
    The holder is left out: a code alone names no customer."""
    offer = spec.offer_for(row["variant"])
    active = row["status"] == "active"
    out: dict[str, Any] = {
        "id": row["id"], "code": code, "object": "voucher", "campaign": spec.name, "campaign_id": spec.id,
        "type": voucher_type(row["kind"]), "active": active, "expiration_date": row["expires_at"].isoformat(),
        "metadata": {}, "redemption": {"object": "list", "quantity": 1,
                                       "redeemed_quantity": 1 if row["status"] == "redeemed" else 0}}
    if isinstance(offer, GiftCardOffer):
        balance = row["balance"] or 0
        out["gift"] = {"amount": offer.balance.amount, "balance": balance,
                       "subtracted_amount": offer.balance.amount - balance, "effect": "APPLY_TO_ORDER"}
        out["redemption"]["quantity"] = None
    else:
        out["discount"] = discount_of(offer)
    return out
