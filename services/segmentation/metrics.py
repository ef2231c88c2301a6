from prometheus_client import Counter, Gauge

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
        self.rules_version = Gauge("voucherstream_segmentation_rules_info", "The rule set in force", ["version"],
                                   registry=r)
