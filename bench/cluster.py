"""The running secured cluster (deploy/local/cluster.sh) as settings per principal, for the
cluster tests and the fault run's ``--cluster`` mode."""

from __future__ import annotations

import contextlib
import subprocess
import sys

from bench.common import ROOT
from shared import acls
from shared.settings import KafkaSettings

CLUSTER = ROOT / "deploy/local/cluster.sh"


def _env(principal: str) -> dict[str, str]:
    out = subprocess.run([CLUSTER, "env", principal], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


class Cluster:
    """Settings for each principal of the running cluster."""

    def __init__(self) -> None:
        self.env = {p: _env(p) for p in ("admin",) + acls.PRINCIPALS}

    def settings(self, principal: str, prefix: str = "", **overrides) -> KafkaSettings:
        e = self.env[principal]
        return KafkaSettings(bootstrap=e["VOUCHERSTREAM_KAFKA_BOOTSTRAP"], security_protocol="SASL_SSL",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username=principal,
                             sasl_password=e["VOUCHERSTREAM_KAFKA_SASL_PASSWORD"],
                             ssl_cafile=e["VOUCHERSTREAM_KAFKA_SSL_CAFILE"], replication_factor=3,
                             min_insync_replicas=2, topic_prefix=prefix, poll_timeout_ms=50, **overrides)

    def service_env(self) -> dict[str, str]:
        """What the four services need to run on the cluster, each as its own principal."""
        shared = {k: v for k, v in self.env["admin"].items() if "SASL_USERNAME" not in k and "SASL_PASSWORD" not in k}
        for s in acls.SERVICES:
            shared[f"{s.upper()}_KAFKA_USERNAME"] = s
            shared[f"{s.upper()}_KAFKA_PASSWORD"] = self.env[s]["VOUCHERSTREAM_KAFKA_SASL_PASSWORD"]
        return shared


def authorized_everywhere(settings: KafkaSettings, topic: str) -> bool:
    """Whether every broker lets this principal see ``topic``: new ACLs reach each broker through
    the metadata log, a moment after the controller accepted them."""
    from confluent_kafka.admin import AdminClient

    for broker in settings.bootstrap.split(","):
        conf: dict[str, str | int | float | bool] = {
            **settings.model_copy(update={"bootstrap": broker}).librdkafka_config(), "log_level": 0}
        meta = AdminClient(conf).list_topics(topic=settings.topic(topic), timeout=10)
        if meta.topics[settings.topic(topic)].error is not None:
            return False
    return True




async def prepare(cluster: Cluster, prefix: str) -> KafkaSettings:
    """The registry's topics (3 replicas, 2 in sync) and ACLs under ``prefix``, once every broker
    applies them; returns the admin's settings there."""
    import asyncio

    from shared import topics
    from tests.support import wait_for

    admin = cluster.settings("admin", prefix)
    await topics.ensure_topics(admin, prefix, report=lambda *_: None)
    await asyncio.to_thread(acls.apply, admin, prefix, report=lambda *_: None)
    last = cluster.settings("sender", prefix)  # (the last principal the ACLs name)
    await wait_for(lambda: asyncio.to_thread(authorized_everywhere, last, "delivery-requested"), timeout=30,
                   interval=0.2, what="the ACLs on every broker")
    return admin


async def retire(admin: KafkaSettings) -> None:
    import asyncio

    from shared import topics

    await asyncio.to_thread(acls.remove, admin, admin.topic_prefix)
    await asyncio.wait_for(topics.delete_topics(admin, admin.topic_prefix), 60)


@contextlib.contextmanager
def running():
    """The cluster, started (`deploy/local/cluster.sh up`) if it is down and stopped again after."""
    started = "down" in subprocess.run([CLUSTER, "status"], capture_output=True, text=True).stdout
    if started:
        subprocess.run([CLUSTER, "up", sys.executable], check=True, timeout=600)
    try:
        yield Cluster()
    finally:
        if started:
            subprocess.run([CLUSTER, "down"], check=False, timeout=120)
