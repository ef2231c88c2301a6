"""Fixtures on the real local stack (`make up`): each test gets its own topic prefix and its own
PostgreSQL schema, so tests never see each other's data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import warnings

import pytest
from aiokafka.errors import KafkaError

from shared import db, topics
from shared.settings import KafkaSettings, PostgresSettings
from tests.support import NAMES, drop_left_schemas, unique

# The suite runs the services with their built-in development secrets (as `make test` does).
os.environ.setdefault("VOUCHERSTREAM_ENVIRONMENT", "development")

BOOTSTRAP = os.environ.get("VOUCHERSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


@pytest.fixture(scope="session", autouse=True)
def no_schemas_left():
    """After the session, the schemas its tests named and left behind are dropped."""
    yield
    if not NAMES:
        return
    try:
        left = asyncio.run(asyncio.wait_for(drop_left_schemas(), 120))
    except (OSError, TimeoutError) as exc:  # (a unit-only run without PostgreSQL)
        warnings.warn(f"schemas left by this session not dropped: {exc!r}", stacklevel=1)
        return
    if left:
        print(f"\n[tests] dropped {len(left)} schemas the tests left behind", flush=True)


@pytest.fixture
def kafka_settings() -> KafkaSettings:
    """Settings whose topic prefix is unique to this test (topics not created yet)."""
    return KafkaSettings(bootstrap=BOOTSTRAP, topic_prefix=unique("test-") + ".", poll_timeout_ms=50)


@pytest.fixture
async def kafka(kafka_settings: KafkaSettings):
    """Every registry topic (and dead-letter topic) created under this test's prefix."""
    await topics.ensure_topics(kafka_settings.bootstrap, kafka_settings.topic_prefix, report=lambda *_: None)
    yield kafka_settings
    try:  # clean-up must end: an admin client once spun in its metadata update for ten minutes here
        await asyncio.wait_for(topics.delete_topics(kafka_settings.bootstrap, kafka_settings.topic_prefix), 60)
    except (TimeoutError, KafkaError) as exc:
        warnings.warn(f"topics under {kafka_settings.topic_prefix} not deleted: {exc!r}", stacklevel=1)


@pytest.fixture
def postgres_settings() -> PostgresSettings:
    return PostgresSettings()


@pytest.fixture
async def pg_schema(postgres_settings: PostgresSettings):
    """A fresh schema, migrated with the shared migrations; dropped afterwards."""
    schema = unique("test_")
    pool = await db.create_pool(postgres_settings, schema, min_size=1, max_size=4)
    await db.migrate(pool, schema, db.discover(("shared", db.SHARED_MIGRATIONS)))
    yield schema, pool
    await db.drop_schema(pool, schema)
    await pool.close()


class _SharedCluster:
    """The secured three-broker cluster (deploy/local/cluster.sh), started by the first test that
    asks for it — if it is down — and stopped after the last one, so the cluster tests and the
    benchmark smoke's cluster step share one start (about 45 s each on 2 cores)."""

    def __init__(self) -> None:
        self.stack: contextlib.ExitStack | None = None
        self.cluster = None
        self.last_user: str | None = None

    def get(self):
        if self.cluster is None:
            from bench.cluster import running

            self.stack = contextlib.ExitStack()
            self.cluster = self.stack.enter_context(running())
        return self.cluster

    def close(self) -> None:
        if self.stack is not None:
            stack, self.stack, self.cluster = self.stack, None, None
            stack.close()


SHARED_CLUSTER = _SharedCluster()


@pytest.fixture
def secured_cluster():
    """The secured cluster (bench.cluster.Cluster), up for this test."""
    return SHARED_CLUSTER.get()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if item.nodeid == SHARED_CLUSTER.last_user:
        SHARED_CLUSTER.close()


def pytest_sessionfinish(session, exitstatus):
    SHARED_CLUSTER.close()


def pytest_collection_modifyitems(config, items):
    # Tests under integration/ and e2e/ talk to the real stack; mark them so `-m "not kafka"` works.
    for item in items:
        path = str(item.fspath)
        if "/integration/" in path or "/e2e/" in path:
            names = set(getattr(item, "fixturenames", ()))
            if names & {"kafka", "kafka_settings"}:
                item.add_marker(pytest.mark.kafka)
            if names & {"pg_schema", "postgres_settings"}:
                item.add_marker(pytest.mark.postgres)
    # The fault-tolerance run restarts the broker and the database: it goes last; the tests on the
    # secured cluster go first, together, so it runs only while they do.
    items.sort(key=lambda item: ("/chaos/" in str(item.fspath), "secured_cluster" not in item.fixturenames))
    users = [item.nodeid for item in items if "secured_cluster" in item.fixturenames]
    SHARED_CLUSTER.last_user = users[-1] if users else None
