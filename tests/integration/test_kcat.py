"""Checked with Debian's kcat, a Kafka client nobody here wrote: the registry's topics exist with
their partition counts, and what a real shop publishes is handled or dead-lettered."""

from __future__ import annotations

import asyncio
import re

import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared import topics
from shared.consumer import BatchConsumer
from shared.kafka import start_producer
from shared.metrics import Metrics
from tests.support import kcat, wait_for


def test_kcat_lists_every_registry_topic_with_its_partition_count(kafka):
    listing = kcat("-b", kafka.bootstrap, "-L")
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r'topic "([^"]+)" with (\d+) partitions', listing)}
    for name, spec in topics.all_topics(kafka.topic_prefix):
        assert found.get(name) == spec.partitions, name


async def test_ensure_topics_is_idempotent_and_repairs_drifted_config(kafka):
    again = await topics.ensure_topics(kafka.bootstrap, kafka.topic_prefix, report=lambda *_: None)
    assert set(again.values()) == {"unchanged"}
    name = kafka.topic("order-placed")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()

    async def retention() -> str:
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        return {e[0]: e[1] for e in resp.resources[0][4]}["retention.ms"]

    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                                  configs={"cleanup.policy": "delete", "retention.ms": "-1"})])
        await wait_for(lambda: _is(retention(), "-1"), what="the drift to show")  # configs apply asynchronously
        repaired = await topics.ensure_topics(kafka.bootstrap, kafka.topic_prefix, report=lambda *_: None)
        assert repaired[name] == "updated"
        await wait_for(lambda: _is(retention(), str(7 * topics.DAY_MS)), what="the repaired retention")
    finally:
        await admin.close()


async def _is(value, expected) -> bool:
    return (await value) == expected


async def test_a_shop_publishing_with_kcat_gets_the_valid_event_handled_and_the_malformed_line_dead_lettered(kafka):
    topic = kafka.topic("cart-abandoned")
    valid = orjson.dumps({
        "specversion": "1.0", "id": "kcat-1", "type": "shop.cart.abandoned.v1", "source": "shop-php",
        "time": "2026-11-29T10:00:00Z", "subject": "cust-42", "datacontenttype": "application/json",
        "data": {"cart_id": "cart-1", "customer_id": "cust-42", "value": {"amount": 32000, "currency": "USD"},
                 "abandoned_at": "2026-11-29T09:59:00Z"}})
    malformed = b'{"specversion": "1.0", "id": "kcat-2", "type": "shop.cart.abandoned.v1", oops'
    # One message per line, key and value split by '|', exactly as a shell script of a shop would.
    kcat("-b", kafka.bootstrap, "-P", "-t", topic, "-K", "|", input=b"cust-42|" + valid + b"\ncust-42|" + malformed + b"\n")

    seen = []

    async def handler(batch):
        seen.extend(batch)

    producer = await start_producer(kafka, "test")
    loop = BatchConsumer(settings=kafka, group_id=kafka.topic_prefix + "seg", topics=["cart-abandoned"],
                         handler=handler, producer=producer, metrics=Metrics("test"))
    task = asyncio.create_task(loop.run())
    try:
        await wait_for(lambda: seen, what="the valid event")
        out = await wait_for(lambda: kcat("-b", kafka.bootstrap, "-C", "-t", kafka.topic("cart-abandoned.dlq"),
                                          "-o", "beginning", "-e", "-q", "-f", "%k\t%h\t%s\n").strip(),
                             what="a dead letter", interval=0.5)
    finally:
        loop.stop()
        await asyncio.wait_for(task, 20)
        await producer.stop()
    assert [m.envelope.id for m in seen] == ["kcat-1"]
    assert seen[0].event.value.amount == 32000
    key, headers, value = out.split("\t", 2)
    assert key == "cust-42"
    assert "dlq.reason=undecodable" in headers
    assert f"dlq.source.topic={topic}" in headers
    assert value.endswith("oops")
