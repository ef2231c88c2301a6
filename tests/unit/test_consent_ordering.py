"""When issuance may decide a segment entry, and what consent changes close — on plain values."""

from datetime import UTC, datetime, timedelta

from services.issuance import ordering
from services.issuance.ordering import Known, closing, ready
from shared import events as ev
from shared.erasure import stale_for_erased

T0 = datetime(2026, 11, 30, tzinfo=UTC)


def marks(changed, state):
    return ev.ConsentMarks(partition=2, changed=changed, state=state)


def test_an_entry_waits_until_consent_applied_every_decision_published_before_it():
    assert ready(marks(10, 4), Known(changed=10, state=4))
    assert ready(marks(10, 4), Known(changed=11, state=9))
    assert not ready(marks(10, 4), Known(changed=9, state=9))  # consent has not applied offset 9 yet
    assert not ready(marks(10, 4), Known(changed=10, state=3))  # a state published over HTTP not yet read


def test_marks_only_move_forward():
    known = Known(changed=10, state=5).advance(changed=7, state=6)
    assert known == Known(changed=10, state=6)


def test_a_held_entry_expires_after_the_maximum_wait():
    assert not ordering.expired(T0, T0 + timedelta(seconds=29), 30)
    assert ordering.expired(T0, T0 + timedelta(seconds=30), 30)


def test_an_unsent_delivery_is_cancelled_by_a_withdrawal_of_offers_or_of_its_channel():
    base = dict(erased=False, offers_withdrawn=False, channel_withdrawn=False, revoke_on_withdrawal=False)
    assert closing("email", **base | {"offers_withdrawn": True}, unsent=True) == ordering.Closing(
        "consent_withdrawn", "consent_withdrawn")
    assert closing("sms", **base | {"channel_withdrawn": True}, unsent=True) == ordering.Closing(
        "channel_withdrawn", "channel_withdrawn")
    # Already sent: the campaign decides on an offers withdrawal; a channel withdrawal keeps the voucher.
    assert closing("email", **base | {"offers_withdrawn": True}, unsent=False) == ordering.Closing(None, None)
    assert closing("email", **base | {"offers_withdrawn": True, "revoke_on_withdrawal": True},
                   unsent=False) == ordering.Closing("consent_withdrawn", "consent_withdrawn")
    assert closing("email", **base | {"channel_withdrawn": True}, unsent=False) == ordering.Closing(None, None)
    # On-site vouchers have no delivery to cancel; nothing withdrawn closes nothing.
    assert closing("onsite", **base | {"offers_withdrawn": True, "revoke_on_withdrawal": True},
                   unsent=False) == ordering.Closing("consent_withdrawn", None)
    assert closing("email", **base, unsent=True) == ordering.Closing(None, None)


def test_an_erasure_revokes_and_cancels_whatever_was_sent():
    for unsent in (True, False):
        assert closing("push", erased=True, offers_withdrawn=False, channel_withdrawn=False, unsent=unsent,
                       revoke_on_withdrawal=False) == ordering.Closing("customer_erased", "customer_erased")


def test_a_consent_state_written_before_an_erasure_is_stale_and_one_after_it_is_a_returning_customer():
    assert stale_for_erased(T0 - timedelta(seconds=1), T0)
    assert stale_for_erased(T0, T0)
    assert not stale_for_erased(T0 + timedelta(seconds=1), T0)
    assert not stale_for_erased(T0, None)
