"""The secured three-broker cluster (`make cluster-up`: TLS, SCRAM logins, ACLs from the registry,
3 replicas): started for these tests if it is not running, and stopped again after the session's
last test on it if it was started here (the benchmark smoke's cluster step shares it). Each test
gets its own topic prefix, with the registry's topics (3 replicas, 2 in sync) and the registry's
ACLs for that prefix."""

from __future__ import annotations

import pytest

from bench.cluster import prepare, retire
from tests.support import unique


@pytest.fixture
def cluster(secured_cluster):
    """Started once for the session's tests that use it (tests/conftest.py, SHARED_CLUSTER)."""
    return secured_cluster


@pytest.fixture
async def secured(cluster):
    """An admin's settings under a prefix of this test, with the registry's topics and ACLs there."""
    admin = await prepare(cluster, unique("ct-") + ".")
    yield admin
    await retire(admin)
