"""Sealing an event's personal fields under its customer's data key (pure: no key store)."""

from __future__ import annotations

import os

import orjson
import pytest

from shared import events as ev
from shared.datakeys import DataKey


def delivery(customer: str = "c-1") -> ev.DeliveryRequested:
    return ev.DeliveryRequested(voucher_id="v-1", campaign_id="cart-20", customer_id=customer, channel="email",
                                code="SAVE-ABCD-1234", offer={"kind": "fixed_amount", "amount": {"amount": 2000,
                                                                                                  "currency": "USD"}},
                                expires_at="2030-01-01T00:00:00Z")


KEY = DataKey("k1", os.urandom(32))


def test_personal_fields_leave_data_and_come_back_with_the_key():
    value = ev.encode(delivery(), source="t", data_key=KEY)
    raw = orjson.loads(value)
    assert b"SAVE-ABCD-1234" not in value and set(raw["data"]) == {"voucher_id", "campaign_id", "customer_id",
                                                                    "channel", "expires_at"}
    assert raw["datakey"] == "k1" and ev.data_key_id(value) == "k1"
    _, back = ev.decode(value, keys={"k1": KEY.key}.get)
    assert back == delivery()
    assert orjson.loads(ev.opened(value, {"k1": KEY.key}.get))["data"]["code"] == "SAVE-ABCD-1234"


def test_without_a_key_an_event_is_not_sealed_and_events_without_personal_fields_never_are():
    assert ev.data_key_id(ev.encode(delivery(), source="t")) is None
    done = ev.ErasureCompleted(request_id="r-1", customer_id="c-1", service="issuance",
                               completed_at="2026-01-01T00:00:00Z")
    assert ev.data_key_id(ev.encode(done, source="t", data_key=KEY)) is None


def test_a_destroyed_key_is_erased_not_a_contract_breach():
    value = ev.encode(delivery(), source="t", data_key=KEY)
    with pytest.raises(ev.Erased):
        ev.decode(value, keys=lambda key_id: None)
    assert ev.opened(value, lambda key_id: None) == value  # stays as it is


def test_sealed_fields_do_not_open_under_another_key_or_on_another_customer_s_record():
    value = ev.encode(delivery(), source="t", data_key=KEY)
    with pytest.raises(ev.ContractError, match="unsealable"):
        ev.decode(value, keys=lambda key_id: os.urandom(32))
    moved = orjson.loads(value)
    moved["subject"] = moved["data"]["customer_id"] = "c-2"  # bound to the customer it was sealed for
    with pytest.raises(ev.ContractError, match="unsealable"):
        ev.decode(orjson.dumps(moved), keys={"k1": KEY.key}.get)
    with pytest.raises(ev.ContractError, match="sealed"):
        ev.decode(value)  # no keys given: a clear error, never a silent half event


def test_every_personal_field_is_a_field_of_its_event_and_never_the_key():
    for model in ev.EVENT_TYPES.values():
        assert set(model.PERSONAL) <= set(model.model_fields), model.TYPE
        assert model.KEY_FIELD not in model.PERSONAL


def test_sealed_fields_are_bound_to_the_customer_data_names_not_to_the_subject():
    value = orjson.loads(ev.encode(delivery(), source="t", data_key=KEY))
    value["data"]["customer_id"] = "c-2"  # the subject still says c-1: the consumer checks data against the key
    with pytest.raises(ev.ContractError, match="unsealable"):
        ev.decode(orjson.dumps(value), keys={"k1": KEY.key}.get)
