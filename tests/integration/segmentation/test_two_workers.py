"""A second worker in the same group takes over half the partitions, and the results are the same
as with one worker: each consented customer's cart fires once, nobody else's.

The workers run as users run them, each in its own process (``python -m services.segmentation``),
sharing the service's schema."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime

import asyncpg
import httpx

from bench.common import free_port, service_process
from shared import events as ev
from shared.settings import PostgresSettings
from tests.integration.segmentation.conftest import consent, publish
from tests.support import group_members, read_topic, unique, wait_for


def handled(metrics: str, topic: str = "") -> float:
    """Events this worker handled (of one input topic, or of all), from its own /metrics."""
    pattern = r'^voucherstream_segmentation_events_total\{([^}]*)\} (\S+)$'
    return sum(float(n) for labels, n in re.findall(pattern, metrics, re.M) if f'"{topic}' in labels)


async def test_two_worker_processes_split_the_partitions_and_agree_with_one(kafka, tmp_path):
    ports = [free_port(), free_port()]
    env = {"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "SEGMENTATION_SCHEMA_NAME": unique("test_seg2_")}
    async with contextlib.AsyncExitStack() as stack:
        for i, port in enumerate(ports):
            await stack.enter_async_context(service_process(
                "segmentation", env | {"SEGMENTATION_HTTP_PORT": str(port)}, port, tmp_path / f"worker{i}.log"))
        group = kafka.topic_prefix + "segmentation"

        async def both_members():
            state, members = await group_members(kafka.bootstrap, group)
            return state == "Stable" and members == 2

        await wait_for(both_members, timeout=60, interval=0.5, what="a stable group of two workers")
        customers = [f"w-{i}" for i in range(200)]
        consented = customers[::2]
        await publish(kafka, "consent-state", [consent(c) for c in consented])
        client = await stack.enter_async_context(httpx.AsyncClient())

        async def counts(topic: str = ""):
            return [handled((await client.get(f"http://127.0.0.1:{p}/metrics")).text, topic) for p in ports]

        # Kafka orders a partition, not two topics: a cart fetched before its customer's consent is
        # (rightly) dropped, so the carts go out once the consents are in.
        async def consents_in():
            return sum(await counts("consent-state")) >= len(consented)

        await wait_for(consents_in, timeout=30, interval=0.2, what="the consents handled")
        now = datetime.now(UTC)
        await publish(kafka, "cart-abandoned", [
            ev.CartAbandoned(cart_id=f"k-{c}", customer_id=c, value=ev.Money(amount=35_000, currency="USD"),
                             abandoned_at=now) for c in customers])
        records = await read_topic(kafka.bootstrap, kafka.topic("segment-entered"), expect=len(consented), timeout=60)

        async def all_handled():
            got = await counts()
            return got if sum(got) >= len(consented) + len(customers) else None

        per_worker = await wait_for(all_handled, timeout=30, interval=0.5, what="every event handled")

        async def published() -> bool:  # every entry the workers wrote has left their outbox
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value())
            try:
                return await conn.fetchval(f'SELECT count(*) FROM "{env["SEGMENTATION_SCHEMA_NAME"]}".outbox') == 0
            finally:
                await conn.close()

        await wait_for(published, timeout=30, interval=0.2, what="the outbox relayed")
        records = await read_topic(kafka.bootstrap, kafka.topic("segment-entered"), timeout=10)  # to its end
    got = sorted(ev.decode(r.value)[1].customer_id for r in records)
    assert got == sorted(consented)
    assert all(n > 0 for n in per_worker), f"both workers processed events: {per_worker}"
