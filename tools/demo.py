"""The shop simulator and live view of `make run`.

It plays a shop: customers with a mix of consents and preferred channels, birthdays, orders of
perfume and other brands, abandoned carts around 300 USD, a few big spenders, some consent
withdrawals and a few malformed events — published to Kafka like any shop would. Playing the
shop's e-mail/SMS/push sender too, it reads ``delivery-requested`` and redeems a share of the
vouchers through the checkout API. Meanwhile a live table shows, per campaign: issued, denied by
reason, redeemed, reserved, spent, remaining budget, and the dead-letter count. Ctrl-C stops it.

    python -m tools.demo --key vs_... [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from shared import datakeys
from shared import events as ev
from shared.kafka import start_producer
from shared.settings import KafkaSettings
from shared.topics import all_topics

BRANDS = ["Maison Lune", "Atelier Noir", "Fleur de Sel", "Oud & Co"]
OTHER = [("Trailblazer", "shoes"), ("Linen Lab", "clothing"), ("Brewster", "coffee")]
CHANNELS = ["email", "sms", "push", "onsite"]


class Shop:
    def __init__(self, kafka: KafkaSettings, seed: int = 7) -> None:
        self.kafka = kafka
        self.rng = random.Random(seed)
        self.stats = {"events": 0, "malformed": 0, "customers": 0, "redeemed": 0, "redeem_refused": 0}

    def customer(self) -> list[tuple[str, ev.Event]]:
        """One new customer's first events: consents, registration, orders, maybe a cart."""
        rng, now = self.rng, datetime.now(UTC)
        cid = f"cust-{uuid.uuid4().hex[:8]}"
        self.stats["customers"] += 1
        out: list[tuple[str, ev.Event]] = []
        consenting = rng.random() < 0.8
        preferred = rng.choice(CHANNELS)
        if consenting:
            purposes = ["profiling", "personalized_offers"] + rng.sample(["email", "sms", "push"], rng.randint(1, 3))
            for p in purposes:
                out.append(("consent-changed", ev.ConsentChanged(customer_id=cid, purpose=p, granted=True,
                                                                 policy_version="2026-11", source="cookie-banner",
                                                                 occurred_at=now)))
        birthday = now + timedelta(days=rng.randint(0, 6)) if rng.random() < 0.25 else now + timedelta(days=rng.randint(8, 300))
        out.append(("customer-registered", ev.CustomerRegistered(
            customer_id=cid, birthday={"month": birthday.month, "day": birthday.day}, preferred_channel=preferred,
            registered_at=now)))
        favourite = rng.choice(BRANDS)
        big = rng.random() < 0.1
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.7:
                item = ev.LineItem(sku=f"p-{rng.randint(1, 40)}", brand=favourite if rng.random() < 0.8 else rng.choice(BRANDS),
                                   category="perfume", quantity=1, unit_price=ev.Money(amount=rng.randint(40, 150) * 100, currency="USD"))
            else:
                brand, cat = rng.choice(OTHER)
                item = ev.LineItem(sku=f"o-{rng.randint(1, 40)}", brand=brand, category=cat, quantity=rng.randint(1, 2),
                                   unit_price=ev.Money(amount=rng.randint(10, 90) * 100, currency="USD"))
            if big:
                item = item.model_copy(update={"quantity": 10})
            total = ev.Money(amount=item.unit_price.amount * item.quantity, currency="USD")
            out.append(("order-placed", ev.OrderPlaced(order_id=f"o-{uuid.uuid4().hex[:8]}", customer_id=cid, total=total,
                                                       items=[item], placed_at=now)))
        if rng.random() < 0.4:
            value = rng.randint(250, 380) * 100
            out.append(("cart-abandoned", ev.CartAbandoned(cart_id=f"cart-{uuid.uuid4().hex[:6]}", customer_id=cid,
                                                           value=ev.Money(amount=value, currency="USD"),
                                                           abandoned_at=now)))
        if consenting and rng.random() < 0.05:
            out.append(("consent-changed", ev.ConsentChanged(customer_id=cid, purpose="personalized_offers",
                                                             granted=False, policy_version="2026-11",
                                                             source="preference-centre",
                                                             occurred_at=now + timedelta(seconds=1))))
        return out

    async def run(self, rate: float, stop: asyncio.Event) -> None:
        """Consent first, the rest of a customer's visit a few seconds later (as on a real site:
        the banner, then browsing), so the consent has reached every service in between."""
        producer = await start_producer(self.kafka, "demo-shop")
        later: list[tuple[float, list[tuple[str, ev.Event]]]] = []
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                batch = self.customer()
                now_events = [(t, e) for t, e in batch if isinstance(e, ev.ConsentChanged) and e.granted]
                later.append((loop.time() + 3.0, [(t, e) for t, e in batch if (t, e) not in now_events]))
                due = [item for item in later if item[0] <= loop.time()]
                later = [item for item in later if item[0] > loop.time()]
                for topic, event in now_events + [pair for _, events in due for pair in events]:
                    await producer.send(self.kafka.topic(topic), key=event.key().encode(),
                                        value=ev.encode(event, source="demo-shop"))
                    self.stats["events"] += 1
                if self.rng.random() < 0.02:  # a shop bug: a broken line now and then
                    await producer.send(self.kafka.topic("order-placed"), key=b"cust-broken",
                                        value=b'{"specversion": "1.0", "type": "shop.order.placed.v1", "data": {')
                    self.stats["malformed"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=len(batch) / rate)
        finally:
            await producer.stop()

    async def sender(self, issuance_url: str, key: str, stop: asyncio.Event) -> None:
        """Plays the shop's senders and its checkout: redeems about a third of what is delivered."""
        consumer = AIOKafkaConsumer(self.kafka.topic("delivery-requested"), **self.kafka.client_options(),
                                    group_id=self.kafka.topic_prefix + "demo-shop-sender", auto_offset_reset="latest")
        await consumer.start()
        try:
            async with httpx.AsyncClient(base_url=issuance_url, headers={"Authorization": f"Bearer {key}"},
                                         timeout=10) as client, datakeys.reader() as keys:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        for value in await keys.opened([r.value for r in records]):  # the codes are sealed
                            d = ev.decode(value)[1]
                            if not isinstance(d, ev.DeliveryRequested):
                                continue  # a delivery-cancelled: its request, if not yet delivered, is dropped
                            if self.rng.random() > 0.35:
                                continue
                            items = [{"sku": "p-1", "brand": d.offer.brand or BRANDS[0], "category": "perfume",
                                      "quantity": 1, "unit_price": {"amount": 32000, "currency": "USD"}}]
                            answer = await client.post("/v1/redemptions", headers={"Idempotency-Key": str(uuid.uuid4())},
                                                       json={"code": d.code, "customer_id": d.customer_id,
                                                             "order": {"amount": {"amount": 32000, "currency": "USD"},
                                                                       "items": items}})
                            self.stats["redeemed" if answer.status_code == 201 else "redeem_refused"] += 1
        finally:
            await consumer.stop()


async def dead_letters(kafka: KafkaSettings) -> int:
    admin = AIOKafkaAdminClient(**kafka.client_options())
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=None)
    await admin.start()
    await consumer.start()
    try:
        from aiokafka import TopicPartition

        tps = [TopicPartition(name, 0) for name, t in all_topics(kafka.topic_prefix) if name.endswith(".dlq")]
        ends = await consumer.end_offsets(tps)
        return sum(ends.values())
    finally:
        await consumer.stop()
        await admin.close()


def fmt(minor: int) -> str:
    return f"{minor / 100:,.2f}"


async def view(issuance_url: str, analytics_url: str, key: str, shop: Shop, kafka: KafkaSettings,
               stop: asyncio.Event, console: Console) -> None:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=5) as client:
        with Live(console=console, refresh_per_second=2, screen=False) as live:
            while not stop.is_set():
                table = Table(title="Voucherstream — live campaigns (Ctrl-C to stop)", expand=True)
                for col in ("campaign", "issued", "denied (by reason)", "redeemed", "reserved", "spent", "remaining"):
                    table.add_column(col, justify="left" if col in ("campaign", "denied (by reason)") else "right")
                try:
                    campaigns = (await client.get(f"{issuance_url}/v1/campaigns")).json()
                    for c in campaigns:
                        got = await client.get(f"{analytics_url}/v1/campaigns/{c['id']}/stats")
                        if got.status_code != 200:
                            table.add_row(c["id"], "0", "", "0", "0.00", "0.00", fmt(c["definition"]["budget"]["limit"]["amount"]))
                            continue
                        body = got.json()
                        lg = body["ledger"]
                        issued = sum(v["issued"] for v in body["variants"].values())
                        redeemed = sum(v["redeemed"] for v in body["variants"].values())
                        denied = ", ".join(f"{k} {n}" for k, n in sorted(body["denied"].items()))
                        table.add_row(c["id"], str(issued), denied, str(redeemed), fmt(lg["reserved"]), fmt(lg["spent"]),
                                      f"{fmt(lg['remaining'])} {lg['currency']}")
                    dlq = await dead_letters(kafka)
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    table.add_row(f"(waiting for the services: {type(exc).__name__})", "", "", "", "", "", "")
                    dlq = 0
                s = shop.stats
                footer = (f"shop: {s['customers']} customers, {s['events']} events, {s['malformed']} malformed sent; "
                          f"checkout: {s['redeemed']} redeemed, {s['redeem_refused']} refused; dead letters: {dlq}")
                live.update(Group(table, footer))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)


async def main_async(args) -> None:
    kafka = KafkaSettings()
    shop = Shop(kafka, seed=args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console = Console()
    tasks = [asyncio.create_task(shop.run(args.rate, stop)),
             asyncio.create_task(shop.sender(args.issuance_url, args.key, stop)),
             asyncio.create_task(view(args.issuance_url, args.analytics_url, args.key, shop, kafka, stop, console))]
    if args.seconds:
        loop.call_later(args.seconds, stop.set)
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key", required=True, help="an API key with the marketing and checkout scopes")
    parser.add_argument("--rate", type=float, default=50.0, help="shop events per second")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--issuance-url", default="http://127.0.0.1:8003")
    parser.add_argument("--analytics-url", default="http://127.0.0.1:8004")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
