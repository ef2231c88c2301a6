"""Crashes on the real broker and database: a consumer killed between its database commit and its
offset commit, and an outbox relay stopped mid-way."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from shared import events as ev
from shared.kafka import send_all, start_producer
from shared.metrics import Metrics
from shared.outbox import OutboxRecord, enqueue
from shared.relay import OutboxRelay
from tests.support import read_topic, wait_for

ROOT = Path(__file__).resolve().parents[2]


def consent(customer: str, i: int) -> ev.ConsentChanged:
    return ev.ConsentChanged(customer_id=customer, purpose="email", granted=i % 2 == 0, policy_version=f"v{i}",
                             source="test", occurred_at=datetime.now(UTC))


async def test_a_consumer_killed_before_its_commit_rereads_the_batch_and_the_write_stays_single(kafka, pg_schema):
    schema, pool = pg_schema
    await pool.execute("CREATE TABLE seen (event_id text PRIMARY KEY, customer_id text NOT NULL)")
    await pool.execute("CREATE TABLE deliveries (n int NOT NULL); INSERT INTO deliveries VALUES (0)")
    topic = kafka.topic("consent-changed")
    producer = await start_producer(kafka, "test")
    await send_all(producer, [(topic, f"c-{i % 7}".encode(), ev.encode(consent(f"c-{i % 7}", i), source="test"), None)
                              for i in range(60)])
    group = kafka.topic_prefix + "crashy"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.crashy_consumer", "--prefix", kafka.topic_prefix,
        "--schema", schema, "--group", group, "--hang-after-commit",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(ROOT)})
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.startswith(b"COMMITTED"), line
    first_batch = int(line.split()[1])
    os.kill(proc.pid, signal.SIGKILL)  # after the database commit, before the offset commit
    await proc.wait()
    assert await pool.fetchval("SELECT count(*) FROM seen") == first_batch

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.crashy_consumer", "--prefix", kafka.topic_prefix,
        "--schema", schema, "--group", group,
        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        await wait_for(lambda: pool.fetchval("SELECT count(*) FROM seen"), timeout=30)
        await wait_for(lambda: _equals(pool.fetchval("SELECT count(*) FROM seen"), 60), timeout=30,
                       what="all 60 events written")
        deliveries = await wait_for(lambda: _at_least(pool.fetchval("SELECT n FROM deliveries"), 60 + first_batch),
                                    timeout=30, what="the killed batch redelivered")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
        await producer.stop()
    # The killed batch was delivered twice, yet every event is stored exactly once.
    assert deliveries >= 60 + first_batch
    assert await pool.fetchval("SELECT count(*) FROM seen") == 60


async def _equals(value, expected):
    return (await value) == expected


async def _at_least(value, expected):
    got = await value
    return got if got >= expected else None


class _CountingProducer:
    """Delegates to the real producer; sets ``tripped`` after ``after`` records were handed over."""

    def __init__(self, producer, after: int) -> None:
        self.producer, self.after, self.sent = producer, after, 0
        self.tripped = asyncio.Event()

    async def send_batches(self, topic, partition, records):
        records = list(records)
        self.sent += len(records)
        if self.sent >= self.after:
            self.tripped.set()
        return await self.producer.send_batches(topic, partition, records)

    async def partitions_for(self, topic):
        return await self.producer.partitions_for(topic)


async def test_the_outbox_relay_publishes_every_row_once_and_in_order_across_a_stop_mid_way(kafka, pg_schema):
    schema, pool = pg_schema
    keys = [f"cust-{k}" for k in range(25)]
    total = 3000
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, [OutboxRecord("erasure-requested", keys[i % len(keys)], f"{i}".encode())
                             for i in range(total)])
    producer = await start_producer(kafka, "test")

    # First relay, with its own producer: stopped (cancelled, like a crash) while its round is in
    # flight. Its producer is then closed, so whatever it had sent lands before the second starts,
    # as it would for a process that died.
    first_producer = await start_producer(kafka, "test-first")
    counting = _CountingProducer(first_producer, after=1200)
    first = OutboxRelay(pool=pool, producer=counting, kafka=kafka, schema=schema, metrics=Metrics("t"),
                        batch_size=500)
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(counting.tripped.wait(), 30)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await first_producer.stop()
    unsent_after_stop = await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    assert 0 < unsent_after_stop < total

    # Second relay: recovers and finishes.
    metrics = Metrics("t2")
    second = OutboxRelay(pool=pool, producer=producer, kafka=kafka, schema=schema, metrics=metrics,
                         batch_size=500)
    task = asyncio.create_task(second.run())
    await wait_for(lambda: _equals(pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"), 0),
                   timeout=30, what="every row marked sent")
    second.stop()
    await asyncio.wait_for(task, 10)
    await producer.stop()

    records = await read_topic(kafka.bootstrap, kafka.topic("erasure-requested"), expect=total)
    records = await read_topic(kafka.bootstrap, kafka.topic("erasure-requested"))  # and nothing more
    ids = [int(dict(r.headers)["outbox.id"]) for r in records]
    assert len(ids) == total, f"{len(ids) - len(set(ids))} duplicates"
    assert len(set(ids)) == total
    per_key = defaultdict(list)
    for r in records:
        per_key[r.key].append(int(r.value))
    for key, values in per_key.items():
        assert values == sorted(values), f"{key} out of order"
    # The round the first relay never finished was on Kafka already: recovered, not re-sent.
    assert second.recovered > 0
    assert second.published + second.recovered == unsent_after_stop


async def test_migrations_apply_once_and_an_edited_one_is_refused(postgres_settings, pg_schema, tmp_path):
    from shared import db

    schema, pool = pg_schema
    (tmp_path / "001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    migrations = db.discover(("shared", db.SHARED_MIGRATIONS), ("svc", tmp_path))
    assert await db.migrate(pool, schema, migrations) == ["svc/001_things"]
    assert await db.migrate(pool, schema, migrations) == []
    # Two instances starting together: each migration still runs once.
    (tmp_path / "002_more.sql").write_text("CREATE TABLE more_things (id int PRIMARY KEY);")
    migrations = db.discover(("shared", db.SHARED_MIGRATIONS), ("svc", tmp_path))
    results = await asyncio.gather(db.migrate(pool, schema, migrations), db.migrate(pool, schema, migrations))
    assert sorted(results, key=len) == [[], ["svc/002_more"]]
    (tmp_path / "001_things.sql").write_text("CREATE TABLE things (id bigint PRIMARY KEY);")
    try:
        await db.migrate(pool, schema, db.discover(("svc", tmp_path)))
    except RuntimeError as exc:
        assert "was edited after it was applied" in str(exc)
    else:
        raise AssertionError("an edited migration was accepted")


async def test_a_repeatable_migration_runs_after_every_numbered_one_and_again_when_it_changes(pg_schema, tmp_path):
    from shared import db

    schema, pool = pg_schema
    lib, svc = tmp_path / "lib", tmp_path / "svc"
    lib.mkdir()
    svc.mkdir()
    # A SQL function's body is checked when it is created: the table must exist by then.
    (lib / "R__answer.sql").write_text(
        "CREATE OR REPLACE FUNCTION answer() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM things $$;")
    (svc / "001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY); INSERT INTO things VALUES (1);")
    folders = (("lib", lib), ("svc", svc))
    assert await db.migrate(pool, schema, db.discover(*folders)) == ["svc/001_things", "lib/R__answer"]
    assert await db.migrate(pool, schema, db.discover(*folders)) == []
    assert await pool.fetchval("SELECT answer()") == 1
    (svc / "002_more.sql").write_text("INSERT INTO things VALUES (2);")
    assert await db.migrate(pool, schema, db.discover(*folders)) == ["svc/002_more"]
    (lib / "R__answer.sql").write_text(
        "CREATE OR REPLACE FUNCTION answer() RETURNS bigint LANGUAGE sql AS $$ SELECT sum(id) FROM things $$;")
    migrations = db.discover(*folders)
    results = await asyncio.gather(db.migrate(pool, schema, migrations), db.migrate(pool, schema, migrations))
    assert sorted(results, key=len) == [[], ["lib/R__answer"]]
    assert await pool.fetchval("SELECT answer()") == 3


async def test_only_one_relay_per_schema_publishes_at_a_time(kafka, pg_schema):
    schema, pool = pg_schema
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, [OutboxRecord("erasure-requested", "cust-1", b"1")])
    producer = await start_producer(kafka, "test")
    relay = OutboxRelay(pool=pool, producer=producer, kafka=kafka, schema=schema, metrics=Metrics("t"))
    try:
        async with pool.acquire() as other, other.transaction():  # another instance, mid-round
            await other.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"outbox:{schema}")
            assert await relay.publish_once() == 0
            assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
        assert await relay.publish_once() == 1
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
        # While it holds the lock, another relay of the schema stands by.
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, [OutboxRecord("erasure-requested", "cust-1", b"2")])
        standby = OutboxRelay(pool=pool, producer=producer, kafka=kafka, schema=schema, metrics=Metrics("t2"))
        assert await standby.publish_once() == 0
        await relay.close()  # the relaying instance goes away
        assert await standby.publish_once() == 1
        await standby.close()
    finally:
        await producer.stop()


async def test_rows_committed_out_of_id_order_are_each_published_once(kafka, pg_schema):
    """A round reads above a mark. An id missing above it is waited for: a transaction that commits
    after a later id was relayed is found by the next round; one open longer than ``full_pass_s``
    (the mark has moved past it) by the next round that reads from the start."""
    schema, pool = pg_schema
    producer = await start_producer(kafka, "test")
    relay = OutboxRelay(pool=pool, producer=producer, kafka=kafka, schema=schema, metrics=Metrics("t"),
                        full_pass_s=60)

    async def enqueued(conn, value: bytes) -> None:
        await enqueue(conn, [OutboxRecord("erasure-requested", f"cust-{value.decode()}", value)])

    try:
        async with pool.acquire() as slow, pool.acquire() as conn:
            straggling = slow.transaction()
            await straggling.start()
            await enqueued(slow, b"brief")  # the lower id, committed second
            await enqueued(conn, b"first")
            assert await relay.publish_once() == 1
            await straggling.commit()
            assert await relay.publish_once() == 1  # the mark waited at the gap

            await relay.close()
            relay = OutboxRelay(pool=pool, producer=producer, kafka=kafka, schema=schema, metrics=Metrics("t"),
                                full_pass_s=0.3)
            straggling = slow.transaction()
            await straggling.start()
            await enqueued(slow, b"long")  # open for longer than full_pass_s
            await enqueued(conn, b"second")
            assert await relay.publish_once() == 1
            await asyncio.sleep(0.4)
            await enqueued(conn, b"third")
            assert await relay.publish_once() == 1  # the mark moves past the gap
            await straggling.commit()

            async def published() -> bool | None:
                await relay.publish_once()
                return await pool.fetchval("SELECT count(*) FROM outbox") == 0 or None

            await wait_for(published, what="the long transaction's row relayed")
        records = await read_topic(kafka, kafka.topic("erasure-requested"), expect=5, raw=True)
        assert sorted(r.value for r in records) == [b"brief", b"first", b"long", b"second", b"third"]
    finally:
        await relay.close()
        await producer.stop()
