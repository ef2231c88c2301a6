from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS, Metrics


class ConsentMetrics(Metrics):
    def __init__(self, service: str = "consent", registry=None) -> None:
        super().__init__(service, registry)
        r = self.registry
        self.consents = Counter("voucherstream_consents_total", "Consent decisions recorded, by purpose",
                                ["purpose", "decision"], registry=r)
        self.consent_ignored = Counter("voucherstream_consent_events_ignored_total",
                                       "Consent events that changed nothing, by reason", ["reason"], registry=r)
        self.consent_propagation = Histogram(
            "voucherstream_consent_propagation_seconds",
            "From a consent event's receipt to its consent-state being acknowledged by Kafka",
            buckets=LATENCY_BUCKETS, registry=r)
        self.privacy_requests = Counter("voucherstream_privacy_requests_total", "Privacy requests received",
                                        ["kind"], registry=r)
        self.privacy_pending = Gauge("voucherstream_privacy_requests_pending", "Privacy requests not yet complete",
                                     ["kind"], registry=r)
        self.oldest_pending_erasure = Gauge("voucherstream_privacy_oldest_pending_erasure_age_seconds",
                                            "Age of the oldest erasure still waiting for a service", registry=r)
        self.privacy_completed = Histogram("voucherstream_privacy_request_duration_seconds",
                                           "From a privacy request to the last service's answer", ["kind"],
                                           buckets=(1, 5, 30, 60, 300, 3600, 86400, 7 * 86400, 30 * 86400),
                                           registry=r)
