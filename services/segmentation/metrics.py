from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import Metrics


class SegmentationMetrics(Metrics):
    def __init__(self, service: str = "segmentation", registry=None) -> None:
        super().__init__(service, registry)
        r = self.registry
        self.events = Counter("voucherstream_segmentation_events_total", "Events by type and outcome",
                              ["type", "outcome"], registry=r)
        self.already_applied = Counter("voucherstream_segmentation_already_applied_total",
                                       "Messages redelivered or replayed below the partition's applied offset, "
                                       "skipped", ["type"], registry=r)
        self.entries = Counter("voucherstream_segment_entries_total", "Segment entries emitted", ["segment"], registry=r)
        self.table_size = Gauge("voucherstream_segmentation_table_entries", "Customers kept, and of them with a "
                                "profile", ["table"], registry=r)
        self.consent_marks = Histogram("voucherstream_segmentation_consent_marks_seconds", "Reading the consent "
                                       "marks (log ends of consent-changed and consent-state) for a batch",
                                       buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
                                       registry=r)
        self.rules_version = Gauge("voucherstream_segmentation_rules_info", "The rule set in force", ["version"],
                                   registry=r)
