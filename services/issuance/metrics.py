from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS, Metrics


class IssuanceMetrics(Metrics):
    def __init__(self, service: str = "issuance", registry=None) -> None:
        super().__init__(service, registry)
        r = self.registry
        self.issued = Counter("voucherstream_vouchers_issued_total", "Vouchers issued",
                              ["campaign", "variant", "channel"], registry=r)
        self.denied = Counter("voucherstream_issuance_denied_total", "Issuance refusals, by reason",
                              ["campaign", "reason"], registry=r)
        self.closed = Counter("voucherstream_vouchers_closed_total", "Vouchers expired or revoked",
                              ["campaign", "status"], registry=r)
        self.ledger = Gauge("voucherstream_budget_minor_units", "Budget ledger per campaign (minor units)",
                            ["campaign", "field"], registry=r)
        self.segment_to_voucher = Histogram(
            "voucherstream_segment_to_voucher_seconds",
            "From a segment-entered record's timestamp to the voucher's commit", buckets=LATENCY_BUCKETS, registry=r)
        self.consent_hold = Histogram(
            "voucherstream_issuance_consent_hold_seconds", "How long a segment entry waited for consent to apply "
            "every decision published before it (0: decided at once)",
            buckets=(0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.holds = Counter("voucherstream_issuance_consent_holds_total", "Segment entries held for consent, "
                             "released, refused after the maximum wait, or dropped (erased customer)", ["outcome"],
                             registry=r)
        self.consent_states = Counter("voucherstream_issuance_consent_states_total", "consent-state records: applied, "
                                      "already applied (redelivery, replay), stale copies for erased customers",
                                      ["outcome"], registry=r)
        self.deliveries_cancelled = Counter("voucherstream_deliveries_cancelled_total", "Deliveries cancelled, by "
                                            "reason and whether the request had been published", ["reason", "request"],
                                            registry=r)
        self.checkout = Counter("voucherstream_checkout_requests_total", "Checkout answers by operation and outcome",
                                ["operation", "outcome"], registry=r)
        self.redeemed_amount = Counter("voucherstream_redeemed_discount_minor_units_total",
                                       "Discount granted by redemptions (minor units)", ["campaign"], registry=r)
        self.rate_limited = Counter("voucherstream_checkout_rate_limited_total",
                                    "Checkout requests refused for too many failures", ["by"], registry=r)
        self.checkout_latency = Histogram("voucherstream_checkout_duration_seconds", "Checkout request handling time",
                                          ["operation"], buckets=LATENCY_BUCKETS, registry=r)
        self.partner_codes = Counter("voucherstream_partner_codes_generated_total", "Partner codes generated",
                                     ["campaign"], registry=r)
        self.redemption_batch = Histogram("voucherstream_redemption_batch_size",
                                          "Single-use redemptions written together (one ledger lock and one commit)",
                                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.redemption_write = Histogram("voucherstream_redemption_write_seconds",
                                          "One write of the redemption writer (a batch, its ledger move and commit)",
                                          buckets=LATENCY_BUCKETS, registry=r)
