"""The minimal customer profile, as a plain JSON-able dict, and the pure functions that build it.

It holds only: birthday month and day, preferred channel, purchase counts per brand and category
and spend per currency in monthly buckets (kept 13 months, read over the last 12), the last
abandoned cart (id, value, time), the last order time, segment memberships with their
explanations, and the triggers already emitted. No names, contact details, years of birth,
addresses or order lines — the shop's events may carry more; it is dropped on arrival.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, cast

from shared import events as ev

FIELDS = frozenset({"birthday", "preferred_channel", "brands", "categories", "spend", "last_cart",
                    "last_order_at", "segments", "emitted"})
KEEP_MONTHS = 13
MAX_EMITTED = 100

Profile = dict[str, Any]


def empty() -> Profile:
    return {"birthday": None, "preferred_channel": None, "brands": {}, "categories": {}, "spend": {},
            "last_cart": None, "last_order_at": None, "segments": {}, "emitted": []}


def month_key(at: datetime) -> str:
    return at.strftime("%Y-%m")


def months_back(now: datetime, n: int) -> frozenset[str]:
    """The ``n`` month keys ending with ``now``'s month."""
    return _months_back(now.year, now.month, n)


@lru_cache(maxsize=64)
def _months_back(y: int, m: int, n: int) -> frozenset[str]:
    out = set()
    for _ in range(n):
        out.add(f"{y:04d}-{m:02d}")
        m -= 1
        if m == 0:
            y, m = y - 1, 12
    return frozenset(out)


def _prune(buckets: dict[str, Any], now: datetime) -> dict[str, Any]:
    keep = months_back(now, KEEP_MONTHS)
    return {k: v for k, v in buckets.items() if k in keep}


def apply(profile: Profile, event: ev.Event, now: datetime) -> Profile:
    """A new profile with the event's facts folded in (the input is not modified)."""
    p = {**empty(), **profile}
    kind = type(event)  # exact types: this runs per event, and pydantic's isinstance is slow
    if kind is ev.CustomerRegistered or kind is ev.CustomerUpdated:
        who = cast(ev.CustomerRegistered | ev.CustomerUpdated, event)
        if who.birthday is not None:
            p["birthday"] = {"month": who.birthday.month, "day": who.birthday.day}
        if who.preferred_channel is not None:
            p["preferred_channel"] = who.preferred_channel.value
    elif kind is ev.OrderPlaced:
        order = cast(ev.OrderPlaced, event)
        month = month_key(order.placed_at)
        spend = {k: dict(v) for k, v in p["spend"].items()}
        spend.setdefault(month, {})
        spend[month][order.total.currency] = spend[month].get(order.total.currency, 0) + order.total.amount
        brands = {k: dict(v) for k, v in p["brands"].items()}
        categories = {k: dict(v) for k, v in p["categories"].items()}
        for item in order.items:
            if item.brand:
                brands.setdefault(month, {})
                brands[month][item.brand] = brands[month].get(item.brand, 0) + item.quantity
            if item.category:
                categories.setdefault(month, {})
                categories[month][item.category] = categories[month].get(item.category, 0) + item.quantity
        p["spend"], p["brands"], p["categories"] = _prune(spend, now), _prune(brands, now), _prune(categories, now)
        last, placed = p["last_order_at"], order.placed_at.isoformat()
        if last is None or placed > last:
            p["last_order_at"] = placed
    elif kind is ev.CartAbandoned:
        cart = cast(ev.CartAbandoned, event)
        last, at = p["last_cart"], cart.abandoned_at.isoformat()
        if last is None or at >= last["at"]:
            p["last_cart"] = {"id": cart.cart_id, "value": cart.value.amount, "currency": cart.value.currency, "at": at}
    return p


def favourite(buckets: dict[str, dict[str, int]], now: datetime) -> str | None:
    """The most bought over the last 12 months (ties: alphabetical, so it is deterministic)."""
    window = months_back(now, 12)
    totals: dict[str, int] = {}
    for month, counts in buckets.items():
        if month in window:
            for name, n in counts.items():
                totals[name] = totals.get(name, 0) + n
    if not totals:
        return None
    return min(totals, key=lambda name: (-totals[name], name))


def spend_12m(profile: Profile, currency: str, now: datetime) -> int:
    window = months_back(now, 12)
    return sum(v.get(currency, 0) for month, v in profile.get("spend", {}).items() if month in window)


def next_birthday(profile: Profile, today: date) -> date | None:
    b = profile.get("birthday")
    if not b:
        return None
    for year in (today.year, today.year + 1):
        day = b["day"]
        if b["month"] == 2 and day == 29:
            try:
                candidate = date(year, 2, 29)
            except ValueError:
                candidate = date(year, 2, 28)
        else:
            candidate = date(year, b["month"], day)
        if candidate >= today:
            return candidate
    return None


def remember(profile: Profile, trigger: str) -> Profile:
    emitted = [t for t in profile.get("emitted", []) if t != trigger] + [trigger]
    return {**profile, "emitted": emitted[-MAX_EMITTED:]}


def only_listed_fields(profile: Profile) -> bool:
    return set(profile) <= FIELDS


def utc_now() -> datetime:
    return datetime.now(UTC)
