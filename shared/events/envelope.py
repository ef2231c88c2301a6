"""The CloudEvents envelope every Kafka message value is, the registry of event types, and their
encoding and decoding (the personal fields sealed under the customer's data key)."""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidTag
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import sealing
from shared.events.base import CONTENT_TYPE, SPECVERSION, Event, UtcDatetime, now_utc
from shared.events.privacy import ConsentState, ConsentWatermark, ErasureCompleted, ErasureRequested, ExportCompleted, ExportRequested
from shared.events.shop import CartAbandoned, ConsentChanged, CustomerRegistered, CustomerUpdated, OrderPlaced
from shared.events.vouchers import (
    BudgetCounters,
    BudgetThresholdCrossed,
    CampaignChanged,
    DeliveryCancelled,
    DeliveryRequested,
    IssuanceDenied,
    RedemptionRolledBack,
    SegmentationTick,
    SegmentEntered,
    VoucherExpired,
    VoucherIssued,
    VoucherRedeemed,
    VoucherRevoked,
)

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
