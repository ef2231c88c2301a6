"""Segmentation through crashes and failures: a worker killed with SIGKILL at random points while
orders flow counts every order once (its state and its offsets commit together); a database
failure under a handler is retried, never dead-lettered; and afterwards Kafka's own
consumer-groups tool shows lag 0 on every partition, consent-state included."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections import defaultdict
from datetime import UTC, datetime

import asyncpg

from bench.common import ROOT, free_port
from services.segmentation import profile as prof
from shared import events as ev
from shared.kafka import start_producer
from shared.settings import PostgresSettings
from tests.integration.segmentation.conftest import consent, kept, publish, running, settings_for
from tests.support import describe_lags, read_topic, unique, wait_for


class Worker:
    """``python -m services.segmentation`` as its own process, to be killed with SIGKILL."""

    def __init__(self, env: dict[str, str], log_path) -> None:
        self.env, self.log_path, self.proc = env, log_path, None

    async def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.segmentation", cwd=ROOT,
                env=os.environ | {"PYTHONPATH": str(ROOT)} | self.env, stdout=out, stderr=out)

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 60)


async def test_every_order_counts_once_through_kill_9_at_random_points(kafka, tmp_path):
    schema = unique("test_seg_kill_")
    port = free_port()
    env = {"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "SEGMENTATION_SCHEMA_NAME": schema,
           "SEGMENTATION_HTTP_PORT": str(port), "SEGMENTATION_LOG_LEVEL": "WARNING",
           "VOUCHERSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000", "VOUCHERSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
           "VOUCHERSTREAM_KAFKA_MAX_BATCH": "50"}  # small batches: more commits to land a kill between
    rng = random.Random(11)
    customers = [f"k9-{i}" for i in range(40)]
    await publish(kafka, "consent-state", [consent(c) for c in customers])
    worker = Worker(env, tmp_path / "segmentation.log")
    await worker.start()

    async def consents_applied():  # orders of a customer without consent are (rightly) dropped
        try:
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(), server_settings={"search_path": schema})
        except OSError:
            return False
        try:
            return await conn.fetchval("SELECT count(*) FROM customers") == len(customers)
        except asyncpg.UndefinedTableError:
            return False
        finally:
            await conn.close()

    await wait_for(consents_applied, timeout=60, interval=0.2, what="the consents applied")
    spent: dict[str, int] = defaultdict(int)
    stop = asyncio.Event()

    async def shop() -> None:
        producer = await start_producer(kafka, "shop")
        try:
            n = 0
            while not stop.is_set():
                for _ in range(20):
                    c = rng.choice(customers)
                    amount = rng.randint(1, 500) * 100
                    order = ev.OrderPlaced(order_id=f"o-{n}", customer_id=c, total=ev.Money(amount=amount, currency="USD"),
                                           placed_at=datetime.now(UTC))
                    await producer.send(kafka.topic("order-placed"), key=c.encode(), value=ev.encode(order, source="shop"))
                    spent[c] += amount
                    n += 1
                await producer.flush()
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    orders = asyncio.create_task(shop())
    kills = 0
    try:
        for _ in range(4):
            await asyncio.sleep(rng.uniform(2.5, 5.0))  # the worker joins, catches up, works: then dies
            await worker.kill()
            kills += 1
            await worker.start()
        await asyncio.sleep(3)
        stop.set()
        await orders
        group = kafka.topic_prefix + "segmentation"

        async def no_lag():
            lags = describe_lags(kafka.bootstrap, group)
            return lags if lags and not any(lags.values()) else None

        lags = await wait_for(no_lag, timeout=120, interval=1, what="lag 0 on every partition")
        assert {kafka.topic("consent-state"), kafka.topic("order-placed")} <= {t for t, _ in lags}
        conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(), server_settings={"search_path": schema})
        try:
            rows = {r["customer_id"]: r["profile"] for r in await conn.fetch("SELECT customer_id, profile FROM customers")}
        finally:
            await conn.close()
        now = datetime.now(UTC)
        got = {c: prof.spend_12m(json.loads(p) if p else {}, "USD", now) for c, p in rows.items()}
        assert kills == 4 and sum(spent.values()) > 0
        assert got == {c: spent.get(c, 0) for c in customers}
    finally:
        stop.set()
        await worker.stop()
        conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value())
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
    assert "Traceback" not in (tmp_path / "segmentation.log").read_text()


async def test_a_database_failure_under_the_handler_is_retried_not_dead_lettered(kafka):
    async with running(settings_for(kafka)) as service:
        dsn = PostgresSettings().dsn.get_secret_value()
        blocker, watcher = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute(f"LOCK TABLE {service.settings.db_schema}.customers IN ACCESS EXCLUSIVE MODE")
            await publish(kafka, "consent-state", [consent("tf-1")])

            async def waiting_backend():  # the handler's load, not the gauges' count, waits on the lock
                # (from another connection: a transaction sees one snapshot of pg_stat_activity)
                return await watcher.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'segmentation'"
                    " AND wait_event_type = 'Lock' AND query LIKE '%profiling_since, profile::text AS profile%'")

            pid = await wait_for(waiting_backend, timeout=30, what="the handler waiting on the table")
            assert await watcher.fetchval("SELECT pg_terminate_backend($1)", pid)  # its connection dies mid-batch
            await tx.rollback()
        finally:
            await blocker.close()
            await watcher.close()
        await wait_for(lambda: kept(service, "tf-1"), timeout=30, what="the consent applied after the retry")
        retries = service.metrics.handler_retries.collect()[0].samples
        assert sum(s.value for s in retries) >= 1
        assert await read_topic(kafka.bootstrap, kafka.topic("consent-state.dlq"), timeout=2) == []
