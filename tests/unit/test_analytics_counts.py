"""The campaigns a consumed batch holds while it stores its rows (their counts are kept by
triggers; tests/integration/analytics/test_kept_counts.py)."""

from __future__ import annotations

from services.analytics.counters import StreamRows


def test_the_campaigns_a_batch_touches_are_sorted_for_locking():
    rows = StreamRows(denials=[("e", "z", None, "holdout")], vouchers=[("v", "b", "A", "email", 1, None)],
                      endings=[("v", "a", "expired")], redemptions=[("r", "v", "c", "A", "email", 1, 2, None)],
                      rollbacks=[("r", "c")])
    assert rows.campaign_ids() == ["a", "b", "c", "z"]
