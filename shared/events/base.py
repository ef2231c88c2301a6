"""The contract's building blocks: the field types every event shares (ids, money, UTC times), the
purposes and channels, and the base classes of the models."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Final

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

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
