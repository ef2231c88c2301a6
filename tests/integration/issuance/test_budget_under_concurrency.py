"""1,000 segment entries for a campaign whose budget covers 100 vouchers, consumed by two
instances of the service (two processes, one consumer group) at once: exactly 100 vouchers, and
the ledger invariant held at every step of its history. Replaying the topic issues nothing."""

from __future__ import annotations

import httpx

from bench.common import free_port, service_process
from services.issuance.app import IssuanceService
from services.issuance.settings import IssuanceSettings
from shared import events as ev
from tests.integration.issuance.conftest import USD, campaign, consent_state, entered, publish
from tests.support import create_api_key, group_members, read_topic, wait_for

N = 1000


async def test_two_instances_issue_exactly_the_budget_and_the_ledger_never_overruns(kafka, issuance_schema, tmp_path):
    env = {"ISSUANCE_SCHEMA_NAME": issuance_schema, "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
           "VOUCHERSTREAM_KAFKA_MAX_BATCH": "50", "ISSUANCE_LOG_LEVEL": "WARNING"}
    ports = [free_port(), free_port()]
    async with service_process("issuance", env | {"ISSUANCE_HTTP_PORT": str(ports[0])}, ports[0], tmp_path / "a.log"), \
            service_process("issuance", env | {"ISSUANCE_HTTP_PORT": str(ports[1])}, ports[1], tmp_path / "b.log"):
        key = await create_api_key(issuance_schema)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            r = await client.post("/v1/campaigns", json=campaign(budget={"limit": {"amount": 200_000, "currency": USD},
                                                                         "per_customer": 1}))
            assert r.status_code == 201, r.text
            # Both instances hold partitions before the load starts.
            await wait_for(lambda: _stable_with(kafka, kafka.topic_prefix + "issuance", 2), timeout=30, interval=0.3,
                           what="two members in the consumer group")
            customers = [f"cust-{i:04d}" for i in range(N)]
            await publish(kafka, "consent-state", [consent_state(c, "personalized_offers", "email") for c in customers])
            await publish(kafka, "segment-entered", [entered(c) for c in customers])

            async def all_decided():
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[1]}") as other:
                    assert (await other.get("/readyz")).status_code == 200
                budget = (await client.get("/v1/campaigns/cart-20/budget")).json()
                return budget if budget["vouchers_issued"] >= 100 else None

            budget = await wait_for(all_decided, timeout=60, interval=0.5, what="100 vouchers")
            denied = await read_topic(kafka.bootstrap, kafka.topic("issuance-denied"), expect=N - 100, timeout=60)
            handled_by = []
            for port in ports:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as each:  # /metrics is open
                    text = (await each.get("/metrics")).text
                handled_by.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                      if line.startswith("voucherstream_messages_consumed_total")
                                      and 'topic="segment-entered"' in line))
        for log in ("a.log", "b.log"):
            assert "Traceback" not in (tmp_path / log).read_text()

    # Both instances took part (the group split the partitions between them).
    assert all(n > 0 for n in handled_by) and sum(handled_by) == N, handled_by
    assert budget["vouchers_issued"] == 100 and budget["reserved"] == 200_000 and budget["remaining"] == 0
    assert {ev.decode(r.value)[1].reason for r in denied} == {"budget_exhausted"}

    settings = IssuanceSettings(kafka=kafka, schema_name=issuance_schema)
    service = IssuanceService(settings)
    service.settings = IssuanceSettings(kafka=kafka, schema_name=issuance_schema, consumer_group="issuance-replay")
    await service.start()
    try:
        pool = service.pool
        assert await pool.fetchval("SELECT count(*) FROM vouchers") == 100
        history = await pool.fetch("SELECT seq, limit_minor, reserved, spent FROM budget_ledger_history"
                                   " WHERE campaign_id = 'cart-20' ORDER BY seq")
        assert [h["seq"] for h in history] == list(range(1, 101))
        assert all(h["reserved"] + h["spent"] <= h["limit_minor"] for h in history)
        assert [h["reserved"] for h in history] == [2000 * i for i in range(1, 101)]

        # Replay: a new consumer group reads segment-entered from offset 0 — nothing new is decided.
        await wait_for(lambda: _committed_all(service), timeout=30, what="the replay to catch up")
        assert await pool.fetchval("SELECT count(*) FROM vouchers") == 100
        assert await pool.fetchval("SELECT count(*) FROM issuance_attempts") == N
    finally:
        await service.stop()
    issued = await read_topic(kafka.bootstrap, kafka.topic("voucher-issued"))
    assert len(issued) == 100


async def _stable_with(kafka, group: str, n: int) -> bool:
    state, members = await group_members(kafka.bootstrap, group)
    return state == "Stable" and members == n


async def _committed_all(service) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=service.settings.kafka.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(service.settings.group_id)
    finally:
        await admin.close()
    topic = service.settings.kafka.topic("segment-entered")
    return sum(m.offset for tp, m in offsets.items() if tp.topic == topic) >= N
