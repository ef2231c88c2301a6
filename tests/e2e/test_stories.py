"""The three stories end to end: the four services as users run them (their own processes), the
shop's events published with kcat as a real shop would, the checkout API, budget-counters, and an
erasure across all four services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from bench.common import ROOT, free_port, service_process
from services.issuance.campaigns import HOLDOUT, Variant, assign_variant
from shared import auth, datakeys, db
from shared import events as ev
from shared.settings import PostgresSettings
from tests.support import columns_containing, kcat, read_topic, unique, wait_for

pytestmark = pytest.mark.e2e
SERVICES = ("consent", "segmentation", "issuance", "analytics")
CART_ID, ORDER_ID = "cart-7f3e9a1c", "order-5b1c2d8e"  # distinctive: searched for in every table after the erasure


def shop_publish(kafka, topic: str, events: list[ev.Event]) -> None:
    """kcat with Kafka's default partitioner, one 'key|json' line per event, personal fields sealed
    by `voucherstream seal` on the way, as docs/privacy.md asks of the shop."""
    lines = b"".join(e.key().encode() + b"|" + ev.encode(e, source="shop-php") + b"\n" for e in events)
    sealed = subprocess.run([sys.executable, "-m", "voucherstream.cli", "seal", "-K", "|"], cwd=ROOT, input=lines,
                            capture_output=True, env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=60, check=True)
    kcat("-b", kafka.bootstrap, "-P", "-t", kafka.topic(topic), "-K", "|", "-X", "topic.partitioner=murmur2_random",
         input=sealed.stdout)


def not_in_holdout(prefix: str) -> str:
    variants = [Variant(name="A", weight=1), Variant(name="B", weight=1)]
    for i in range(100):
        cid = f"{prefix}-{i}"
        if assign_variant("birthday-perfume-25", cid, variants, 10) != HOLDOUT:
            return cid
    raise AssertionError("no customer outside the holdout")


async def count(schema: str, query: str, *args):
    conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(), server_settings={"search_path": schema})
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def add_key(schema: str, key: str) -> None:
    conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(), server_settings={"search_path": schema})
    try:
        await auth.create_key(conn, "e2e", list(auth.SCOPES), key=key)
    finally:
        await conn.close()


async def test_birthday_cart_and_loyalty_stories_with_consent_checkout_counters_and_erasure(kafka, tmp_path):
    ports = {s: free_port() for s in SERVICES}
    schemas = {s: unique(f"e2e_{s}_") for s in ("consent", "segmentation", "issuance", "analytics")}
    env = {"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix, "CONSENT_PRIVACY_SERVICES": ",".join(SERVICES)}
    for s in SERVICES:
        env[f"{s.upper()}_HTTP_PORT"] = str(ports[s])
    for s, schema in schemas.items():
        env[f"{s.upper()}_SCHEMA_NAME"] = schema
    url = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}
    async with contextlib.AsyncExitStack() as stack:
        for s in SERVICES:
            await stack.enter_async_context(service_process(s, env, ports[s], tmp_path / f"{s}.log"))
        _, key = auth.new_key()
        for schema in schemas.values():
            await add_key(schema, key)
        headers = {"Authorization": f"Bearer {key}"}
        client = await stack.enter_async_context(httpx.AsyncClient(headers=headers, timeout=30))
        proc = await asyncio.create_subprocess_exec(
            os.sys.executable, "-m", "voucherstream.cli", "campaigns", "load", str(ROOT / "deploy/campaigns/reference.yaml"),
            cwd=ROOT, env=os.environ | env | {"PYTHONPATH": str(ROOT), "VOUCHERSTREAM_API_KEY": key,
                                                "VOUCHERSTREAM_ISSUANCE_URL": url["issuance"]},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()

        now = datetime.now(UTC)
        bday, cart, vip, nobody = not_in_holdout("c-bday"), "c-cart", "c-vip", "c-none"
        consents = []
        for cid, channels in ((bday, ["push"]), (cart, ["email"]), (vip, ["sms", "email"])):
            for purpose in ["profiling", "personalized_offers"] + channels:
                consents.append(ev.ConsentChanged(customer_id=cid, purpose=purpose, granted=True, policy_version="2026-11",
                                                  source="cookie-banner", occurred_at=now))
        shop_publish(kafka, "consent-changed", consents)
        async def consents_published():
            latest = {}
            for rec in await read_topic(kafka.bootstrap, kafka.topic("consent-state")):
                state = ev.decode(rec.value)[1]
                if isinstance(state, ev.ConsentState):  # (not a consent watermark)
                    latest[state.customer_id] = state
            return all(c.customer_id in latest and latest[c.customer_id].granted(c.purpose) for c in consents)

        await wait_for(consents_published, timeout=30, interval=0.3, what="every consent on consent-state")
        consenting = [bday, cart, vip]

        async def consent_applied() -> bool:
            kept = await count(schemas["segmentation"], "SELECT count(*) FROM customers"
                               " WHERE customer_id = ANY($1::text[])", consenting)
            offers = await count(schemas["issuance"], "SELECT count(*) FROM customer_consent"
                                 " WHERE customer_id = ANY($1::text[]) AND personalized_offers", consenting)
            return kept == offers == len(consenting)

        await wait_for(consent_applied, timeout=30, what="the consents applied by segmentation and issuance")

        soon = now + timedelta(days=3)
        shop_publish(kafka, "customer-registered", [
            ev.CustomerRegistered(customer_id=bday, birthday={"month": soon.month, "day": soon.day},
                                  preferred_channel="push", registered_at=now),
            ev.CustomerRegistered(customer_id=cart, preferred_channel="sms", registered_at=now),  # no sms consent
            ev.CustomerRegistered(customer_id=vip, preferred_channel="sms", registered_at=now),
            ev.CustomerRegistered(customer_id=nobody, birthday={"month": soon.month, "day": soon.day}, registered_at=now)])
        await wait_for(lambda: count(schemas["segmentation"], "SELECT count(*) = $2 FROM customers WHERE customer_id"
                                     " = ANY($1::text[]) AND profile ->> 'preferred_channel' IS NOT NULL",
                                     consenting, len(consenting)),
                       timeout=30, what="the registrations in the profiles")
        perfume = ev.LineItem(sku="p-7", brand="Maison Lune", category="perfume", quantity=1,
                              unit_price=ev.Money(amount=9000, currency="USD"))
        shop_publish(kafka, "order-placed", [
            ev.OrderPlaced(order_id="o-1", customer_id=bday, total=ev.Money(amount=9000, currency="USD"),
                           items=[perfume], placed_at=now),
            ev.OrderPlaced(order_id="o-2", customer_id=vip, total=ev.Money(amount=150_000, currency="USD"), placed_at=now),
            ev.OrderPlaced(order_id="o-3", customer_id=vip, total=ev.Money(amount=60_000, currency="USD"), placed_at=now),
            ev.OrderPlaced(order_id="o-4", customer_id=nobody, total=ev.Money(amount=500_000, currency="USD"), placed_at=now)])
        shop_publish(kafka, "cart-abandoned", [
            ev.CartAbandoned(cart_id=CART_ID, customer_id=cart, value=ev.Money(amount=30_000, currency="USD"), abandoned_at=now),
            ev.CartAbandoned(cart_id="k-2", customer_id=nobody, value=ev.Money(amount=90_000, currency="USD"), abandoned_at=now)])

        async def deliveries():
            got = {d.customer_id: d for d in (ev.decode(r.value)[1]
                                                for r in await read_topic(kafka.bootstrap, kafka.topic("delivery-requested")))}
            return got if {bday, cart, vip} <= set(got) else None

        got = await wait_for(deliveries, timeout=60, interval=0.5, what="three deliveries")
        # 1. Birthday week: 25 % (or the B variant's 20 %) off the favourite brand, by push as preferred.
        assert got[bday].campaign_id == "birthday-perfume-25" and got[bday].channel == "push"
        assert got[bday].offer.percent in (25, 20) and got[bday].offer.brand == "Maison Lune"
        # 2. A 300 USD cart: 20 USD off, by e-mail (sms is preferred but not consented).
        assert got[cart].campaign_id == "cart-20" and got[cart].offer.amount.amount == 2000 and got[cart].channel == "email"
        # 3. Over 2,000 USD in 12 months: a gift card with an expiry.
        assert got[vip].campaign_id == "loyalty-gift-card" and got[vip].offer.kind == "gift_card"
        assert got[vip].expires_at > now + timedelta(days=80)
        # No consent: nothing, and no profile.
        assert nobody not in got
        assert (await client.get(f"{url['segmentation']}/v1/customers/{nobody}/segments")).status_code == 404

        # A redemption through the checkout API shows on budget-counters.
        r = await client.post(f"{url['issuance']}/v1/redemptions", headers={"Idempotency-Key": "e2e-1"}, json={
            "code": got[cart].code, "customer_id": cart, "order_id": ORDER_ID,
            "order": {"amount": {"amount": 32000, "currency": "USD"}, "items": []}})
        assert r.status_code == 201, r.text

        async def counted():
            records = await read_topic(kafka.bootstrap, kafka.topic("budget-counters"))
            last = {}
            for rec in records:
                c = ev.decode(rec.value)[1]
                last[c.campaign_id] = c
            c = last.get("cart-20")
            return c if c and c.redeemed == 1 else None

        counters = await wait_for(counted, timeout=30, interval=0.5, what="the redemption on budget-counters")
        assert counters.ledger.spent == 2000 and counters.ledger.reserved == 0

        # An erasure completes across all four services.
        started = await client.post(f"{url['consent']}/v1/privacy/erasures", json={"customer_id": cart})
        rid = started.json()["request_id"]

        async def erased():
            body = (await client.get(f"{url['consent']}/v1/privacy/erasures/{rid}")).json()
            return body if body["status"] == "completed" else None

        body = await wait_for(erased, timeout=60, interval=0.5, what="the erasure in every service")
        assert set(body["services"]) == set(SERVICES)
        assert all(p["status"] == "completed" for p in body["services"].values())
        # No table of any service holds the customer's id, their cart id or their order id.
        for s, schema in schemas.items():
            pool = await db.create_pool(PostgresSettings(), schema, min_size=1, max_size=1)
            try:
                for needle in (cart, CART_ID, ORDER_ID):
                    assert await columns_containing(pool, needle) == [], f"{s} still holds {needle}"
            finally:
                await pool.close()
        # And every topic of the broker, read from offset 0, holds no field of theirs in clear.
        await nothing_readable_on_kafka(kafka, cart, [CART_ID, ORDER_ID, got[cart].code], still_readable=bday)
    for s in SERVICES:
        log = (tmp_path / f"{s}.log").read_text()
        assert "Traceback" not in log, f"{s}: {log[-3000:]}"


async def nothing_readable_on_kafka(kafka, customer: str, needles: list[str], still_readable: str) -> None:
    """Every record of every topic under the test's prefix, raw: none contains a needle; every
    record of ``customer`` carries no personal field in clear (their id — the message key, the
    envelope's subject and ``data.customer_id`` — aside) and its sealed fields no longer open;
    another customer's still do."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        names = sorted(n for n in await admin.list_topics() if n.startswith(kafka.topic_prefix))
    finally:
        await admin.close()
    assert len(names) >= 20, names
    theirs = opened_elsewhere = 0
    async with datakeys.reader() as keys:
        for name in names:
            records = await read_topic(kafka.bootstrap, name, raw=True)
            for r in records:
                for needle in needles:
                    assert needle.encode() not in (r.value or b""), f"{needle} readable on {name}@{r.offset}"
                if r.value is None or name.endswith(".dlq"):
                    continue
                raw = json.loads(r.value)
                model = ev.EVENT_TYPES[raw["type"]]
                key_id = raw.get("datakey")
                if key_id:
                    await keys.load([key_id])
                if r.key == customer.encode():
                    theirs += 1
                    assert not set(model.PERSONAL) & set(raw["data"]), f"{name}@{r.offset} has personal fields in clear"
                    assert key_id is None or keys.opener(key_id) is None, f"{name}@{r.offset} still opens"
                elif r.key == still_readable.encode() and key_id:
                    assert keys.opener(key_id) is not None
                    opened_elsewhere += 1
    assert theirs >= 8 and opened_elsewhere >= 3, (theirs, opened_elsewhere)
