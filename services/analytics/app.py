"""The redemption analytics service: exact counters per campaign, variant and channel, derived
from the issuance events, published on the compacted ``budget-counters`` topic (at most once a
second per campaign), as Prometheus metrics, and at ``GET /v1/campaigns/{id}/stats``.

Why PostgreSQL here (as in segmentation): the events are keyed by customer, the counters by
campaign. Exactness needs per-voucher and per-redemption state (so a duplicate is a no-op) and the
ledger snapshot with the highest sequence number; one transaction per consumed batch gives both
without a repartition topic. The state is still a pure function of the stream: dropping the
schema and replaying the topics rebuilds it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as PathParam
from prometheus_client import Gauge
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.analytics import stats, store
from shared import events as ev
from shared import exports
from shared.kafka import send_all
from shared.metrics import Metrics
from shared.service import NOT_FOUND, Service
from shared.settings import ServiceSettings

SOURCE = "voucherstream/analytics"
TOPICS = ["campaign-changed", "voucher-issued", "issuance-denied", "voucher-redeemed", "redemption-rolled-back",
          "voucher-expired", "voucher-revoked", "erasure-requested", "export-requested"]


class AnalyticsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ANALYTICS_", extra="ignore")

    service: str = "analytics"
    http_port: int = 8004
    publish_interval_s: float = Field(1.0, gt=0, description="a campaign's counters are published at most this often")
    check_interval_s: float = Field(0.1, gt=0, description="how often changes are looked for")


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


class AnalyticsService(Service):
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, settings: AnalyticsSettings) -> None:
        super().__init__(settings)
        self.settings: AnalyticsSettings = settings
        self.metrics = AnalyticsMetrics(settings.service)

    async def on_start(self) -> None:
        self.consume(TOPICS, self.on_batch)
        self._published_at: dict[str, float] = {}
        self._sampled_at = 0.0
        self.every("publish-counters", self.settings.check_interval_s, self.publish)

    # ------------------------------------------------------------------ the stream

    async def on_batch(self, messages) -> None:
        answers, denials, vouchers, endings, redemptions, rollbacks = [], [], [], [], [], []
        ledgers: dict[str, ev.LedgerSnapshot] = {}  # the highest-seq snapshot of the batch per campaign
        campaigns: list[ev.CampaignChanged] = []
        for m in messages:
            e = m.event
            if isinstance(e, ev.CampaignChanged):
                campaigns.append(e)
            elif isinstance(e, (ev.ErasureRequested, ev.ExportRequested)):
                answers.append(e)  # analytics holds no customer ids: nothing to erase or export
            elif isinstance(e, ev.IssuanceDenied):
                denials.append((m.envelope.id, e.campaign_id, e.variant, e.reason))
            else:
                # An ending has its own table so it counts even when it is consumed before the
                # voucher or redemption it ends.
                if isinstance(e, ev.VoucherIssued):
                    vouchers.append((e.voucher_id, e.campaign_id, e.variant, e.channel.value, e.max_discount.amount,
                                     e.issued_at))
                elif isinstance(e, (ev.VoucherExpired, ev.VoucherRevoked)):
                    endings.append((e.voucher_id, e.campaign_id,
                                    "expired" if isinstance(e, ev.VoucherExpired) else "revoked"))
                elif isinstance(e, ev.VoucherRedeemed):
                    redemptions.append((e.redemption_id, e.voucher_id, e.campaign_id, e.variant, e.channel.value,
                                        e.discount.amount, e.order_amount.amount, e.redeemed_at))
                else:  # RedemptionRolledBack
                    rollbacks.append((e.redemption_id, e.campaign_id))
                seen = ledgers.get(e.campaign_id)
                if seen is None or seen.seq < e.ledger.seq:
                    ledgers[e.campaign_id] = e.ledger
        async with self.pool.acquire() as conn, conn.transaction():
            for c in campaigns:
                await store.upsert_campaign(conn, c)
            # Every statement is a no-op on a duplicate; each returns the campaigns it moved.
            changed = (await store.add_denials(conn, denials) | await store.add_vouchers(conn, vouchers)
                       | await store.add_voucher_endings(conn, endings) | await store.add_redemptions(conn, redemptions)
                       | await store.add_rollbacks(conn, rollbacks) | await store.advance_ledgers(conn, ledgers))
            await store.bump_versions(conn, changed)
        if answers:
            # Its memory of the erased customers' data keys goes before it confirms.
            self.keys.forget(a.customer_id for a in answers if isinstance(a, ev.ErasureRequested))
            records = []
            now = ev.now_utc()
            for a in answers:
                done = (ev.ErasureCompleted(request_id=a.request_id, customer_id=a.customer_id, service="analytics",
                                            completed_at=now, erased={})
                        if isinstance(a, ev.ErasureRequested) else
                        exports.answer(a, "analytics", {"note": "analytics keeps no customer ids"}, now))
                topic = "erasure-completed" if isinstance(a, ev.ErasureRequested) else "export-completed"
                records.append((self.settings.kafka.topic(topic), a.customer_id.encode(),
                                ev.encode(done, source=SOURCE), None))
            await send_all(self.producer, records)

    # ------------------------------------------------------------------ counters

    async def counters(self, conn: asyncpg.Connection, campaign_id: str) -> dict[str, Any] | None:
        lg = await conn.fetchrow("SELECT * FROM ledgers WHERE campaign_id = $1", campaign_id)
        if lg is None:
            return None
        vouchers = await conn.fetch(
            "SELECT v.variant, v.channel, coalesce(e.state, 'issued') AS state, count(*) AS n FROM voucher_states v"
            " LEFT JOIN voucher_endings e USING (voucher_id) WHERE v.campaign_id = $1 GROUP BY 1, 2, 3", campaign_id)
        reds = await conn.fetch(
            "SELECT variant, channel, count(*) AS n, sum(discount) AS d, sum(order_amount) AS o FROM redemption_states r"
            " WHERE campaign_id = $1 AND NOT EXISTS (SELECT 1 FROM redemption_rollbacks b"
            " WHERE b.redemption_id = r.redemption_id) GROUP BY 1, 2", campaign_id)
        denials = await conn.fetch("SELECT reason, variant, count(*) AS n FROM denials WHERE campaign_id = $1"
                                   " GROUP BY 1, 2", campaign_id)
        return {"ledger": dict(lg), "vouchers": [dict(r) for r in vouchers], "redemptions": [dict(r) for r in reds],
                "denials": [dict(r) for r in denials]}

    async def publish(self) -> None:
        """Publishes changed campaigns on budget-counters (so at most once per interval each),
        refreshes the gauges, samples burn rates and announces thresholds."""
        now = datetime.now(UTC)
        clock = asyncio.get_running_loop().time()
        full = clock - self._sampled_at >= self.settings.publish_interval_s  # gauges, samples, thresholds
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT campaign_id, version, published_version FROM ledgers ORDER BY 1")
            due = {r["campaign_id"] for r in rows if r["version"] != r["published_version"]
                   and clock - self._published_at.get(r["campaign_id"], -1e9) >= self.settings.publish_interval_s}
            ids = [r["campaign_id"] for r in rows] if full else sorted(due)
            if full:
                self._sampled_at = clock
            records = []
            for cid in ids:
                c = await self.counters(conn, cid)
                lg = c["ledger"]
                used = lg["reserved"] + lg["spent"]
                await conn.execute("INSERT INTO ledger_samples VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", cid, now, used)
                await conn.execute("DELETE FROM ledger_samples WHERE campaign_id = $1 AND at < $2", cid,
                                   now - timedelta(minutes=15))
                samples = [(r["at"].timestamp(), r["used"]) for r in await conn.fetch(
                    "SELECT at, used FROM ledger_samples WHERE campaign_id = $1 ORDER BY at", cid)]
                rate = stats.burn_rate(samples)
                remaining = lg["limit_minor"] - used
                self.metrics.burn.labels(cid).set(rate)
                tte = stats.time_to_exhaustion(remaining, rate)
                if tte is not None:
                    self.metrics.exhaustion.labels(cid).set(tte)
                for field, value in (("limit", lg["limit_minor"]), ("reserved", lg["reserved"]),
                                     ("spent", lg["spent"]), ("remaining", remaining)):
                    self.metrics.budget.labels(cid, field).set(value)
                for v in c["vouchers"]:
                    self.metrics.vouchers.labels(cid, v["variant"], v["channel"], v["state"]).set(v["n"])
                for r in c["redemptions"]:
                    self.metrics.redemptions.labels(cid, r["variant"], r["channel"]).set(r["n"])
                per_variant: dict[str, list[int]] = {}
                for r in c["redemptions"]:
                    acc = per_variant.setdefault(r["variant"], [0, 0])
                    acc[0] += int(r["d"] or 0)
                    acc[1] += int(r["o"] or 0)
                for variant, (d, o) in per_variant.items():
                    self.metrics.discount.labels(cid, variant).set(d)
                    self.metrics.revenue.labels(cid, variant).set(o)
                denied: dict[str, int] = {}
                for d in c["denials"]:
                    denied[d["reason"]] = denied.get(d["reason"], 0) + d["n"]
                for reason, n in denied.items():
                    self.metrics.denials.labels(cid, reason).set(n)
                already = {r["percent"] for r in await conn.fetch(
                    "SELECT percent FROM thresholds_crossed WHERE campaign_id = $1", cid)}
                snapshot = ev.LedgerSnapshot(currency=lg["currency"], limit=lg["limit_minor"], reserved=lg["reserved"],
                                             spent=lg["spent"], seq=lg["seq"])
                for pct in stats.crossed(lg["limit_minor"], used, already):
                    await conn.execute("INSERT INTO thresholds_crossed VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                                       cid, pct, now)
                    records.append((self.settings.kafka.topic("budget-threshold-crossed"), cid.encode(), ev.encode(
                        ev.BudgetThresholdCrossed(campaign_id=cid, threshold_percent=pct, ledger=snapshot,
                                                  crossed_at=now), source=SOURCE), None))
                if cid not in due:
                    continue
                self._published_at[cid] = clock
                issued = sum(v["n"] for v in c["vouchers"])
                redeemed = sum(r["n"] for r in c["redemptions"])
                records.append((self.settings.kafka.topic("budget-counters"), cid.encode(), ev.encode(
                    ev.BudgetCounters(campaign_id=cid, ledger=snapshot, issued=issued, redeemed=redeemed,
                                      denied=denied, updated_at=now), source=SOURCE), None))
                self.metrics.freshness.set(max(0.0, (now - lg["changed_at"]).total_seconds()))
                await conn.execute("UPDATE ledgers SET published_version = $2 WHERE campaign_id = $1", cid, lg["version"])
            await send_all(self.producer, records)

    # ------------------------------------------------------------------ HTTP

    def routes(self, app: FastAPI) -> None:
        @app.get("/v1/campaigns/{campaign_id}/stats", tags=["analytics"], responses=NOT_FOUND,
                 dependencies=[Depends(self.auth.require("marketing"))],
                 summary="Budget, counts and per-variant redemption rates with 95 % intervals")
        async def campaign_stats(campaign_id: str = PathParam(min_length=1, max_length=64,
                                                              pattern=r"^[a-z0-9][a-z0-9-]*$")) -> dict[str, Any]:
            async with self.pool.acquire() as conn:
                c = await self.counters(conn, campaign_id)
                info = await conn.fetchrow("SELECT * FROM campaigns WHERE campaign_id = $1", campaign_id)
            if c is None:
                raise HTTPException(404, f"no events seen for campaign {campaign_id}")
            lg = c["ledger"]
            variants: dict[str, dict[str, Any]] = {}
            for v in c["vouchers"]:
                variants.setdefault(v["variant"], {"issued": 0, "redeemed": 0})["issued"] += v["n"]
            for r in c["redemptions"]:
                variants.setdefault(r["variant"], {"issued": 0, "redeemed": 0})["redeemed"] += r["n"]
            for v in variants.values():
                low, high = stats.wilson(v["redeemed"], v["issued"])
                v["redemption_rate"] = v["redeemed"] / v["issued"] if v["issued"] else 0.0
                v["rate_95ci"] = [round(low, 4), round(high, 4)]
            holdout = sum(d["n"] for d in c["denials"] if d["reason"] == "holdout")
            denied: dict[str, int] = {}
            for d in c["denials"]:
                denied[d["reason"]] = denied.get(d["reason"], 0) + d["n"]
            return {"campaign_id": campaign_id, "name": info["name"] if info else None,
                    "ledger": {"currency": lg["currency"], "limit": lg["limit_minor"], "reserved": lg["reserved"],
                               "spent": lg["spent"], "remaining": lg["limit_minor"] - lg["reserved"] - lg["spent"],
                               "seq": lg["seq"]},
                    "variants": variants, "holdout_customers": holdout,
                    "denied": denied,
                    "note": "lift against the holdout needs the shop's conversions, which Voucherstream does not "
                            "receive; the holdout size is reported so the shop can compute it"}


def _moved(status: str) -> bool:
    """Whether an INSERT ... ON CONFLICT changed a row ("INSERT 0 1"), not a duplicate ("INSERT 0 0")."""
    return not status.endswith(" 0")


def create_app(settings: AnalyticsSettings | None = None) -> AnalyticsService:
    return AnalyticsService(settings or AnalyticsSettings())

