"""One trace from the shop's cart to its delivery-requested, and from a redemption to the
budget-counters that count it: the trace context travels in the CloudEvents envelope's
``traceparent`` (Distributed Tracing extension) and through each service's outbox; the spans
are recorded by an in-memory exporter."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import events as ev
from shared import tracing
from shared.kafka import send_all, start_producer
from tests.integration.analytics.conftest import analytics  # noqa: F401 - fixture
from tests.integration.issuance.conftest import campaign, consent_state, issuance, issuance_schema, publish  # noqa: F401
from tests.integration.segmentation.conftest import kept, running, settings_for
from tests.support import read_topic, wait_for

CART_TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_CART_TRACE = "5c1e4d3b2a19f8e7d6c5b4a39281706f"
CHECKOUT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def traceparent(trace_id: str, span_id: str = "b7ad6b7169203331") -> str:
    return f"00-{trace_id}-{span_id}-01"


def trace_of(value: bytes) -> str | None:
    tp = orjson.loads(value).get("traceparent")
    return tp.split("-")[1] if tp else None


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    tracing.enable(exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.disable()
        exporter.clear()


def in_trace(exporter: InMemorySpanExporter, trace_id: str) -> list:
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]


async def test_a_cart_and_its_delivery_and_a_redemption_and_its_counters_are_one_trace_each(
        spans, kafka, issuance, analytics):  # noqa: F811 - fixtures
    carts = {"trace-c1": CART_TRACE, "trace-c3": OTHER_CART_TRACE}  # one batch, two traces
    created = await issuance.client.post("/v1/campaigns", json=campaign(channels=["email"]))
    assert created.status_code == 201, created.text
    async with running(settings_for(kafka)) as segmentation:
        await publish(kafka, "consent-state", [consent_state(c, "profiling", "personalized_offers", "email")
                                               for c in carts])
        for c in carts:
            await wait_for(lambda c=c: kept(segmentation, c), timeout=15, what="profiling consent applied")
        producer = await start_producer(kafka, "shop")
        try:  # the shop's own trace context, as its checkout would send it
            await send_all(producer, [(kafka.topic("cart-abandoned"), c.encode(), ev.encode(
                ev.CartAbandoned(cart_id=f"k-{c}", customer_id=c, abandoned_at=datetime.now(UTC),
                                 value=ev.Money(amount=31_000, currency="USD")),
                source="shop", traceparent=traceparent(trace)), None) for c, trace in carts.items()])
        finally:
            await producer.stop()
        deliveries = await read_topic(kafka.bootstrap, kafka.topic("delivery-requested"), expect=2, timeout=30,
                                      raw=True)
    assert {r.key.decode(): trace_of(r.value) for r in deliveries} == carts
    cart_spans = {(s.name, s.attributes.get("voucherstream.service")) for s in in_trace(spans, CART_TRACE)}
    assert {("cart-abandoned process", "segmentation"), ("segment-entered process", "issuance")} <= cart_spans
    sends = [s.name for s in in_trace(spans, CART_TRACE) if s.kind.name == "PRODUCER"]  # the relays', in the trace
    assert any(n.endswith("segment-entered send") for n in sends) and any(
        n.endswith("delivery-requested send") for n in sends), sends
    # A batch's queries are in its first message's trace (one of the two carts').
    assert any(s.kind.name == "CLIENT" for t in carts.values() for s in in_trace(spans, t)), "no database span"

    # A redemption over HTTP, in the shop's checkout trace, counted by analytics.
    codes = await issuance.client.post("/v1/campaigns/cart-20/partner-codes", json={"partner": "p", "count": 1})
    code = codes.text.strip().splitlines()[-1].split(",")[0]
    redeemed = await issuance.client.post(
        "/v1/redemptions", json={"code": code, "customer_id": "trace-c2",
                                 "order": {"amount": {"amount": 9000, "currency": "USD"}, "items": []}},
        headers={"Idempotency-Key": "trace-1", "traceparent": traceparent(CHECKOUT_TRACE)})
    assert redeemed.status_code == 201, redeemed.text

    async def counted():
        records = await read_topic(kafka.bootstrap, kafka.topic("budget-counters"), raw=True)
        last = records[-1] if records else None
        return last if last is not None and ev.decode(last.value)[1].redeemed == 1 else None

    counters = await wait_for(counted, timeout=20, what="budget-counters counting the redemption")
    assert trace_of(counters.value) == CHECKOUT_TRACE
    (redeemed_event,) = await read_topic(kafka.bootstrap, kafka.topic("voucher-redeemed"), expect=1, raw=True)
    assert trace_of(redeemed_event.value) == CHECKOUT_TRACE
    checkout_spans = {(s.name, s.attributes.get("voucherstream.service")) for s in in_trace(spans, CHECKOUT_TRACE)}
    assert ("voucher-redeemed process", "analytics") in checkout_spans, checkout_spans
    assert any(s.kind.name == "SERVER" for s in in_trace(spans, CHECKOUT_TRACE)), "no span of the HTTP request"
