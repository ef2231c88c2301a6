"""OpenTelemetry tracing across the services and Kafka.

The trace context travels *in the event*: the CloudEvents envelope's ``traceparent`` attribute
(the Distributed Tracing extension), so it survives the outbox, a replay and any consumer. A
consumer starts one span per message, child of the message's ``traceparent``; what the handler
writes because of that message carries the span's context into its outbox row and from there into
the event it publishes. A request's events carry the request's span (FastAPI is instrumented).
So a shop's cart and the ``delivery-requested`` it leads to are one trace, and so are a
redemption and the ``budget-counters`` that count it.

Off by default: no SDK is installed, no span is recorded, and a message's ``traceparent`` is
passed on unchanged (a shop's own trace still reaches its collector through Voucherstream). On
with ``VOUCHERSTREAM_TRACING_OTLP_ENDPOINT`` (OTLP over HTTP to a collector): then FastAPI,
asyncpg and aiokafka are instrumented as well.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)
TRACER = "voucherstream"


class TracingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOUCHERSTREAM_TRACING_", extra="ignore", env_ignore_empty=True)

    otlp_endpoint: str = Field("", description="OTLP/HTTP traces endpoint of a collector (e.g. "
                               "http://otel-collector:4318/v1/traces); empty: tracing off")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of new traces recorded (a traced event's "
                                "sampling decision is kept)")


_enabled = False
_exporting: set[str] = set()  # OTLP endpoints spans already go to (a process may build several services)
SERVICE_ATTRIBUTE = "voucherstream.service"


def _sampler(ratio: float):
    """Traces start only where work enters: an HTTP request, or a message a service processes.
    A query or a send outside any of them (the outbox relay's polls, periodic jobs, the Kafka
    client's fetches) is not recorded, so a collector sees causes and their consequences, not
    one trace per poll."""
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )

    class EntryPoints(Sampler):
        def __init__(self) -> None:
            self.ratio = TraceIdRatioBased(ratio)

        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None) -> SamplingResult:
            if kind == SpanKind.SERVER or (attributes and SERVICE_ATTRIBUTE in attributes):
                return self.ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
            return ALWAYS_OFF.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"EntryPoints({ratio})"

    return ParentBased(root=EntryPoints())


def enable(settings: TracingSettings | None = None, *, exporter=None) -> None:
    """Installs the SDK for this process (once; later calls only add ``exporter``): spans go to
    the OTLP endpoint of ``settings`` and/or to ``exporter`` (tests pass an in-memory one), and
    asyncpg and aiokafka are instrumented. FastAPI apps built afterwards are instrumented by
    :func:`instrument_app`."""
    global _enabled
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(sampler=_sampler(settings.sample_ratio if settings else 1.0))
        trace.set_tracer_provider(provider)
    if not _enabled:
        AsyncPGInstrumentor().instrument(tracer_provider=provider)
        AIOKafkaInstrumentor().instrument(tracer_provider=provider)
    if settings is not None and settings.otlp_endpoint and settings.otlp_endpoint not in _exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint)))
        _exporting.add(settings.otlp_endpoint)
        log.info("traces are exported", extra={"endpoint": settings.otlp_endpoint})
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _enabled = True


def disable() -> None:
    """Stops recording (the provider stays; asyncpg and aiokafka are uninstrumented): what a test
    that enabled tracing undoes."""
    global _enabled
    if _enabled:
        from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().uninstrument()
        AIOKafkaInstrumentor().uninstrument()
    _enabled = False


def setup(settings: TracingSettings) -> None:
    """What a service does at start: tracing on when an endpoint is configured."""
    if settings.otlp_endpoint:
        enable(settings)


def instrument_app(app) -> None:
    if _enabled:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=trace.get_tracer_provider())


def _context_of(traceparent: str | None) -> context.Context | None:
    """The context a ``traceparent`` names (an unparsable one gives an empty context: a new trace)."""
    return propagate.extract({"traceparent": traceparent}) if traceparent else None


def traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def current() -> str | None:
    """The current span's ``traceparent`` (a request's, a message's), for the events it causes."""
    if not _enabled:
        return None
    span = trace.get_current_span()
    return traceparent_of(span) if span.get_span_context().is_valid else None


class Received:
    """The spans of one consumed batch: one per message, child of the message's ``traceparent``,
    ended when its handling is; while the handler runs, the first message's span is the current
    one (so its queries are in that message's trace)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.spans: list[Span] = []

    def start(self, topic: str, partition: int, offset: int, traceparent: str | None) -> str | None:
        """The context the message's consequences carry: its span's, or (tracing off) its own."""
        if not _enabled:
            return traceparent
        span = trace.get_tracer(TRACER).start_span(
            f"{topic} process", context=_context_of(traceparent), kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic,
                        "messaging.destination.partition.id": str(partition), "messaging.kafka.offset": offset,
                        SERVICE_ATTRIBUTE: self.service})
        self.spans.append(span)
        return traceparent_of(span)

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Around the handler: the first message's span current, every span ended afterwards."""
        if not self.spans:
            yield
            return
        try:
            with _attached(trace.set_span_in_context(self.spans[0])):
                yield
        finally:
            for span in self.spans:
                span.end()
            self.spans.clear()


_NOTHING = contextlib.nullcontext()


def publishing(topic: str, traceparent: str | None) -> contextlib.AbstractContextManager:
    """A producer span for one record the outbox relay hands to Kafka, child of the row's
    ``traceparent`` (the relay sends rows in batches, which aiokafka's instrumentation does not
    see); nothing at all while tracing is off (the relay calls it for every row)."""
    if not _enabled or not traceparent:
        return _NOTHING
    return trace.get_tracer(TRACER).start_as_current_span(
        f"{topic} send", context=_context_of(traceparent), kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic})


@contextlib.contextmanager
def _attached(ctx: context.Context) -> Iterator[None]:
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)
