"""The analytics service's Prometheus gauges: a campaign's counters as Grafana shows them."""

from __future__ import annotations

from prometheus_client import Gauge

from services.analytics.counters import Counters
from shared.metrics import Metrics


class AnalyticsMetrics(Metrics):
    def __init__(self, service: str = "analytics", registry=None) -> None:
        super().__init__(service, registry)
        r = self.registry
        self.budget = Gauge("voucherstream_campaign_budget_minor_units", "Campaign ledger (limit, reserved, spent, "
                            "remaining), minor units", ["campaign", "field"], registry=r)
        self.vouchers = Gauge("voucherstream_campaign_vouchers", "Vouchers by variant, channel and state",
                              ["campaign", "variant", "channel", "state"], registry=r)
        self.redemptions = Gauge("voucherstream_campaign_redemptions", "Redemptions (not rolled back)",
                                 ["campaign", "variant", "channel"], registry=r)
        self.discount = Gauge("voucherstream_campaign_discount_spent_minor_units", "Discount granted",
                              ["campaign", "variant"], registry=r)
        self.revenue = Gauge("voucherstream_campaign_order_revenue_minor_units", "Order revenue with a voucher",
                             ["campaign", "variant"], registry=r)
        self.denials = Gauge("voucherstream_campaign_denials", "Issuance refusals by reason", ["campaign", "reason"],
                             registry=r)
        self.burn = Gauge("voucherstream_campaign_burn_rate_minor_units_per_second",
                          "Reserved + spent growth over the last 15 minutes", ["campaign"], registry=r)
        self.exhaustion = Gauge("voucherstream_campaign_time_to_exhaustion_seconds",
                                "Remaining budget / burn rate (absent when not burning)", ["campaign"], registry=r)
        self.freshness = Gauge("voucherstream_counters_freshness_seconds",
                               "Age of the newest ledger change when counters were last published", registry=r)

    def show(self, c: Counters, burn_rate: float, time_to_exhaustion: float | None) -> None:
        """Sets one campaign's gauges."""
        cid = c.campaign_id
        self.burn.labels(cid).set(burn_rate)
        if time_to_exhaustion is not None:
            self.exhaustion.labels(cid).set(time_to_exhaustion)
        for field, value in (("limit", c.limit), ("reserved", c.reserved), ("spent", c.spent),
                             ("remaining", c.remaining)):
            self.budget.labels(cid, field).set(value)
        for v in c.vouchers:
            self.vouchers.labels(cid, v.variant, v.channel, v.state).set(v.n)
        for r in c.redemptions:
            self.redemptions.labels(cid, r.variant, r.channel).set(r.n)
        for variant, (discount, revenue) in c.per_variant().items():
            self.discount.labels(cid, variant).set(discount)
            self.revenue.labels(cid, variant).set(revenue)
        for reason, n in c.denied().items():
            self.denials.labels(cid, reason).set(n)
