"""Prometheus metrics every service shares. One registry per service instance (tests run
several in one process). Names follow ``voucherstream_<thing>_<unit>``; labels are bounded
(service, topic, partition, reason), never a customer id or a code."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class Metrics:
    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if registry is None:
            # The process's own: resident memory, CPU seconds, open files, GC, Python version —
            # what a memory limit or a CPU autoscaler is set from (one process, so shared).
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                r.register(collector)
        self.consumed = Counter("voucherstream_messages_consumed_total",
                                "Messages read from Kafka, by outcome (handled, dead_lettered, skipped_erased)",
                                ["service", "topic", "outcome"], registry=r)
        self.dead_letters = Counter("voucherstream_dead_letters_total",
                                    "Messages sent to <topic>.dlq, by reason", ["service", "topic", "reason"], registry=r)
        self.consumer_lag = Gauge("voucherstream_consumer_lag_messages",
                                  "Messages between the consumer's position and the partition's end",
                                  ["service", "topic", "partition"], registry=r)
        self.batch_duration = Histogram("voucherstream_batch_duration_seconds",
                                        "Time to handle one consumed batch, commit included", ["service"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("voucherstream_batch_size_messages", "Messages per consumed batch",
                                    ["service"], buckets=SIZE_BUCKETS, registry=r)
        self.handler_retries = Counter("voucherstream_handler_retries_total",
                                       "Batches retried after a transient failure (database or broker down)",
                                       ["service", "error"], registry=r)
        self.outbox_published = Counter("voucherstream_outbox_published_total",
                                        "Outbox rows published to Kafka", ["service", "topic"], registry=r)
        self.outbox_pending = Gauge("voucherstream_outbox_pending_messages",
                                    "Outbox rows not yet published (sampled by the relay)", ["service"], registry=r)
        self.outbox_delay = Histogram("voucherstream_outbox_delay_seconds",
                                      "From the outbox row's commit to its publication", ["service"],
                                      buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_endpoint(metrics: Metrics):
    """A Starlette/FastAPI endpoint serving ``metrics`` in the Prometheus text format."""

    async def endpoint(_: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return endpoint
