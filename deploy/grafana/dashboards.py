"""Grafana dashboards as code (grafana-foundation-sdk). `make dashboards` writes
deploy/grafana/dashboards/*.json, which docker-compose provisions; a test fails when they are
stale and another evaluates every panel's query through a real Prometheus.

    python -m deploy.grafana.dashboards [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

OUT = Path(__file__).parent / "dashboards"
PROM = DataSourceRef(type_val="prometheus", uid="prometheus")

# (title, kind, [(expr, legend)]) per panel, per dashboard. Every expression must return data
# once the services have run a scenario (tests/integration/analytics/test_dashboards.py).
DASHBOARDS: dict[str, tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = {
    "voucherstream-budgets": ("Voucherstream — campaign budgets", [
        ("Remaining budget (minor units)", "timeseries",
         [('sum by (campaign) (voucherstream_campaign_budget_minor_units{field="remaining"})', "{{campaign}}")]),
        ("Reserved and spent (minor units)", "timeseries",
         [('sum by (campaign) (voucherstream_campaign_budget_minor_units{field="reserved"})', "{{campaign}} reserved"),
          ('sum by (campaign) (voucherstream_campaign_budget_minor_units{field="spent"})', "{{campaign}} spent")]),
        ("Burn-down: used share of the limit", "timeseries",
         [('sum by (campaign) (voucherstream_campaign_budget_minor_units{field="reserved"}'
           ' + ignoring(field) voucherstream_campaign_budget_minor_units{field="spent"})'
           ' / sum by (campaign) (voucherstream_campaign_budget_minor_units{field="limit"})', "{{campaign}}")]),
        ("Burn rate (minor units/s, 15 min)", "timeseries",
         [("voucherstream_campaign_burn_rate_minor_units_per_second", "{{campaign}}")]),
        ("Time to exhaustion", "stat",
         [("voucherstream_campaign_time_to_exhaustion_seconds", "{{campaign}}")]),
    ]),
    "voucherstream-issuance": ("Voucherstream — issuance, redemption, A/B", [
        ("Vouchers issued per second", "timeseries",
         [("sum by (campaign) (rate(voucherstream_vouchers_issued_total[1m]))", "{{campaign}}")]),
        ("Redemptions (live)", "timeseries",
         [("sum by (campaign) (voucherstream_campaign_redemptions)", "{{campaign}}")]),
        ("Denials by reason", "timeseries",
         [("sum by (campaign, reason) (voucherstream_campaign_denials)", "{{campaign}} {{reason}}")]),
        ("A/B: vouchers and redemptions by variant", "timeseries",
         [("sum by (campaign, variant) (voucherstream_campaign_vouchers)", "{{campaign}} {{variant}} issued"),
          ("sum by (campaign, variant) (voucherstream_campaign_redemptions)", "{{campaign}} {{variant}} redeemed")]),
        ("Checkout answers per second", "timeseries",
         [("sum by (operation, outcome) (rate(voucherstream_checkout_requests_total[1m]))",
           "{{operation}} {{outcome}}")]),
    ]),
    "voucherstream-pipeline": ("Voucherstream — pipeline health", [
        ("Messages consumed per second", "timeseries",
         [("sum by (service, outcome) (rate(voucherstream_messages_consumed_total[1m]))", "{{service}} {{outcome}}")]),
        ("Consumer lag (messages)", "timeseries",
         [("sum by (service, topic) (voucherstream_consumer_lag_messages)", "{{service}} {{topic}}")]),
        ("Dead letters", "timeseries",
         [("sum by (service, topic, reason) (voucherstream_dead_letters_total)", "{{service}} {{topic}} {{reason}}")]),
        ("Outbox pending", "timeseries",
         [("sum by (service) (voucherstream_outbox_pending_messages)", "{{service}}")]),
        ("Batch duration p99 (s)", "timeseries",
         [("histogram_quantile(0.99, sum by (le, service) (rate(voucherstream_batch_duration_seconds_bucket[5m])))",
           "{{service}}")]),
    ]),
    "voucherstream-privacy": ("Voucherstream — privacy", [
        ("Consent decisions", "timeseries",
         [("sum by (purpose, decision) (voucherstream_consents_total)", "{{purpose}} {{decision}}")]),
        ("Privacy requests pending", "timeseries",
         [("sum by (kind) (voucherstream_privacy_requests_pending)", "{{kind}}")]),
        ("Oldest pending erasure (s)", "stat",
         [("max(voucherstream_privacy_oldest_pending_erasure_age_seconds)", "age")]),
        ("Consent propagation p99 (s)", "timeseries",
         [("histogram_quantile(0.99, sum by (le) (rate(voucherstream_consent_propagation_seconds_bucket[5m])))",
           "p99")]),
    ]),
}


def build(uid: str) -> dict:
    title, panels = DASHBOARDS[uid]
    board = dashboard.Dashboard(title).uid(uid).tags(["voucherstream"]).refresh("5s").time("now-1h", "now")
    for i, (panel_title, kind, targets) in enumerate(panels):
        panel = (timeseries.Panel() if kind == "timeseries" else stat.Panel()).title(panel_title).datasource(PROM)
        panel = panel.grid_pos(GridPos(h=8, w=12, x=(i % 2) * 12, y=(i // 2) * 8))
        for ref, (expr, legend) in zip("ABCDEFGH", targets, strict=False):
            panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
        board = board.with_panel(panel)
    return board.build()


def render(uid: str) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build(uid)) + "\n"


def queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel, expression) for every target of every panel."""
    return [(uid, title, expr) for uid, (_, panels) in DASHBOARDS.items() for title, _, targets in panels
            for expr, _ in targets]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed dashboard differs")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    stale = []
    for uid in DASHBOARDS:
        path = OUT / f"{uid}.json"
        text = render(uid)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"stale dashboards: {', '.join(stale)} (run make dashboards)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
