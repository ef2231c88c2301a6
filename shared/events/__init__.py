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

The models are in ``base`` (the shared field types and base classes), ``shop``, ``privacy`` and
``vouchers``; the envelope, the registry of types and their encoding in ``envelope``. Callers
import them from here (``from shared import events as ev``).
"""

from __future__ import annotations

from shared.events.base import (
    CONTENT_TYPE,
    SPECVERSION,
    Channel,
    CurrencyCode,
    CustomerId,
    Event,
    Identifier,
    MinorUnits,
    Money,
    Purpose,
    Record,
    Text,
    UtcDatetime,
    now_utc,
)
from shared.events.envelope import (
    EVENT_TYPES,
    ContractError,
    Envelope,
    Erased,
    data_key_id,
    decode,
    describe_validation_error,
    encode,
    new_event_id,
    opened,
)
from shared.events.privacy import (
    ConsentState,
    ConsentWatermark,
    ErasureCompleted,
    ErasureRequested,
    ExportCompleted,
    ExportRequested,
    PurposeState,
)
from shared.events.shop import Birthday, CartAbandoned, ConsentChanged, CustomerRegistered, CustomerUpdated, LineItem, OrderPlaced
from shared.events.vouchers import (
    BudgetCounters,
    BudgetThresholdCrossed,
    CampaignChanged,
    ConsentMarks,
    DeliveryCancelled,
    DeliveryRequested,
    IssuanceDenied,
    LedgerSnapshot,
    OfferSummary,
    RedemptionRolledBack,
    SegmentationTick,
    SegmentEntered,
    Variant,
    VoucherExpired,
    VoucherIssued,
    VoucherRedeemed,
    VoucherRevoked,
)

__all__ = [
    "SPECVERSION", "CONTENT_TYPE", "UtcDatetime", "CustomerId", "Identifier", "Text", "MinorUnits",
    "CurrencyCode", "now_utc", "Purpose", "Channel", "Money", "Record", "Event", "Birthday", "LineItem",
    "CustomerRegistered", "CustomerUpdated", "OrderPlaced", "CartAbandoned", "ConsentChanged", "PurposeState",
    "ConsentState", "ConsentWatermark", "ErasureRequested", "ErasureCompleted", "ExportRequested",
    "ExportCompleted", "ConsentMarks", "SegmentEntered", "SegmentationTick", "LedgerSnapshot", "OfferSummary",
    "VoucherIssued", "IssuanceDenied", "DeliveryRequested", "DeliveryCancelled", "VoucherRedeemed",
    "RedemptionRolledBack", "VoucherExpired", "VoucherRevoked", "Variant", "CampaignChanged", "BudgetCounters",
    "BudgetThresholdCrossed", "EVENT_TYPES", "Envelope", "Erased", "ContractError", "describe_validation_error",
    "new_event_id", "encode", "data_key_id", "decode", "opened",
]
