"""Pure analytics decisions: which rows a consumed batch adds, and what a campaign's counters
say (the budget-counters event, the gauges, the stats answer). No I/O here: ``store`` reads and
writes the rows, ``handlers`` runs the use cases."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.analytics import stats
from shared import events as ev


@dataclass(slots=True)
class StreamRows:
    """What one consumed batch adds, per table (tuples in the table's column order), and the
    privacy requests it must answer. Every row is keyed by an id, so a redelivered one adds nothing."""

    campaigns: list[ev.CampaignChanged] = field(default_factory=list)
    denials: list[tuple] = field(default_factory=list)
    vouchers: list[tuple] = field(default_factory=list)
    endings: list[tuple] = field(default_factory=list)
    redemptions: list[tuple] = field(default_factory=list)
    rollbacks: list[tuple] = field(default_factory=list)
    ledgers: dict[str, ev.LedgerSnapshot] = field(default_factory=dict)  # the highest seq per campaign
    traces: dict[str, str | None] = field(default_factory=dict)  # the trace context of each of those
    requests: list[ev.ErasureRequested | ev.ExportRequested] = field(default_factory=list)

    def campaign_ids(self) -> list[str]:
        """Every campaign whose counts or ledger the batch may change, sorted (the order their
        locks are taken in)."""
        ids = {c.campaign_id for c in self.campaigns} | set(self.ledgers)
        for rows, at in ((self.denials, 1), (self.vouchers, 1), (self.endings, 1), (self.redemptions, 2),
                         (self.rollbacks, 1)):
            ids.update(r[at] for r in rows)
        return sorted(ids)


def rows_of(messages) -> StreamRows:
    """Sorts a batch's events into rows. An ending (expiry, revocation, rollback) has its own table
    so it counts even when it is consumed before the voucher or redemption it ends."""
    out = StreamRows()
    for m in messages:
        e = m.event
        if isinstance(e, ev.CampaignChanged):
            out.campaigns.append(e)
            continue
        if isinstance(e, (ev.ErasureRequested, ev.ExportRequested)):
            out.requests.append(e)  # analytics holds no customer ids: nothing to erase or export
            continue
        if isinstance(e, ev.IssuanceDenied):
            out.denials.append((m.envelope.id, e.campaign_id, e.variant, e.reason))
            continue
        if isinstance(e, ev.VoucherIssued):
            out.vouchers.append((e.voucher_id, e.campaign_id, e.variant, e.channel.value, e.max_discount.amount,
                                 e.issued_at))
        elif isinstance(e, (ev.VoucherExpired, ev.VoucherRevoked)):
            out.endings.append((e.voucher_id, e.campaign_id,
                                "expired" if isinstance(e, ev.VoucherExpired) else "revoked"))
        elif isinstance(e, ev.VoucherRedeemed):
            out.redemptions.append((e.redemption_id, e.voucher_id, e.campaign_id, e.variant, e.channel.value,
                                    e.discount.amount, e.order_amount.amount, e.redeemed_at))
        else:  # RedemptionRolledBack
            out.rollbacks.append((e.redemption_id, e.campaign_id))
        seen = out.ledgers.get(e.campaign_id)
        if seen is None or seen.seq < e.ledger.seq:
            out.ledgers[e.campaign_id] = e.ledger
            out.traces[e.campaign_id] = m.traceparent
    return out


@dataclass(frozen=True, slots=True)
class VoucherCount:
    variant: str
    channel: str
    state: str  # issued, expired, revoked
    n: int


@dataclass(frozen=True, slots=True)
class RedemptionCount:
    """Redemptions not rolled back, with the discount granted and the orders' revenue."""

    variant: str
    channel: str
    n: int
    discount: int
    revenue: int


@dataclass(frozen=True, slots=True)
class DenialCount:
    reason: str
    variant: str | None
    n: int


@dataclass(frozen=True, slots=True)
class Counters:
    """One campaign's counters: the newest ledger snapshot and the counts derived from the stream."""

    campaign_id: str
    ledger: ev.LedgerSnapshot
    version: int  # bumped by every change; counters are published while it differs from the published one
    published_version: int
    changed_at: datetime
    vouchers: tuple[VoucherCount, ...] = ()
    redemptions: tuple[RedemptionCount, ...] = ()
    denials: tuple[DenialCount, ...] = ()
    traceparent: str | None = None  # of the event that brought the newest ledger: what it leads to continues it

    @property
    def limit(self) -> int:
        return self.ledger.limit

    @property
    def reserved(self) -> int:
        return self.ledger.reserved

    @property
    def spent(self) -> int:
        return self.ledger.spent

    @property
    def used(self) -> int:
        return self.ledger.reserved + self.ledger.spent

    @property
    def remaining(self) -> int:
        return self.ledger.limit - self.used

    def issued(self) -> int:
        return sum(v.n for v in self.vouchers)

    def redeemed(self) -> int:
        return sum(r.n for r in self.redemptions)

    def denied(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.denials:
            out[d.reason] = out.get(d.reason, 0) + d.n
        return out

    def per_variant(self) -> dict[str, tuple[int, int]]:
        """(discount granted, order revenue) per variant."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.redemptions:
            d, o = out.get(r.variant, (0, 0))
            out[r.variant] = (d + r.discount, o + r.revenue)
        return out

    def event(self, now: datetime) -> ev.BudgetCounters:
        return ev.BudgetCounters(campaign_id=self.campaign_id, ledger=self.ledger, issued=self.issued(),
                                 redeemed=self.redeemed(), denied=self.denied(), updated_at=now)

    def stats(self, name: str | None) -> dict[str, Any]:
        """The ``GET /v1/campaigns/{id}/stats`` answer: per-variant redemption rates with Wilson 95 %
        intervals, and the holdout's size."""
        variants: dict[str, dict[str, Any]] = {}
        for v in self.vouchers:
            variants.setdefault(v.variant, {"issued": 0, "redeemed": 0})["issued"] += v.n
        for r in self.redemptions:
            variants.setdefault(r.variant, {"issued": 0, "redeemed": 0})["redeemed"] += r.n
        for x in variants.values():
            low, high = stats.wilson(x["redeemed"], x["issued"])
            x["redemption_rate"] = x["redeemed"] / x["issued"] if x["issued"] else 0.0
            x["rate_95ci"] = [round(low, 4), round(high, 4)]
        denied = self.denied()
        return {"campaign_id": self.campaign_id, "name": name,
                "ledger": {"currency": self.ledger.currency, "limit": self.limit, "reserved": self.reserved,
                           "spent": self.spent, "remaining": self.remaining, "seq": self.ledger.seq},
                "variants": variants, "holdout_customers": denied.get("holdout", 0), "denied": denied,
                "note": "lift against the holdout needs the shop's conversions, which Voucherstream does not "
                        "receive; the holdout size is reported so the shop can compute it"}
