"""The secured three-broker cluster (`make cluster-up`: TLS, SCRAM logins, ACLs from the registry,
3 replicas): started for these tests if it is not running, and stopped again if it was started
here. Each test gets its own topic prefix, with the registry's topics (3 replicas, 2 in sync)
and the registry's ACLs for that prefix."""

from __future__ import annotations

import pytest

from bench.cluster import prepare, retire, running
from tests.support import unique


@pytest.fixture(scope="package")
def cluster():
    with running() as cluster:
        yield cluster


@pytest.fixture
async def secured(cluster):
    """An admin's settings under a prefix of this test, with the registry's topics and ACLs there."""
    admin = await prepare(cluster, unique("ct-") + ".")
    yield admin
    await retire(admin)
