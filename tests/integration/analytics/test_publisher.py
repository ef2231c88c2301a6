"""The analytics use cases against a real PostgreSQL, without a broker: what the stream adds
counts once however often it is redelivered, and everything analytics announces — budget
counters, thresholds, privacy answers — is written to the outbox in the transaction that records
it (so the relay sends it whenever Kafka is reachable, never lost), and only once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.analytics.app import AnalyticsService
from services.analytics.handlers import AnalyticsHandlers
from services.analytics.metrics import AnalyticsMetrics
from services.analytics.settings import AnalyticsSettings
from shared import datakeys, db
from shared import events as ev
from shared.datakeys import DataKeys
from shared.kafka import Message
from tests.support import unique

NOW = datetime.now(UTC)


def message(event: ev.Event, offset: int) -> Message:
    envelope, decoded = ev.decode(ev.encode(event, source="tests", event_id=f"e-{offset}"))
    return Message(topic="t", partition=0, offset=offset, key=event.key(), envelope=envelope, event=decoded,
                   timestamp_ms=0)


def issued(voucher: str, seq: int) -> ev.VoucherIssued:
    return ev.VoucherIssued(
        voucher_id=voucher, campaign_id="pub", customer_id=f"c-{voucher}", variant="A", channel=ev.Channel.EMAIL,
        trigger_key=f"t-{voucher}", max_discount=ev.Money(amount=1000, currency="USD"),
        expires_at=NOW + timedelta(days=7), issued_at=NOW,
        ledger=ev.LedgerSnapshot(currency="USD", limit=10_000, reserved=1000 * seq, spent=0, seq=seq))


class Clock:
    """A monotonic clock the test moves on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def analytics_db(postgres_settings):
    schema = unique("test_analytics_db_")
    settings = AnalyticsSettings(schema_name=schema, publish_interval_s=0.05)
    pool = await db.create_pool(postgres_settings, schema, min_size=1, max_size=4)
    await db.migrate(pool, schema, db.discover(("shared", db.SHARED_MIGRATIONS),
                                               ("analytics", AnalyticsService.migrations)))
    await datakeys.migrate(pool, settings.data)
    handlers = AnalyticsHandlers(settings, AnalyticsMetrics(registry=None), DataKeys(settings.data, lambda: pool),
                                 clock=Clock())
    yield handlers, pool
    await db.drop_schema(pool, schema)
    await pool.close()


async def outbox(pool) -> list[tuple[str, ev.Event]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT topic, value FROM outbox ORDER BY id")
    return [(r["topic"], ev.decode(r["value"])[1]) for r in rows]


async def test_counts_once_and_announces_through_the_outbox_once(analytics_db):
    handlers, pool = analytics_db
    batch = [message(issued(f"v-{i}", i), i) for i in range(1, 6)]  # 5,000 of 10,000 reserved: 50 %
    for _ in range(3):  # redelivered twice
        await handlers.on_batch(pool, batch)
    await handlers.publish(pool)
    sent = await outbox(pool)
    assert [t for t, _ in sent] == ["budget-threshold-crossed", "budget-counters"]
    crossed, counters = sent[0][1], sent[1][1]
    assert (crossed.threshold_percent, crossed.ledger.seq) == (50, 5)
    assert (counters.issued, counters.ledger.reserved, counters.ledger.seq) == (5, 5000, 5)

    # Three more: 80 % crossed. Within the interval nothing goes out; after it, one of each.
    await handlers.on_batch(pool, [message(issued(f"v-{i}", i), i) for i in range(6, 9)])
    handlers.clock.now += 0.01
    await handlers.publish(pool)
    assert len(await outbox(pool)) == 2
    handlers.clock.now += 1
    await handlers.publish(pool)
    await handlers.publish(pool)
    sent = await outbox(pool)
    assert [t for t, _ in sent[2:]] == ["budget-threshold-crossed", "budget-counters"]
    assert (sent[2][1].threshold_percent, sent[3][1].issued, sent[3][1].ledger.seq) == (80, 8, 8)

    handlers.clock.now += 1  # an interval on, nothing changed: nothing new
    await handlers.publish(pool)
    assert len(await outbox(pool)) == 4


async def test_privacy_answers_leave_through_the_outbox_with_the_batch(analytics_db):
    handlers, pool = analytics_db
    erase = ev.ErasureRequested(request_id="r-1", customer_id="c-9", requested_at=NOW)
    await handlers.on_batch(pool, [message(erase, 1), message(issued("v-1", 1), 2)])
    answers = [e for t, e in await outbox(pool) if t == "erasure-completed"]
    assert [(a.request_id, a.customer_id, a.service, a.erased) for a in answers] == [("r-1", "c-9", "analytics", {})]
