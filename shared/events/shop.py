"""The shop's own events, inbound: customers, orders, carts, and consent as the shop records it."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from shared.events.base import Channel, CustomerId, Event, Identifier, Money, Purpose, Record, Text, UtcDatetime


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
