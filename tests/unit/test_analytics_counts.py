"""The counts' deltas (``counters.count_changes``): each new row counts once, an ending moves its
voucher from issued to its state, a rollback takes its redemption out, whichever is seen first."""

from __future__ import annotations

from services.analytics.counters import StreamRows, count_changes


def test_a_voucher_counts_as_issued_until_its_ending_moves_it():
    first = count_changes([("c", "A", "email", None)], [], [], [], [])
    assert first.vouchers == {("c", "A", "email", "issued"): 1} and first.campaigns == {"c"}
    ended = count_changes([], [("c", "expired", ("A", "email"))], [], [], [])
    assert ended.vouchers == {("c", "A", "email", "issued"): -1, ("c", "A", "email", "expired"): 1}


def test_an_ending_seen_before_its_voucher_counts_when_the_voucher_comes():
    early = count_changes([], [("c", "revoked", None)], [], [], [])
    assert early.vouchers == {} and early.campaigns == {"c"}  # the version still moves
    late = count_changes([("c", "A", "sms", "revoked")], [], [], [], [])
    assert late.vouchers == {("c", "A", "sms", "revoked"): 1}


def test_a_redemption_counts_unless_rolled_back_in_either_order():
    live = count_changes([], [], [("c", "A", "email", 800, 9000, False)], [], [])
    assert live.redemptions == {("c", "A", "email"): (1, 800, 9000)}
    undone = count_changes([], [], [], [("c", ("A", "email", 800, 9000))], [])
    assert undone.redemptions == {("c", "A", "email"): (-1, -800, -9000)}
    late = count_changes([], [], [("c", "A", "email", 800, 9000, True)], [("d", None)], [])
    assert late.redemptions == {} and late.campaigns == {"c", "d"}


def test_denials_count_per_reason_and_variant_none_included():
    got = count_changes([], [], [], [], [("c", "holdout", None), ("c", "holdout", None), ("c", "budget_exhausted", "A")])
    assert got.denials == {("c", "holdout", None): 2, ("c", "budget_exhausted", "A"): 1}


def test_the_campaigns_a_batch_touches_are_sorted_for_locking():
    rows = StreamRows(denials=[("e", "z", None, "holdout")], vouchers=[("v", "b", "A", "email", 1, None)],
                      endings=[("v", "a", "expired")], redemptions=[("r", "v", "c", "A", "email", 1, 2, None)],
                      rollbacks=[("r", "c")])
    assert rows.campaign_ids() == ["a", "b", "c", "z"]
