"""The analytics service's use cases: the consumed stream into counters (one transaction per
batch), and the publisher that announces them. Everything analytics publishes — budget-counters,
budget-threshold-crossed, its privacy answers — is written to the outbox in the transaction that
records it, so a failed send is retried by the relay, never lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

import asyncpg

from services.analytics import stats, store
from services.analytics.counters import Counters, rows_of
from services.analytics.metrics import AnalyticsMetrics
from services.analytics.settings import AnalyticsSettings
from shared import db, exports
from shared import events as ev
from shared.datakeys import DataKeys
from shared.outbox import OutboxRecord, enqueue, event_record

SOURCE = "voucherstream/analytics"
TOPICS = ["campaign-changed", "voucher-issued", "issuance-denied", "voucher-redeemed", "redemption-rolled-back",
          "voucher-expired", "voucher-revoked", "erasure-requested", "export-requested"]


def answer(request: ev.ErasureRequested | ev.ExportRequested, now: datetime) -> OutboxRecord:
    """Analytics keeps no customer id: its erasure is done and its export empty."""
    if isinstance(request, ev.ErasureRequested):
        return event_record("erasure-completed", ev.ErasureCompleted(
            request_id=request.request_id, customer_id=request.customer_id, service="analytics", completed_at=now,
            erased={}), source=SOURCE)
    return event_record("export-completed", exports.answer(
        request, "analytics", {"note": "analytics keeps no customer ids"}, now), source=SOURCE)


class AnalyticsHandlers:
    def __init__(self, settings: AnalyticsSettings, metrics: AnalyticsMetrics, keys: DataKeys,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.keys = keys
        self._published_at: dict[str, float] = {}  # monotonic time a campaign's counters were last published
        self._sampled_at = -1e9

    async def on_batch(self, pool: asyncpg.Pool, messages) -> None:
        rows = rows_of(messages)
        # Its memory of the erased customers' data keys goes before it confirms.
        self.keys.forget(r.customer_id for r in rows.requests if isinstance(r, ev.ErasureRequested))
        now = ev.now_utc()
        async with db.batch_transaction(pool) as conn:
            await store.apply(conn, rows)
            await enqueue(conn, [answer(r, now) for r in rows.requests], keys=self.keys)

    async def publish(self, pool: asyncpg.Pool) -> int:
        """Publishes the counters of changed campaigns (each at most once per interval), and every
        interval refreshes all gauges, samples burn rates and announces thresholds. Returns the
        number of outbox rows written."""
        clock = self.clock()
        interval = self.settings.publish_interval_s
        full = clock - self._sampled_at >= interval
        written = 0
        async with pool.acquire() as conn:
            rows = await store.versions(conn)
            due = {r["campaign_id"] for r in rows if r["version"] != r["published_version"]
                   and clock - self._published_at.get(r["campaign_id"], -1e9) >= interval}
            if full:
                self._sampled_at = clock
            for cid in [r["campaign_id"] for r in rows] if full else sorted(due):
                async with conn.transaction():
                    c = await store.counters(conn, cid, lock=True)
                    if c is not None:
                        written += await self._publish_one(conn, c, publish=cid in due)
                if cid in due:
                    self._published_at[cid] = clock
        return written

    async def _publish_one(self, conn: asyncpg.Connection, c: Counters, *, publish: bool) -> int:
        now = ev.now_utc()
        rate = stats.burn_rate(await store.sample(conn, c.campaign_id, now, c.used))
        self.metrics.show(c, rate, stats.time_to_exhaustion(c.remaining, rate))
        records = [event_record("budget-threshold-crossed", ev.BudgetThresholdCrossed(
            campaign_id=c.campaign_id, threshold_percent=pct, ledger=c.ledger, crossed_at=now), source=SOURCE,
            traceparent=c.traceparent)
            for pct in await store.record_thresholds(
                conn, c.campaign_id, stats.crossed(c.limit, c.used, await store.thresholds_crossed(conn, c.campaign_id)),
                now)]
        if publish and c.version != c.published_version:
            records.append(event_record("budget-counters", c.event(now), source=SOURCE, traceparent=c.traceparent))
            await store.mark_published(conn, c.campaign_id, c.version)
            self.metrics.freshness.set(max(0.0, (now - c.changed_at).total_seconds()))
        await enqueue(conn, records)
        return len(records)
