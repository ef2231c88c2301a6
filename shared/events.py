"""The event contract: a CloudEvents 1.0 structured-mode JSON envelope and one pydantic model
per event type.

Every Kafka message value is an envelope::

    {"specversion": "1.0", "id": "...", "type": "shop.cart.abandoned.v1", "source": "...",
     "time": "2026-11-29T10:00:00Z", "subject": "<key>", "datacontenttype": "application/json",
     "data": {...}}

Rules the models enforce:
- money is integer minor units plus an ISO-4217 code (:class:`Money`), never a float;
- times are timezone-aware and normalised to UTC; a naive time is an error;
- customer ids are pseudonymous shop ids: an e-mail address, spaces or other contact-like
  text is refused, so personal data cannot enter through the key;
- unknown fields are tolerated (and dropped), a missing or ill-typed required field is an error
  whose message names the field path.
"""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal

import orjson
from cryptography.exceptions import InvalidTag
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from shared import sealing

SPECVERSION = "1.0"
CONTENT_TYPE: Final = "application/json"


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware instant, normalised to UTC. Naive datetimes are refused."""

CustomerId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$",
        description="The shop's pseudonymous customer id (letters, digits, '.', '_', ':', '-'). "
        "Never an e-mail address or a name.",
    ),
]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
Text = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
"""Short free text without control characters (PostgreSQL refuses NUL; logs hate newlines)."""
# The upper bound keeps every amount, and every sum of a few, inside PostgreSQL's bigint.
MinorUnits = Annotated[int, Field(strict=True, ge=0, le=10**15, description="Integer minor units (cents)")]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO-4217 code, e.g. USD")]


def now_utc() -> datetime:
    return datetime.now(UTC)


class Purpose(StrEnum):
    """What a customer consents to. Channels are purposes of their own."""

    PROFILING = "profiling"
    PERSONALIZED_OFFERS = "personalized_offers"
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    THIRD_PARTY_SHARING = "third_party_sharing"


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    ONSITE = "onsite"
    PARTNER = "partner"  # non-personal codes handed out by affiliates and influencers


class Money(BaseModel):
    """An amount in integer minor units of an ISO-4217 currency (``{"amount": 2000, "currency": "USD"}``
    is 20.00 USD)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    amount: MinorUnits
    currency: CurrencyCode

    def __str__(self) -> str:
        return f"{self.amount / 100:.2f} {self.currency}"


class Record(BaseModel):
    """Base of every payload model: frozen, unknown fields tolerated and dropped."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Event(Record):
    """Base of the ``data`` of one event type. ``TYPE`` is the versioned CloudEvents type."""

    TYPE: ClassVar[str]
    KEY_FIELD: ClassVar[str] = "customer_id"
    # Fields sealed under the customer's data key on Kafka (crypto-shredding, ``shared.datakeys``).
    PERSONAL: ClassVar[tuple[str, ...]] = ()

    def key(self) -> str:
        """The Kafka message key (also the envelope's ``subject``)."""
        return str(getattr(self, self.KEY_FIELD))


# --------------------------------------------------------------------------- inbound shop events


class Birthday(Record):
    """Month and day only: the engine never keeps a year of birth."""

    month: int = Field(ge=1, le=12)
    day: int = Field(ge=1, le=31)

    @model_validator(mode="after")
    def _valid_day(self) -> Birthday:
        longest = {2: 29, 4: 30, 6: 30, 9: 30, 11: 30}.get(self.month, 31)
        if self.day > longest:
            raise ValueError(f"day {self.day} does not exist in month {self.month}")
        return self


class LineItem(Record):
    sku: Identifier
    brand: Annotated[str, Field(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    category: Annotated[str, Field(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    unit_price: Money
    quantity: int = Field(strict=True, ge=1, le=100_000)


def _same_currency(total: Money, items: list[LineItem], what: str) -> None:
    for i, item in enumerate(items):
        if item.unit_price.currency != total.currency:
            raise ValueError(
                f"items[{i}].unit_price.currency {item.unit_price.currency} differs from "
                f"{what}.currency {total.currency}"
            )


class CustomerRegistered(Event):
    TYPE = "shop.customer.registered.v1"
    PERSONAL = ("birthday", "preferred_channel")

    customer_id: CustomerId
    birthday: Birthday | None = None
    preferred_channel: Channel | None = None
    registered_at: UtcDatetime


class CustomerUpdated(Event):
    """A change of the facts the engine may keep. Absent fields are unchanged."""

    TYPE = "shop.customer.updated.v1"
    PERSONAL = ("birthday", "preferred_channel")

    customer_id: CustomerId
    birthday: Birthday | None = None
    preferred_channel: Channel | None = None
    updated_at: UtcDatetime


class OrderPlaced(Event):
    TYPE = "shop.order.placed.v1"
    PERSONAL = ("order_id", "total", "items")

    order_id: Identifier
    customer_id: CustomerId
    total: Money
    items: list[LineItem] = Field(default_factory=list, max_length=1000)
    placed_at: UtcDatetime

    @model_validator(mode="after")
    def _currencies(self) -> OrderPlaced:
        _same_currency(self.total, self.items, "total")
        return self


class CartAbandoned(Event):
    TYPE = "shop.cart.abandoned.v1"
    PERSONAL = ("cart_id", "value", "items")

    cart_id: Identifier
    customer_id: CustomerId
    value: Money
    items: list[LineItem] = Field(default_factory=list, max_length=1000)
    abandoned_at: UtcDatetime

    @model_validator(mode="after")
    def _currencies(self) -> CartAbandoned:
        _same_currency(self.value, self.items, "value")
        return self


class ConsentChanged(Event):
    """A customer granted or withdrew consent for one purpose (cookie banner, preference centre)."""

    TYPE = "shop.consent.changed.v1"
    PERSONAL = ("purpose", "granted", "policy_version", "source")

    customer_id: CustomerId
    purpose: Purpose
    granted: bool = Field(strict=True)
    policy_version: Text
    source: Text = Field(description="where the customer decided, e.g. cookie-banner")
    occurred_at: UtcDatetime


# --------------------------------------------------------------------------- consent and privacy


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


# --------------------------------------------------------------------------- segmentation


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


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        CustomerRegistered, CustomerUpdated, OrderPlaced, CartAbandoned, ConsentChanged,
        ConsentState, ConsentWatermark, ErasureRequested, ErasureCompleted, ExportRequested, ExportCompleted,
        SegmentEntered, SegmentationTick, VoucherIssued, IssuanceDenied, DeliveryRequested, DeliveryCancelled,
        VoucherRedeemed,
        RedemptionRolledBack, VoucherExpired, VoucherRevoked, CampaignChanged, BudgetCounters,
        BudgetThresholdCrossed,
    )
}


# --------------------------------------------------------------------------- envelope


class Envelope(BaseModel):
    """CloudEvents 1.0, structured mode. Extension attributes are tolerated."""

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=200)
    type: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=500)
    time: UtcDatetime
    subject: str | None = Field(default=None, max_length=200)
    datacontenttype: Literal["application/json"] = CONTENT_TYPE
    data: dict[str, Any]
    # The Distributed Tracing extension: the W3C trace context of what caused the event. Never a
    # reason to refuse an event: one that cannot be parsed is ignored (a new trace starts).
    traceparent: str | None = Field(default=None, max_length=512)
    # Extension attributes of crypto-shredding: the event's personal fields, sealed under the
    # customer's data key ``datakey`` (see :func:`encode`).
    datakey: str | None = Field(default=None, min_length=1, max_length=64)
    sealeddata: str | None = Field(default=None, min_length=1, max_length=8_000_000)


class Erased(Exception):
    """The record's personal fields are sealed under a data key that was destroyed: its customer
    was erased. Consumers skip it; it is not a contract breach."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"data key {key_id} is gone (customer erased)")
        self.key_id = key_id


class ContractError(ValueError):
    """A message that does not honour the contract. ``reason`` is machine-readable:
    ``undecodable``, ``invalid_envelope``, ``unknown_type``, ``unexpected_type``, ``invalid_data``
    or ``unexpected_tombstone``; ``detail`` names the offending field."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """``data.items[0].quantity: Input should be greater than or equal to 1``; never echoes input
    values, which may be personal data."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        path = prefix
        for loc in err["loc"]:
            if isinstance(loc, int):
                path += f"[{loc}]"
            elif loc not in ("function-after[_to_utc(), datetime]",):
                path += f".{loc}" if path else str(loc)
        parts.append(f"{path or prefix or 'value'}: {err['msg']}")
    return "; ".join(parts)


_ids = random.Random(os.urandom(32))  # unique ids, not secrets: no system call per event
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))  # a forked worker draws its own


def new_event_id() -> str:
    """A random (version 4, RFC 4122 variant) UUID for an envelope's ``id``, formatted directly
    (``uuid.UUID`` validates and converts again: a measurable share of encoding an event)."""
    n = (_ids.getrandbits(128) & _UUID_CLEAR) | _UUID_V4
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))  # the version nibble and the variant bits
_UUID_V4 = (0x4000 << 64) | (0x8000 << 48)


def encode(event: Event, *, source: str, event_id: str | None = None, time: datetime | None = None,
           data_key=None, traceparent: str | None = None) -> bytes:
    """Wraps ``event`` in an envelope and serialises it to JSON bytes. With ``data_key`` (a
    ``shared.datakeys.DataKey``: ``.id``, ``.key``) the event's ``PERSONAL`` fields leave ``data``
    and travel sealed in ``sealeddata`` (AES-GCM, bound to the event type and key)."""
    data = event.model_dump(mode="json", exclude_none=True)
    envelope = {
        "specversion": SPECVERSION,
        "id": event_id or new_event_id(),
        "type": event.TYPE,
        "source": source,
        "time": (time or now_utc()).astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "subject": event.key(),
        "datacontenttype": CONTENT_TYPE,
        "data": data,
    }
    if traceparent:
        envelope["traceparent"] = traceparent
    if data_key is not None and event.PERSONAL:
        personal = {f: data.pop(f) for f in event.PERSONAL if f in data}
        envelope["datakey"] = data_key.id
        envelope["sealeddata"] = base64.b64encode(
            sealing.seal(data_key.key, orjson.dumps(personal), _sealed_context(event.TYPE, event.key()))).decode()
    return orjson.dumps(envelope)


def _sealed_context(event_type: str, key: str) -> bytes:
    return f"{event_type}\x00{key}".encode()


def data_key_id(value: bytes | None) -> str | None:
    """The data key a record's personal fields are sealed under, if any (consumers load the keys
    of a batch in one query before decoding it)."""
    if value is None or b'"datakey"' not in value:
        return None
    try:
        key_id = orjson.loads(value).get("datakey")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return key_id if isinstance(key_id, str) else None


def decode(value: bytes | None, accepted: tuple[type[Event], ...] | None = None,
           keys: Callable[[str], bytes | None] | None = None) -> tuple[Envelope, Event]:
    """Parses and validates one message value. ``accepted`` limits the event types a topic carries;
    ``keys`` gives a data key by id (``None``: destroyed) to open sealed personal fields.
    Raises :class:`ContractError` with a precise reason, :class:`Erased` for a destroyed key."""
    if value is None:
        raise ContractError("unexpected_tombstone", "a null value (tombstone) on a topic that is not compacted")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ContractError("undecodable", f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ContractError("invalid_envelope", f"expected a JSON object, got {type(raw).__name__}")
    try:
        envelope = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise ContractError("invalid_envelope", describe_validation_error(exc)) from None
    model = EVENT_TYPES.get(envelope.type)
    if model is None:
        raise ContractError("unknown_type", f"type {envelope.type!r} is not part of the contract")
    if accepted is not None and model not in accepted:
        names = ", ".join(m.TYPE for m in accepted)
        raise ContractError("unexpected_type", f"type {envelope.type!r} does not belong on this topic (expects {names})")
    data = envelope.data if envelope.sealeddata is None else _opened(envelope, model, keys)
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        raise ContractError("invalid_data", describe_validation_error(exc, "data")) from None
    return envelope, event


def _opened(envelope: Envelope, model: type[Event], keys: Callable[[str], bytes | None] | None) -> dict[str, Any]:
    """``data`` with the sealed fields back. They open only under the key field ``data`` names
    (the customer the consumer checks against the message key), never on another's record."""
    if envelope.datakey is None or envelope.sealeddata is None:
        raise ContractError("invalid_envelope", "sealeddata without a datakey")
    if keys is None:
        raise ContractError("sealed", "the personal fields are sealed and no data keys were given to open them")
    key = keys(envelope.datakey)
    if key is None:
        raise Erased(envelope.datakey)
    try:
        fields = orjson.loads(sealing.unseal(key, base64.b64decode(envelope.sealeddata, validate=True),
                                             _sealed_context(envelope.type, str(envelope.data.get(model.KEY_FIELD)))))
    except (InvalidTag, ValueError, orjson.JSONDecodeError):
        raise ContractError("unsealable", f"sealeddata does not open under data key {envelope.datakey}") from None
    if not isinstance(fields, dict):
        raise ContractError("unsealable", "sealeddata is not a JSON object")
    return {**envelope.data, **fields}


def opened(value: bytes, keys: Callable[[str], bytes | None]) -> bytes:
    """The record as it would be unsealed: personal fields back in ``data`` (tools that show or
    forward records — the shop's sender, ``voucherstream tail``). A record whose key is gone, or
    that was never sealed, is returned as it is."""
    raw = orjson.loads(value)
    if not isinstance(raw, dict) or "sealeddata" not in raw:
        return value
    model = EVENT_TYPES.get(str(raw.get("type")))
    if model is None:
        raise ContractError("unknown_type", f"type {raw.get('type')!r} is not part of the contract")
    try:
        data = _opened(Envelope.model_validate(raw), model, keys)
    except Erased:
        return value
    except ValidationError as exc:
        raise ContractError("invalid_envelope", describe_validation_error(exc)) from None
    clear = {k: v for k, v in raw.items() if k not in ("datakey", "sealeddata")}
    return orjson.dumps(clear | {"data": data})
