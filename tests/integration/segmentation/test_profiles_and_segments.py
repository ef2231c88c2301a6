"""Segmentation on the real broker: consent gate, minimal profiles, the three reference segments
once each with their explanation, replay, withdrawal and erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.segmentation import profile as prof
from services.segmentation.engine import partition_of
from shared import events as ev
from tests.integration.segmentation.conftest import consent, kept, profile, publish, running, settings_for
from tests.support import describe_lags, read_topic, reset_group, wait_for

NOW = datetime.now(UTC)


def registered(c, month=None, day=None, channel="email"):
    birthday = {"month": month, "day": day} if month else None
    return ev.CustomerRegistered(customer_id=c, birthday=birthday, preferred_channel=channel, registered_at=NOW)


def order(c, amount, oid, brand="Maison"):
    return ev.OrderPlaced(order_id=oid, customer_id=c, total=ev.Money(amount=amount, currency="USD"), placed_at=NOW,
                          items=[ev.LineItem(sku="p-1", brand=brand, category="perfume", quantity=1,
                                             unit_price=ev.Money(amount=amount, currency="USD"))])


def cart(c, amount, cart_id):
    return ev.CartAbandoned(cart_id=cart_id, customer_id=c, value=ev.Money(amount=amount, currency="USD"),
                            abandoned_at=NOW)


async def entries(kafka, expect=None, timeout=20.0):
    records = await read_topic(kafka.bootstrap, kafka.topic("segment-entered"), expect=expect, timeout=timeout)
    return [ev.decode(r.value)[1] for r in records]


async def test_only_consented_customers_get_minimal_profiles_and_each_segment_fires_once(segmentation, kafka):
    soon = NOW + timedelta(days=3)
    await publish(kafka, "consent-state", [consent("yes-1"), consent("yes-2"), consent("no-1", profiling=False)])
    # Consent first (events of a customer without profiling consent are dropped by design).
    await wait_for(lambda: both_kept(segmentation, "yes-1", "yes-2"), what="consent table")
    await publish(kafka, "customer-registered", [registered("yes-1", soon.month, soon.day), registered("yes-2"),
                                                 registered("no-1", soon.month, soon.day), registered("nobody")])
    # Topics are consumed side by side, in no fixed order across topics: let the registrations land first.
    async def registered_yes_2():
        return ((await profile(segmentation, "yes-2")) or {}).get("preferred_channel") == "email"

    await wait_for(registered_yes_2, what="the registrations")
    await publish(kafka, "order-placed", [order("yes-1", 9_000, "o0"), order("yes-2", 150_000, "o1"), order("yes-2", 60_000, "o2"),
                                          order("yes-2", 10_000, "o3"), order("no-1", 300_000, "o4")])
    await publish(kafka, "cart-abandoned", [cart("yes-2", 31_000, "k1"), cart("yes-2", 31_000, "k1"),
                                            cart("yes-1", 29_000, "k2"), cart("no-1", 90_000, "k3")])
    got = await entries(kafka, expect=3)
    await wait_for(lambda: segmentation.handled >= 16, what="every event handled")
    by = {(e.customer_id, e.segment): e for e in got}
    assert set(by) == {("yes-1", "birthday-week"), ("yes-2", "spend-2000-12m"), ("yes-2", "cart-abandoned-300")}
    birthday = by[("yes-1", "birthday-week")]
    assert birthday.facts["birthday_in_days"] == 3 and birthday.preferred_channel == "email"
    assert by[("yes-2", "spend-2000-12m")].facts["spend_12m_usd"] == 210_000
    assert by[("yes-2", "cart-abandoned-300")].facts == {"cart_id": "k1", "cart_value": 31_000, "cart_currency": "USD",
                                                         "preferred_channel": "email"}
    assert by[("yes-2", "cart-abandoned-300")].caused_by == ["k1"]

    # The tables: profiles only for the consented, holding only the listed fields.
    assert not await kept(segmentation, "no-1") and not await kept(segmentation, "nobody")
    for cid in ("yes-1", "yes-2"):
        p = await profile(segmentation, cid)
        assert prof.only_listed_fields(p), p.keys()
    assert (await profile(segmentation, "yes-2"))["brands"] == {prof.month_key(NOW): {"Maison": 3}}
    dropped = segmentation.metrics.render().decode()
    assert 'voucherstream_segmentation_events_total{outcome="dropped_no_profiling_consent",type="order-placed"} 1.0' in dropped

    api = await segmentation.client.get("/v1/customers/yes-2/segments")
    assert set(api.json()["segments"]) == {"spend-2000-12m", "cart-abandoned-300"}
    assert (await segmentation.client.get("/v1/customers/no-1/segments")).status_code == 404

    # A daily tick on every owned partition re-evaluates birthdays: nothing new (once per year).
    await segmentation.daily()
    await wait_for(lambda: _ticks_handled(segmentation), what="ticks handled")
    # Withdrawal deletes the profile at once.
    await publish(kafka, "consent-state", [consent("yes-1", profiling=False)])
    await wait_for(lambda: gone(segmentation, "yes-1"), what="profile deleted on withdrawal")
    assert len(await entries(kafka)) == 3


async def both_kept(service, *customers) -> bool:
    return all([await kept(service, c) for c in customers])


async def gone(service, customer) -> bool:
    return not await kept(service, customer)


def _ticks_handled(segmentation) -> bool:
    text = segmentation.metrics.render().decode()
    return 'type="segmentation-ticks"' in text


async def test_a_worker_restarted_after_its_group_was_reset_to_the_earliest_offsets_changes_nothing(kafka):
    """Kafka's own consumer-groups tool moves the group back to offset 0; the restarted worker
    resumes after what its database says it applied, emits nothing, and the group's lag is 0."""
    settings = settings_for(kafka)
    async with running(settings, drop=False) as first:
        await publish(kafka, "consent-state", [consent("r-1")])
        await wait_for(lambda: kept(first, "r-1"), what="consent")
        await publish(kafka, "order-placed", [order("r-1", 150_000, "o-r1"), order("r-1", 49_000, "o-r2")])
        await publish(kafka, "cart-abandoned", [cart("r-1", 40_000, "k-r")])
        await entries(kafka, expect=1)
        await wait_for(lambda: first.handled >= 4, what="every event handled")
        before = await profile(first, "r-1")
    reset_group(kafka.bootstrap, settings.group_id)
    assert any(describe_lags(kafka.bootstrap, settings.group_id).values())  # back at the start
    async with running(settings) as second:
        await publish(kafka, "customer-updated", [ev.CustomerUpdated(customer_id="r-1", preferred_channel="sms",
                                                                     updated_at=NOW)])
        await wait_for(lambda: second.handled >= 1, what="the next event")
        await wait_for(lambda: not any(describe_lags(kafka.bootstrap, settings.group_id).values()), timeout=30,
                       interval=1, what="lag 0 on every partition")
        after = await profile(second, "r-1")
        assert second.handled == 1  # the reset offsets were not read again
        assert after == {**before, "preferred_channel": "sms"}
        assert prof.spend_12m(after, "USD", NOW) == 199_000  # just under the 2,000 USD of the gift card
    assert len(await entries(kafka, timeout=3)) == 1


async def test_a_redelivered_batch_changes_nothing_and_emits_nothing(segmentation, kafka):
    """What a crash between the database commit and the Kafka commit redelivers (or a second
    worker during a rebalance): the same offsets again, applied once."""
    from shared.kafka import Message

    def message(topic, offset, event):
        return Message(topic, partition_of(event.key().encode()), offset, event.key(), None, event, 0)

    batch = [message("consent-state", 10**6, consent("rd-1")), message("order-placed", 10**6, order("rd-1", 150_000, "o-a")),
             message("order-placed", 10**6 + 1, order("rd-1", 60_000, "o-b"))]
    await segmentation.handlers.on_batch(segmentation.pool, batch)
    first = await profile(segmentation, "rd-1")
    await segmentation.handlers.on_batch(segmentation.pool, batch)
    await segmentation.handlers.on_batch(segmentation.pool, batch[2:])
    assert await profile(segmentation, "rd-1") == first
    assert prof.spend_12m(first, "USD", NOW) == 210_000
    assert segmentation.metrics.registry.get_sample_value(
        "voucherstream_segmentation_already_applied_total", {"type": "order-placed"}) == 3
    async with segmentation.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE key = 'rd-1'::bytea") <= 1


async def test_erasure_deletes_the_profile_and_is_confirmed(segmentation, kafka):
    await publish(kafka, "consent-state", [consent("e-1")])
    await wait_for(lambda: kept(segmentation, "e-1"), what="consent")
    await publish(kafka, "order-placed", [order("e-1", 1000, "o-e")])
    await wait_for(lambda: profile(segmentation, "e-1"), what="profile")
    await publish(kafka, "erasure-requested", [ev.ErasureRequested(request_id="r1", customer_id="e-1",
                                                                   requested_at=NOW)])
    done = ev.decode((await read_topic(kafka.bootstrap, kafka.topic("erasure-completed"), expect=1))[0].value)[1]
    assert done.service == "segmentation" and done.request_id == "r1"
    assert not await kept(segmentation, "e-1")


async def test_a_malformed_event_is_dead_lettered_and_the_agent_keeps_going(segmentation, kafka):
    from shared.kafka import send_all, start_producer

    await publish(kafka, "consent-state", [consent("m-1")])
    await wait_for(lambda: kept(segmentation, "m-1"), what="consent")
    producer = await start_producer(kafka, "shop")
    await send_all(producer, [(kafka.topic("order-placed"), b"m-1", b'{"specversion": "1.0"', None)])
    await producer.stop()
    await publish(kafka, "cart-abandoned", [cart("m-1", 50_000, "k-m")])
    dead = await read_topic(kafka.bootstrap, kafka.topic("order-placed.dlq"), expect=1)
    assert dict(dead[0].headers)["dlq.reason"] == b"undecodable"
    assert [e.customer_id for e in await entries(kafka, expect=1)] == ["m-1"]


async def test_an_event_on_the_wrong_partition_is_dead_lettered_with_its_reason(segmentation, kafka):
    from services.segmentation.engine import partition_of
    from shared.kafka import start_producer

    await publish(kafka, "consent-state", [consent("wp-1")])
    wrong = (partition_of(b"wp-1") + 1) % 6
    producer = await start_producer(kafka, "shop")
    await (await producer.send(kafka.topic("cart-abandoned"), key=b"wp-1",
                               value=ev.encode(cart("wp-1", 50_000, "k-wp"), source="shop"), partition=wrong))
    await producer.stop()
    dead = await read_topic(kafka.bootstrap, kafka.topic("cart-abandoned.dlq"), expect=1)
    assert dict(dead[0].headers)["dlq.reason"] == b"wrong_partition"
