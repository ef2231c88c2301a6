"""A replay changes nothing: after a realistic run of the four services (the `make run` shop
simulator, redemptions included), every consumer group is reset to the earliest offsets with
Kafka's own consumer-groups tool — what an operator does after a fix or a restore — and the
services are started again. They read every topic from the start, and afterwards: no new voucher,
no new delivery, no ledger change, no profile change, and lag 0 on every partition of every input."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import ROOT
from shared import events as ev
from shared.settings import PostgresSettings
from shared.topics import topic as registry_topic
from tests.e2e.fleet import SERVICES, Fleet
from tests.support import describe_lags, reset_group, wait_for
from tools.demo import Shop

pytestmark = pytest.mark.e2e
SNAPSHOT = {
    "issuance": ["SELECT id, campaign_id, customer_id, trigger_key, status FROM vouchers ORDER BY id",
                 "SELECT campaign_id, limit_minor, reserved, spent, seq FROM budget_ledger ORDER BY 1",
                 "SELECT count(*) FROM budget_ledger_history", "SELECT count(*) FROM redemptions"],
    "segmentation": ["SELECT customer_id, profiling_since, profile::text FROM customers ORDER BY 1"],
    "consent": ["SELECT count(*) FROM consent_ledger"],
    "analytics": ["SELECT campaign_id, reserved, spent, seq FROM ledgers ORDER BY 1",
                  "SELECT count(*) FROM voucher_states", "SELECT count(*) FROM redemption_states"],
}


async def snapshot(schemas: dict[str, str]) -> dict[str, list]:
    out = {}
    for service, queries in SNAPSHOT.items():
        conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                     server_settings={"search_path": schemas[service]})
        try:
            out[service] = [[tuple(r) for r in await conn.fetch(q)] for q in queries]
        finally:
            await conn.close()
    return out


async def records_on(kafka, name: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(kafka.topic(name), p) for p in range(registry_topic(name).partitions)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


def near_gift_card(cid: str) -> list[tuple[str, ev.Event]]:
    """A consenting customer whose orders sum to 1,999.00 USD: one short of the loyalty gift card,
    which a double-counted replay would hand out."""
    now = datetime.now(UTC)
    consents = [("consent-changed", ev.ConsentChanged(customer_id=cid, purpose=p, granted=True, policy_version="v1",
                                                      source="test", occurred_at=now))
                for p in ("profiling", "personalized_offers", "email")]
    orders = [("order-placed", ev.OrderPlaced(order_id=f"{cid}-{i}", customer_id=cid,
                                              total=ev.Money(amount=amount, currency="USD"), placed_at=now))
              for i, amount in enumerate((120_000, 50_000, 29_900))]
    return consents + orders


async def test_resetting_every_group_to_the_earliest_offsets_and_restarting_changes_nothing(kafka, tmp_path):
    fleet = Fleet(kafka, tmp_path)
    schemas = fleet.schemas

    async def caught_up() -> bool:
        """Lag 0 on every partition of every group, and every outbox published."""
        lags = {}
        for s in SERVICES:
            lags.update({(s, *tp): lag for tp, lag in describe_lags(kafka.bootstrap, kafka.topic_prefix + s).items()})
        pending = [await fleet.fetchval(s, "SELECT count(*) FROM outbox") for s in SERVICES]
        return bool(lags) and all(lag == 0 for lag in lags.values()) and not any(pending)

    async with fleet:
        proc = await asyncio.create_subprocess_exec(
            os.sys.executable, "-m", "voucherstream.cli", "campaigns", "load", str(ROOT / "deploy/campaigns/reference.yaml"),
            cwd=ROOT, env=os.environ | fleet.env | {"PYTHONPATH": str(ROOT), "VOUCHERSTREAM_API_KEY": fleet.key,
                                                      "VOUCHERSTREAM_ISSUANCE_URL": f"http://127.0.0.1:{fleet.ports['issuance']}"},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()

        shop, stop = Shop(kafka, seed=15), asyncio.Event()
        from shared.kafka import send_all, start_producer

        producer = await start_producer(kafka, "test-shop")
        near = near_gift_card("near-2000")
        await send_all(producer, [(kafka.topic(t), e.key().encode(), ev.encode(e, source="t"), None) for t, e in near[:3]])
        tasks = [asyncio.create_task(shop.run(60, stop)),
                 asyncio.create_task(shop.sender(f"http://127.0.0.1:{fleet.ports['issuance']}", fleet.key, stop))]
        await asyncio.sleep(3)
        await send_all(producer, [(kafka.topic(t), e.key().encode(), ev.encode(e, source="t"), None) for t, e in near[3:]])
        await producer.stop()
        await asyncio.sleep(15)
        stop.set()
        await asyncio.gather(*tasks)
        await wait_for(caught_up, timeout=90, interval=1, what="every group caught up")
        await asyncio.sleep(3)  # the outboxes drain
    before = await snapshot(schemas)
    deliveries = await records_on(kafka, "delivery-requested")
    vouchers = before["issuance"][0]
    assert len(vouchers) >= 20 and shop.stats["redeemed"] >= 3, (len(vouchers), shop.stats)
    assert deliveries > 0  # (a voucher for the onsite channel has no delivery request)
    near_profile = next(r for r in before["segmentation"][0] if r[0] == "near-2000")
    assert '"spend"' in near_profile[2] and not [v for v in vouchers if v[2] == "near-2000"]

    for s in SERVICES:
        reset_group(kafka.bootstrap, kafka.topic_prefix + s)
    assert not await caught_up()  # the groups are back at the start

    async with fleet:
        await wait_for(caught_up, timeout=120, interval=1, what="every group caught up after the replay")
        await asyncio.sleep(3)
    after = await snapshot(schemas)
    assert after == before
    assert await records_on(kafka, "delivery-requested") == deliveries
    for log in tmp_path.glob("*.log"):
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
