from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from shared import events as ev
from shared.topics import TOPICS, topic


def envelope(data: dict, type_: str = "shop.cart.abandoned.v1", **extra) -> bytes:
    return orjson.dumps({"specversion": "1.0", "id": "e-1", "type": type_, "source": "shop",
                         "time": "2026-11-29T10:00:00Z", "subject": data.get("customer_id"),
                         "datacontenttype": "application/json", "data": data, **extra})


CART = {"cart_id": "c-1", "customer_id": "cust-1", "value": {"amount": 31000, "currency": "USD"},
        "abandoned_at": "2026-11-29T10:00:00+01:00"}


def test_a_valid_envelope_decodes_to_its_model_with_times_in_utc():
    env, event = ev.decode(envelope(CART))
    assert isinstance(event, ev.CartAbandoned)
    assert event.value == ev.Money(amount=31000, currency="USD")
    assert event.abandoned_at == datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
    assert event.abandoned_at.tzinfo == UTC
    assert env.id == "e-1"


def test_unknown_fields_are_tolerated_and_dropped():
    env, event = ev.decode(envelope(CART | {"coupon_hint": "x", "email": "a@b.c"}, traceparent="00-abc"))
    assert not hasattr(event, "email")
    assert "email" not in event.model_dump()


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        ({k: v for k, v in CART.items() if k != "cart_id"}, "invalid_data", "data.cart_id: Field required"),
        (CART | {"value": {"amount": 310.5, "currency": "USD"}}, "invalid_data", "data.value.amount"),
        (CART | {"value": {"amount": 31000, "currency": "usd"}}, "invalid_data", "data.value.currency"),
        (CART | {"abandoned_at": "2026-11-29T10:00:00"}, "invalid_data", "data.abandoned_at"),
        (CART | {"customer_id": "jane@example.com"}, "invalid_data", "data.customer_id"),
        (CART | {"items": [{"sku": "p1", "unit_price": {"amount": 1, "currency": "USD"}, "quantity": 0}]},
         "invalid_data", "data.items[0].quantity"),
        (CART | {"items": [{"sku": "p1", "unit_price": {"amount": 1, "currency": "EUR"}, "quantity": 1}]},
         "invalid_data", "items[0].unit_price.currency EUR differs from value.currency USD"),
    ],
)
def test_a_missing_or_ill_typed_field_is_an_error_naming_the_field(data, reason, detail):
    with pytest.raises(ev.ContractError) as info:
        ev.decode(envelope(data))
    assert info.value.reason == reason
    assert detail in info.value.detail


def test_error_messages_never_echo_the_offending_value():
    with pytest.raises(ev.ContractError) as info:
        ev.decode(envelope(CART | {"customer_id": "jane@example.com"}))
    assert "jane" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "undecodable"),
        (b"[1, 2]", "invalid_envelope"),
        (orjson.dumps({"specversion": "0.3", "id": "x", "type": "t", "source": "s", "time": "2026-01-01T00:00:00Z",
                       "data": {}}), "invalid_envelope"),
        (envelope(CART, type_="shop.cart.abandoned.v9"), "unknown_type"),
        (None, "unexpected_tombstone"),
    ],
)
def test_broken_envelopes_are_refused_with_a_reason(raw, reason):
    with pytest.raises(ev.ContractError) as info:
        ev.decode(raw)
    assert info.value.reason == reason


def test_a_topic_accepts_only_its_own_event_types():
    order = {"order_id": "o1", "customer_id": "cust-1", "total": {"amount": 100, "currency": "USD"},
             "placed_at": "2026-11-29T10:00:00Z"}
    with pytest.raises(ev.ContractError) as info:
        ev.decode(envelope(order, type_="shop.order.placed.v1"), topic("cart-abandoned").events)
    assert info.value.reason == "unexpected_type"


def test_encode_then_decode_round_trips_every_field():
    event = ev.OrderPlaced(order_id="o-9", customer_id="c-9", total=ev.Money(amount=12000, currency="EUR"),
                           items=[ev.LineItem(sku="sku-1", brand="Maison", category="perfume",
                                              unit_price=ev.Money(amount=6000, currency="EUR"), quantity=2)],
                           placed_at=datetime(2026, 5, 1, 12, tzinfo=timezone(timedelta(hours=2))))
    env, back = ev.decode(ev.encode(event, source="test", event_id="id-1"))
    assert back == event
    assert env.subject == "c-9" and env.type == "shop.order.placed.v1" and env.id == "id-1"


def test_birthdays_keep_month_and_day_and_refuse_impossible_days():
    assert ev.Birthday(month=2, day=29).day == 29
    with pytest.raises(ValueError, match="does not exist"):
        ev.Birthday(month=4, day=31)


def test_every_event_type_is_carried_by_exactly_one_topic():
    carried = [cls for t in TOPICS for cls in t.events]
    assert sorted(c.TYPE for c in carried) == sorted(ev.EVENT_TYPES)


def test_every_topic_is_keyed_by_the_key_field_of_its_events():
    for t in TOPICS:
        for cls in t.events:
            if cls is ev.ConsentWatermark:  # placed on its partition explicitly, among the customers' records
                continue
            assert cls.KEY_FIELD == t.key, f"{t.name} is keyed by {t.key} but {cls.__name__} by {cls.KEY_FIELD}"


def test_event_ids_are_distinct_random_version_4_uuids():
    import uuid

    ids = {ev.new_event_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    for i in list(ids)[:2_000]:
        u = uuid.UUID(i)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, i)
