"""On the secured three-broker cluster: who may do what is exactly what the registry says, and the
cart story runs end to end with every service logged in as itself, on topics with 3 replicas of
which 2 must have every write."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

from shared import events as ev
from shared import topics
from shared.kafka import send_all, start_producer
from shared.topics import all_topics
from tests.e2e.fleet import Fleet
from tests.e2e.test_consent_wins import campaign, record  # the reference cart campaign, roomy; a shop record
from tests.support import read_topic, wait_for
from tools.demo import dead_letters

pytestmark = pytest.mark.cluster


def consent(cid: str, purpose: str) -> ev.ConsentChanged:
    return ev.ConsentChanged(customer_id=cid, purpose=purpose, granted=True, policy_version="v1", source="test",
                             occurred_at=datetime.now(UTC))


async def produce(kafka, topic: str, event: ev.Event | bytes) -> None:
    """One record; raw bytes where only the broker's answer matters (it authorizes before it reads)."""
    rec = record(kafka, topic, event) if isinstance(event, ev.Event) else (kafka.topic(topic), b"c-acl", event, None)
    producer = await start_producer(kafka, "test")
    try:
        await asyncio.wait_for(send_all(producer, [rec]), 30)
    finally:
        await producer.stop()


def first_read(kafka, topic: str, group: str) -> str:
    """What a consumer in ``group`` meets first on ``topic`` from its start: "record", or the
    broker's error (librdkafka reports an authorization failure; aiokafka only logs it)."""
    from confluent_kafka import Consumer

    consumer = Consumer(kafka.librdkafka_config() | {"group.id": group, "auto.offset.reset": "earliest",
                                                      "enable.auto.commit": False, "log_level": 0})
    consumer.subscribe([kafka.topic(topic)])
    try:
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is None:
                continue
            return "record" if message.error() is None else message.error().name()
        return "nothing"
    finally:
        consumer.close()


async def test_only_what_the_registry_allows(cluster, secured):
    prefix = secured.topic_prefix
    shop, sender = cluster.settings("shop", prefix), cluster.settings("sender", prefix)
    segmentation = cluster.settings("segmentation", prefix)

    # A plaintext client is refused: the client listener speaks TLS and wants a login.
    plain = AIOKafkaAdminClient(bootstrap_servers=secured.bootstrap, request_timeout_ms=5000)
    with pytest.raises(KafkaError):
        await asyncio.wait_for(plain.start(), 30)
    await plain.close()
    # So is a wrong password.
    with pytest.raises(KafkaError):
        await produce(shop.with_user("shop", "not-the-password"), "cart-abandoned", consent("x", "email"))

    # The shop publishes its own events ...
    await produce(shop, "consent-changed", consent("c-acl", "email"))
    # ... but cannot forge a privacy command or a service's output ...
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(shop, "erasure-requested", ev.ErasureRequested(customer_id="c-acl", request_id="r-1",
                                                                      requested_at=datetime.now(UTC)))
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(shop, "consent-state", b'{"forged": true}')
    # ... nor read the codes: only the sender reads delivery-requested.
    await produce(secured, "delivery-requested", b'{"a": "code"}')
    assert await asyncio.to_thread(first_read, shop, "delivery-requested", prefix + "shop-1") == "TOPIC_AUTHORIZATION_FAILED"
    assert await asyncio.to_thread(first_read, sender, "delivery-requested", prefix + "sender-1") == "record"
    assert await asyncio.to_thread(first_read, sender, "consent-state", prefix + "sender-1") == "TOPIC_AUTHORIZATION_FAILED"

    # A service writes what it produces, and nothing else.
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(segmentation, "voucher-issued", b'{"forged": true}')
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(segmentation, "erasure-requested", b'{"forged": true}')
    # ... and joins only its own consumer group.
    await produce(shop, "order-placed", b'{"an": "order"}')
    assert await asyncio.to_thread(first_read, segmentation, "order-placed", prefix + "issuance") \
        == "GROUP_AUTHORIZATION_FAILED"
    assert await asyncio.to_thread(first_read, segmentation, "order-placed", prefix + "segmentation") == "record"


async def test_the_cart_story_on_three_brokers_with_every_service_as_itself(cluster, secured, tmp_path):
    # Every topic has 3 replicas and wants 2 of them in sync.
    admin = AIOKafkaAdminClient(**secured.client_options())
    await admin.start()
    try:
        names = [name for name, _ in all_topics(secured.topic_prefix)]
        described = await admin.describe_topics(names)
        assert {len(p["replicas"]) for d in described for p in d["partitions"]} == {3}
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        isr = {res[3]: {e[0]: e[1] for e in res[4]}["min.insync.replicas"] for r in configs for res in r.resources}
        assert set(isr.values()) == {"2"} and len(isr) == len(names)
    finally:
        await admin.close()

    shop, sender = cluster.settings("shop", secured.topic_prefix), cluster.settings("sender", secured.topic_prefix)
    async with Fleet(secured, tmp_path, **cluster.service_env()) as fleet:
        async with fleet.client("issuance") as client:
            assert (await client.post("/v1/campaigns", json=campaign())).status_code == 201
        cid = "c-cluster-cart"
        producer = await start_producer(shop, "test-shop")
        try:
            await send_all(producer, [record(shop, "consent-changed", consent(cid, p))
                                      for p in ("profiling", "personalized_offers", "email")])
            await wait_for(lambda: fleet.fetchval("issuance", "SELECT count(*) FROM customer_consent "
                                                  "WHERE customer_id = $1 AND personalized_offers", cid),
                           timeout=60, what="the consent at issuance")
            await send_all(producer, [record(shop, "cart-abandoned", ev.CartAbandoned(
                cart_id="k-cluster", customer_id=cid, value=ev.Money(amount=40_000, currency="USD"),
                abandoned_at=datetime.now(UTC)))])
        finally:
            await producer.stop()

        # The sender reads the delivery: the code, opened with the customer's data key.
        async def delivered():
            got = [ev.decode(r.value)[1] for r in await read_topic(sender, sender.topic("delivery-requested"))]
            return [d for d in got if isinstance(d, ev.DeliveryRequested) and d.customer_id == cid]

        (delivery,) = await wait_for(delivered, timeout=60, interval=0.5, what="the voucher's delivery")
        assert delivery.campaign_id == "race-20" and delivery.channel == "email" and delivery.code

        # Analytics counted it, and the shop reads the live counters.
        async def counted():
            got = [ev.decode(r.value)[1] for r in await read_topic(shop, shop.topic("budget-counters"))]
            return [c for c in got if c.campaign_id == "race-20" and c.issued >= 1]

        await wait_for(counted, timeout=60, interval=0.5, what="budget-counters of the campaign")
        # Nothing dead-lettered, and no service was refused anything on the way.
        assert await dead_letters(secured) == 0
    for log in tmp_path.glob("*.log"):
        text = log.read_text(errors="replace")
        assert "AuthorizationFailed" not in text and "authorization" not in text.lower(), log.name


async def test_make_topics_is_idempotent_on_the_cluster_and_reports_drift(secured):
    again = await topics.ensure_topics(secured, secured.topic_prefix, report=lambda *_: None)
    assert set(again.values()) == {"unchanged"}
    said: list[str] = []
    looser = secured.model_copy(update={"min_insync_replicas": 1})
    changed = await topics.ensure_topics(looser, secured.topic_prefix, report=said.append)
    assert set(changed.values()) == {"updated"}
    assert any("min.insync.replicas 2 -> 1" in line for line in said), said
    said.clear()
    fewer = secured.model_copy(update={"replication_factor": 2})  # Kafka cannot change it in place
    await topics.ensure_topics(fewer, secured.topic_prefix, report=said.append)
    assert sum("has 3 replicas, the settings say 2" in line for line in said) == len(again), said[:3]
    # (that run set min.insync.replicas back to 2 as well)
    assert set((await topics.ensure_topics(secured, secured.topic_prefix, report=lambda *_: None)).values()) \
        == {"unchanged"}
