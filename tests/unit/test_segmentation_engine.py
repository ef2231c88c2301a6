"""The batch decisions of segmentation, on plain values: consent gates everything, withdrawal and
erasure forget, triggers fire once, ticks reach only their partition's customers."""

from datetime import UTC, datetime

from services.segmentation import engine
from services.segmentation.engine import Input, partition_of
from shared import events as ev
from tests.unit.test_segmentation_rules import NOW, RULES, order


def consent(cid, granted=True, at=NOW):
    return Input("consent-state", partition_of(cid.encode()), cid, ev.ConsentState(
        customer_id=cid, updated_at=at, purposes={
            ev.Purpose.PROFILING: ev.PurposeState(granted=granted, since=at, policy_version="v1")}))


def cart(cid, value, cart_id):
    return Input("cart-abandoned", partition_of(cid.encode()), cid, ev.CartAbandoned(
        cart_id=cart_id, customer_id=cid, value=ev.Money(amount=value, currency="USD"), abandoned_at=NOW))


def spend(cid, amount, oid):
    e = order(amount, order_id=oid).model_copy(update={"customer_id": cid, "placed_at": NOW})
    return Input("order-placed", partition_of(cid.encode()), cid, e)


def test_without_profiling_consent_nothing_is_kept_and_the_event_is_counted_as_dropped():
    out = engine.apply_batch({}, [cart("c1", 40_000, "k1"), spend("c1", 5000, "o1")], RULES, NOW)
    assert not out.changed and not out.emit
    assert out.counts[("cart-abandoned", "dropped_no_profiling_consent")] == 1


def test_consent_then_a_big_cart_in_one_batch_enters_the_segment_once():
    out = engine.apply_batch({}, [consent("c1"), cart("c1", 40_000, "k1"), cart("c1", 40_000, "k1")], RULES, NOW)
    assert [(t, e.segment, e.trigger_key) for t, e in out.emit] == [
        ("segment-entered", "cart-abandoned-300", "cart-abandoned-300:k1")]
    assert out.customers["c1"].profile["emitted"] == ["cart-abandoned-300:k1"]
    assert out.changed == {"c1"}


def test_a_trigger_already_emitted_in_an_earlier_batch_is_not_emitted_again():
    first = engine.apply_batch({}, [consent("c1"), cart("c1", 40_000, "k1")], RULES, NOW)
    again = engine.apply_batch({"c1": first.customers["c1"]}, [cart("c1", 40_000, "k1")], RULES, NOW)
    assert not again.emit


def test_spend_crossing_2000_usd_enters_the_loyalty_segment_with_its_facts():
    out = engine.apply_batch({}, [consent("c1"), spend("c1", 150_000, "o1"), spend("c1", 49_999, "o2")], RULES, NOW)
    assert not out.emit  # 1,999.99 USD: just under
    out = engine.apply_batch(out.customers, [spend("c1", 1, "o3")], RULES, NOW)
    (topic, entered), = out.emit
    assert entered.segment == "spend-2000-12m" and entered.facts["spend_12m_usd"] == 200_000
    assert entered.caused_by == ["o3"]


def test_withdrawal_and_erasure_forget_the_customer_and_erasure_is_confirmed():
    kept = engine.apply_batch({}, [consent("c1"), spend("c1", 1000, "o1"), consent("c2")], RULES, NOW).customers
    erase = Input("erasure-requested", partition_of(b"c2"), "c2",
                  ev.ErasureRequested(request_id="r1", customer_id="c2", requested_at=NOW))
    out = engine.apply_batch(kept, [consent("c1", granted=False), erase], RULES, NOW)
    assert not out.customers["c1"].kept and out.customers["c1"].profile is None
    assert not out.customers["c2"].kept and out.changed == {"c1", "c2"}
    assert [(t, e.request_id) for t, e in out.emit] == [("erasure-completed", "r1")]


def test_a_tombstone_forgets_and_an_unknown_customer_s_tombstone_changes_nothing():
    kept = engine.apply_batch({}, [consent("c1")], RULES, NOW).customers
    out = engine.apply_batch(kept, [Input("consent-state", 0, "c1", None), Input("consent-state", 0, "zz", None)],
                             RULES, NOW)
    assert out.changed == {"c1"} and out.counts[("consent-state", "tombstone")] == 2


def test_a_tick_evaluates_birthdays_of_its_partition_only():
    soon = datetime(2026, 12, 1, tzinfo=UTC)
    people = [f"b{i}" for i in range(12)]
    inputs = [x for c in people for x in (consent(c), Input("customer-registered", partition_of(c.encode()), c,
              ev.CustomerRegistered(customer_id=c, birthday={"month": soon.month, "day": soon.day}, registered_at=NOW)),
              spend(c, 1000, f"o-{c}"))]  # the birthday offer needs a favourite brand
    start = engine.apply_batch({}, inputs, RULES, datetime(2026, 11, 20, tzinfo=UTC))  # 11 days before
    assert not start.emit
    p = partition_of(b"b0")
    tick = Input("segmentation-ticks", p, "tick-0", ev.SegmentationTick(partition_key=f"tick-{p}", partition=p, at=NOW))
    out = engine.apply_batch(start.customers, [tick], RULES, NOW)
    assert sorted(e.customer_id for _, e in out.emit) == sorted(c for c in people if partition_of(c.encode()) == p)


def test_an_event_on_another_partition_than_its_customer_s_breaks_the_contract():
    import pytest

    from shared.topics import check_partition

    cart = ev.CartAbandoned(customer_id="c1", cart_id="k1", value=ev.Money(amount=1, currency="USD"),
                            abandoned_at=NOW)
    check_partition(partition_of(b"c1"), "c1", cart)
    check_partition(5, "tick-5", ev.SegmentationTick(partition_key="tick-5", partition=5, at=NOW))
    check_partition(5, "watermark-5", ev.ConsentWatermark(partition_key="watermark-5", partition=5, next_offset=0,
                                                          at=NOW))
    with pytest.raises(ev.ContractError) as err:
        check_partition((partition_of(b"c1") + 1) % 6, "c1", cart)
    assert err.value.reason == "wrong_partition"
    with pytest.raises(ev.ContractError):
        check_partition((partition_of(b"c1") + 1) % 6, "c1", None)  # a tombstone is a customer's too


def test_a_batch_is_interleaved_by_record_time_and_each_partition_keeps_its_order():
    from dataclasses import dataclass

    @dataclass
    class M:
        topic: str
        partition: int
        offset: int
        timestamp_ms: int

    carts = [M("cart-abandoned", 1, 0, 30), M("cart-abandoned", 1, 1, 10)]  # the log's order wins in a partition
    consents = [M("consent-state", 1, 7, 5), M("consent-state", 1, 8, 20)]
    got = engine.in_time_order(carts + consents)
    assert [(m.topic, m.offset) for m in got] == [("consent-state", 7), ("consent-state", 8),
                                                  ("cart-abandoned", 0), ("cart-abandoned", 1)]


def test_a_stale_consent_state_of_an_erased_customer_does_not_bring_them_back_but_a_new_one_does():
    from datetime import timedelta

    erase = Input("erasure-requested", partition_of(b"c3"), "c3",
                  ev.ErasureRequested(request_id="r3", customer_id="c3", requested_at=NOW))
    before = consent("c3", at=NOW - timedelta(minutes=5))  # written before the erasure, re-published after it
    out = engine.apply_batch({}, [erase, before, cart("c3", 40_000, "k3")], RULES, NOW)
    assert out.newly_erased == {"c3": NOW}
    assert "c3" not in out.changed and [t for t, _ in out.emit] == ["erasure-completed"]
    assert out.counts[("consent-state", "stale_for_erased")] == 1
    # A later batch knows the erasure from the store; the customer comes back only by consenting again.
    again = engine.apply_batch({}, [before], RULES, NOW, erased={"c3": NOW})
    assert not again.changed
    back = engine.apply_batch({}, [consent("c3", at=NOW + timedelta(minutes=1)), cart("c3", 40_000, "k4")], RULES,
                              NOW, erased={"c3": NOW})
    assert back.customers["c3"].kept and len(back.emit) == 1


def test_consent_watermarks_on_consent_state_are_counted_and_change_nothing():
    mark = Input("consent-state", 2, "watermark-2",
                 ev.ConsentWatermark(partition_key="watermark-2", partition=2, next_offset=9, at=NOW))
    out = engine.apply_batch({}, [mark], RULES, NOW)
    assert not out.changed and not out.emit and out.counts[("consent-state", "watermark")] == 1
