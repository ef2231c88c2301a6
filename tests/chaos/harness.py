"""The fault-tolerance run: the four services as their own processes, a shop publishing at a
steady rate (and logging everything it published: the ground truth), a checkout redeeming a share
of the vouchers, and a fault injector — ``kill -9`` and restart, SIGSTOP past the session timeout,
a second instance for a while, a Kafka broker restart, a PostgreSQL restart — then every check of
issue #10 against the ground truth.

    python -m tests.chaos.harness --minutes 30 --kills 36 --pauses 6 --extras 6 \\
        --broker-restarts 4 --pg-restarts 4 --report docs/reliability.md     # make chaos
    python -m tests.chaos.harness --short                                   # the make-test version (2 min)
    python -m tests.chaos.harness --cluster --rate 500 --minutes 5 --broker-kills 3  # make chaos, second part
    python -m tests.chaos.harness --cluster --short --rate 500              # its make-test version

The broker and the database are restarted with ``deploy/local/stack.sh restart``, which refuses
servers this project did not start. With ``--cluster`` the run happens on the secured three-broker
cluster (deploy/local/cluster.sh): the services log in as themselves under the registry's ACLs,
topics have 3 replicas and want 2 in sync, and the fault is ``kill -9`` of one broker. Exit status 0 only when every check passes.

The workload is built so that the right answer follows from the ground truth alone:

* customers *A* consent to profiling, personalized offers and e-mail; *C* did the same and then
  withdrew ``personalized_offers``; *D* never consented. All of that is settled before the first
  fault, so no answer depends on which topic a restarted worker reads first;
* then carts are abandoned at a steady rate, some worth 300 USD or more (the segment's rule), some
  less, some published twice (a shop's retry), and a few malformed events;
* two campaigns target the segment: ``chaos-all`` with a budget that never runs out (every A cart
  of 300 USD or more gives exactly one voucher, nobody else's gives any) and ``chaos-tight``, whose
  budget covers fewer vouchers than there are triggers (exactly ``capacity`` vouchers, each for a
  right trigger, the rest denied for budget).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from bench.common import ROOT, free_port
from services.segmentation.engine import partition_of
from shared import auth, datakeys, topics
from shared import events as ev
from shared.kafka import Producer, start_producer
from shared.settings import KafkaSettings, PostgresSettings
from tests.support import partition_ids

SERVICES = ("consent", "segmentation", "issuance", "analytics")
STACK = ROOT / "deploy/local/stack.sh"
CLUSTER = ROOT / "deploy/local/cluster.sh"
FEE = 2000  # every chaos voucher: 20.00 USD off an order of at least 100.00 USD
CART_BIG, CART_SMALL = 31_000, 20_000
SEGMENT = "cart-abandoned-300"  # its rule: a USD cart of 300.00 or more; the trigger key is "<segment>:<cart id>"
SESSION_TIMEOUT_S = 10


def campaign(cid: str, limit: int) -> dict:
    return {"id": cid, "name": cid, "segment": SEGMENT, "currency": "USD",
            "offer": {"kind": "fixed_amount", "amount": {"amount": FEE, "currency": "USD"},
                      "min_order": {"amount": 10_000, "currency": "USD"}},
            "validity": {"days_after_issue": 3},
            "budget": {"limit": {"amount": limit, "currency": "USD"}, "per_customer": None}, "channels": ["email"]}


def log(msg: str) -> None:
    print(f"[chaos {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# The services, supervised


class Instance:
    """One ``python -m services.<name>`` process. Its output goes to its own log file."""

    def __init__(self, service: str, port: int, env: dict[str, str], logdir: Path, tag: str = "") -> None:
        self.service, self.port, self.env = service, port, env
        self.log_path = logdir / f"{service}{tag}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.expected_exit = False
        self.unexpected_exits: list[int] = []

    async def start(self) -> None:
        self.expected_exit = False
        env = os.environ | {"PYTHONPATH": str(ROOT)} | self.env | {f"{self.service.upper()}_HTTP_PORT": str(self.port)}
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", f"services.{self.service}", cwd=ROOT,
                                                             env=env, stdout=out, stderr=out)

    def send(self, sig: int) -> None:
        if self.proc and self.proc.returncode is None:
            os.kill(self.proc.pid, sig)

    async def stop(self) -> None:
        self.expected_exit = True
        if self.proc and self.proc.returncode is None:
            self.send(signal.SIGCONT)
            self.send(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                self.send(signal.SIGKILL)
                await self.proc.wait()

    async def ready(self, client: httpx.AsyncClient) -> bool:
        try:
            return (await client.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False


class Fleet:
    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env, self.logdir = env, logdir
        self.primary = {s: Instance(s, free_port(), env, logdir) for s in SERVICES}
        self.client = httpx.AsyncClient()
        self._watch: asyncio.Task | None = None
        self.extra_count = 0
        self.added: list[Instance] = []  # instances that join for good (the scale-out rehearsal)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.primary[service].port}"

    async def start(self) -> None:
        for inst in self.primary.values():
            await inst.start()
        await self.wait_ready(timeout=120)
        self._watch = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        """A process that exits without being told to is a failure of the run (the services must
        survive broker and database restarts by themselves); it is restarted so the run goes on."""
        while True:
            await asyncio.sleep(0.5)
            for inst in [*self.primary.values(), *self.added]:
                if inst.proc and inst.proc.returncode is not None and not inst.expected_exit:
                    inst.unexpected_exits.append(inst.proc.returncode)
                    log(f"{inst.service} exited by itself with {inst.proc.returncode}; restarting it (a failed check)")
                    await inst.start()

    async def all_ready(self) -> bool:
        return all(await asyncio.gather(*(i.ready(self.client) for i in self.primary.values())))

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not await self.all_ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"services not ready after {timeout} s; logs in {self.logdir}")
            await asyncio.sleep(0.2)

    async def kill9(self, service: str) -> None:
        inst = self.primary[service]
        inst.expected_exit = True
        inst.send(signal.SIGKILL)
        await inst.proc.wait()
        await inst.start()  # what systemd or Kubernetes does: the process comes back, nothing else

    async def pause(self, service: str, seconds: float) -> None:
        inst = self.primary[service]
        inst.send(signal.SIGSTOP)
        await asyncio.sleep(seconds)
        inst.send(signal.SIGCONT)

    async def extra(self, service: str, seconds: float) -> None:
        self.extra_count += 1
        inst = Instance(service, free_port(), self.env, self.logdir, tag=f"-extra{self.extra_count}")
        await inst.start()
        await self.ready_within(inst, 60)
        await asyncio.sleep(seconds)
        await inst.stop()

    async def add(self, service: str) -> Instance:
        """Another instance of a service that stays (as KEDA adds a pod): it joins the group."""
        inst = Instance(service, free_port(), self.env, self.logdir, tag=f"-{len(self.added) + 2}")
        await inst.start()
        self.added.append(inst)
        if not await self.ready_within(inst, 60):
            raise RuntimeError(f"the added {service} was not ready after 60 s; log {inst.log_path}")
        return inst

    async def ready_within(self, inst: Instance, timeout_s: float) -> bool:
        """Whether the instance answered ready within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not await inst.ready(self.client):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def stop(self) -> None:
        if self._watch:
            self._watch.cancel()
        await asyncio.gather(*(inst.stop() for inst in self.added))
        for inst in self.primary.values():
            await inst.stop()
        await self.client.aclose()

    def unexpected_exits(self) -> dict[str, list[int]]:
        out = {s: i.unexpected_exits for s, i in self.primary.items() if i.unexpected_exits}
        for i in self.added:
            if i.unexpected_exits:
                out.setdefault(i.service, []).extend(i.unexpected_exits)
        return out


async def kill_broker(node: int, down_s: float) -> None:
    """``kill -9`` one node of the secured cluster, and start it again ``down_s`` later."""
    for args in (("kill", str(node)), None, ("start", str(node), sys.executable)):
        if args is None:
            await asyncio.sleep(down_s)
            continue
        proc = await asyncio.create_subprocess_exec("bash", str(CLUSTER), *args, cwd=ROOT,
                                                    stdout=subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed: {err.decode()[-500:]}")


async def restart_component(component: str) -> None:
    proc = await asyncio.create_subprocess_exec("bash", str(STACK), "restart", component, cwd=ROOT,
                                                stdout=subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"stack.sh restart {component} failed: {err.decode()[-500:]}")


# ---------------------------------------------------------------------------------------------
# The shop: its ground truth, its checkout


class Shop:
    def __init__(self, kafka: KafkaSettings, rng: random.Random, truth_path: Path, customers: int) -> None:
        self.kafka, self.rng = kafka, rng
        self.truth = open(truth_path, "w")
        self.a = [f"a-{i}" for i in range(customers)]
        self.c = [f"c-{i}" for i in range(customers // 4)]
        self.d = [f"d-{i}" for i in range(customers // 4)]
        self.carts: dict[str, tuple[str, int]] = {}  # cart id -> (customer, value)
        self.by_partition: dict[int, list[str]] = defaultdict(list)  # A customers by their partition
        for cid in self.a:
            self.by_partition[partition_of(cid.encode())].append(cid)
        self.malformed: dict[str, str] = {}  # marker -> topic
        self.published = Counter()
        self.producer: Producer | None = None
        self.n = 0

    async def start(self) -> None:
        self.producer = await start_producer(self.kafka, "chaos-shop")

    async def publish(self, topic: str, key: str, value: bytes, record: dict) -> None:
        """Until the broker acknowledged it; a send that failed may still have been written, so a
        retry can duplicate it (as a real shop's would): the pipeline must not care."""
        while True:
            try:
                await self.producer.send_and_wait(self.kafka.topic(topic), key=key.encode(), value=value)
                break
            except KafkaError as exc:
                record["retries"] = record.get("retries", 0) + 1
                log(f"shop: publish to {topic} failed ({type(exc).__name__}); retrying")
                await asyncio.sleep(0.5)
        self.published[topic] += 1
        self.truth.write(json.dumps({"at": time.time(), "topic": topic, "key": key} | record) + "\n")

    async def event(self, topic: str, e: ev.Event, **record) -> None:
        await self.publish(topic, e.key(), ev.encode(e, source="chaos-shop"), {"type": e.TYPE} | record)

    async def setup(self) -> None:
        """Every customer's consent and registration; customers side by side, each one's events in
        order (a withdrawal after its grants)."""
        now = datetime.now(UTC)
        slots = asyncio.Semaphore(64)

        async def customer(cid: str) -> None:
            async with slots:
                if cid not in self.d:
                    for purpose in ("profiling", "personalized_offers", "email"):
                        await self.event("consent-changed", ev.ConsentChanged(
                            customer_id=cid, purpose=purpose, granted=True, policy_version="2026-11", source="chaos",
                            occurred_at=now))
                if cid in self.c:
                    await self.event("consent-changed", ev.ConsentChanged(
                        customer_id=cid, purpose="personalized_offers", granted=False, policy_version="2026-11",
                        source="chaos", occurred_at=now + timedelta(seconds=1)))
                await self.event("customer-registered", ev.CustomerRegistered(
                    customer_id=cid, preferred_channel="email", registered_at=now,
                    birthday={"month": 1 + self.rng.randrange(12), "day": 1 + self.rng.randrange(28)}))

        await asyncio.gather(*(customer(cid) for cid in self.a + self.c + self.d))

    async def cart(self, cid: str, value: int, cart_id: str | None = None) -> str:
        cart_id = cart_id or f"k-{uuid.uuid4().hex[:10]}"
        self.carts[cart_id] = (cid, value)
        e = ev.CartAbandoned(cart_id=cart_id, customer_id=cid, value=ev.Money(amount=value, currency="USD"),
                             abandoned_at=datetime.now(UTC))
        await self.event("cart-abandoned", e, cart_id=cart_id, value=value)
        if self.rng.random() < 0.03:  # the shop's retry: the same event again
            await self.event("cart-abandoned", e, cart_id=cart_id, value=value, duplicate=True)
        return cart_id

    async def one(self) -> None:
        r = self.rng.random()
        self.n += 1
        if r < 0.01:
            marker = f"chaos-malformed-{uuid.uuid4().hex[:8]}"
            topic = self.rng.choice(["cart-abandoned", "consent-changed", "order-placed"])
            self.malformed[marker] = topic
            await self.publish(topic, self.rng.choice(self.a), b'{"specversion": "1.0", "' + marker.encode(),
                               {"malformed": marker})
            return
        group = self.a if r < 0.75 else self.c if r < 0.87 else self.d
        await self.cart(self.rng.choice(group), CART_BIG if self.rng.random() < 0.7 else CART_SMALL)

    async def load(self, rate: float, stop: asyncio.Event, in_flight: int = 256) -> None:
        """``rate`` events a second, up to ``in_flight`` of them waiting for their acknowledgement at
        once (one at a time cannot reach hundreds a second over TLS with acks=all)."""
        t0, i = time.monotonic(), 0
        slots = asyncio.Semaphore(in_flight)
        pending: set[asyncio.Task] = set()

        async def one() -> None:
            try:
                await self.one()
            finally:
                slots.release()

        while not stop.is_set():
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -5:  # behind after a broker outage: carry on at the rate, do not burst
                t0, i = time.monotonic(), 0
            await slots.acquire()
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        await asyncio.gather(*pending)

    def expected(self) -> set[tuple[str, str]]:
        a = set(self.a)
        return {(cid, f"{SEGMENT}:{cart}") for cart, (cid, value) in self.carts.items() if cid in a and value >= 30_000}

    async def stop(self) -> None:
        if self.producer:
            await self.producer.stop()
        self.truth.close()


class Checkout:
    """The shop's checkout: redeems a third of the chaos-all vouchers as their deliveries arrive,
    retrying through outages with the same Idempotency-Key."""

    def __init__(self, url: str, key: str) -> None:
        self.client = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.redeemed: dict[str, int] = {}  # voucher id -> discount
        self.refused: dict[str, int] = {}
        self.retries = 0
        self.pending = 0  # offered and not yet redeemed or refused
        self.workers = [asyncio.create_task(self._work()) for _ in range(4)]

    def offer(self, d: ev.DeliveryRequested) -> None:
        if d.campaign_id == "chaos-all" and zlib.crc32(d.voucher_id.encode()) % 3 == 0:
            self.pending += 1
            self.queue.put_nowait(d)

    async def _work(self) -> None:
        while True:
            d = await self.queue.get()
            body = {"code": d.code, "customer_id": d.customer_id,
                    "order": {"amount": {"amount": 32_000, "currency": "USD"},
                              "items": [{"sku": "p-1", "brand": "x", "category": "perfume", "quantity": 1,
                                         "unit_price": {"amount": 32_000, "currency": "USD"}}]}}
            while True:
                try:
                    r = await self.client.post("/v1/redemptions", json=body,
                                               headers={"Idempotency-Key": f"chaos-{d.voucher_id}"})
                except httpx.HTTPError:
                    r = None
                if r is not None and r.status_code in (200, 201):
                    self.redeemed[d.voucher_id] = r.json()["discount"]["amount"]
                    break
                if r is not None and r.status_code < 500 and r.status_code not in (408, 429):
                    self.refused[d.voucher_id] = r.status_code
                    break
                self.retries += 1
                await asyncio.sleep(0.5)
            self.pending -= 1

    async def stop(self) -> None:
        for w in self.workers:
            w.cancel()
        await self.client.aclose()


# ---------------------------------------------------------------------------------------------
# What the run observes on Kafka


class Observer:
    """Reads voucher-issued, delivery-requested, consent-state and budget-counters from the start,
    without a consumer group, through every broker restart."""

    def __init__(self, kafka: KafkaSettings, checkout: Checkout | None = None) -> None:
        self.kafka = kafka
        self.issued: dict[tuple[str, str], int] = {}  # (campaign, trigger) -> ledger seq
        self.deliveries: Counter = Counter()  # voucher id -> messages
        self.consent_keys: set[str] = set()
        self.counters: dict[str, ev.BudgetCounters] = {}
        self.checkout = checkout
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        names = ["voucher-issued", "delivery-requested", "consent-state", "budget-counters"]
        self.consumer = AIOKafkaConsumer(*(self.kafka.topic(n) for n in names), **self.kafka.client_options(),
                                         group_id=None, auto_offset_reset="earliest")
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with datakeys.reader() as keys:
            await self._observe(keys)

    async def _observe(self, keys) -> None:
        topic = {self.kafka.topic(n): n for n in ("voucher-issued", "delivery-requested", "consent-state", "budget-counters")}
        while True:
            try:
                batch = await self.consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                log(f"observer: {type(exc).__name__}; retrying")
                await asyncio.sleep(0.5)
                continue
            for tp, records in batch.items():
                name = topic[tp.topic]
                while True:  # the sealed fields opened (PostgreSQL may be down for a while)
                    try:
                        values = await keys.opened([r.value for r in records])
                        break
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                        log(f"observer: data keys unavailable ({type(exc).__name__}); retrying")
                        await asyncio.sleep(0.5)
                for r, value in zip(records, values, strict=True):
                    if name == "consent-state":
                        self.consent_keys.add(r.key.decode())
                        continue
                    try:
                        e = ev.decode(value)[1]
                    except Exception as exc:
                        log(f"observer: cannot decode {name}@{r.partition}:{r.offset}: {exc}")
                        continue
                    if name == "voucher-issued":
                        self.issued[(e.campaign_id, e.trigger_key)] = e.ledger.seq
                    elif name == "delivery-requested":
                        if not isinstance(e, ev.DeliveryRequested):
                            continue  # a cancellation after a withdrawal, not a second delivery
                        self.deliveries[e.voucher_id] += 1
                        if self.checkout and self.deliveries[e.voucher_id] == 1:
                            self.checkout.offer(e)
                    else:
                        self.counters[e.campaign_id] = e

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        await self.consumer.stop()


async def read_all(kafka: KafkaSettings, names: list[str]) -> list:
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(n, p) for n in names for p in sorted(await partition_ids(kafka, n))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def group_lags(kafka: KafkaSettings, prefix: str, patience_s: float = 120) -> dict[str, int]:
    """Each of the run's consumer groups: messages not yet committed on its input topics."""
    return {g: end - committed for g, (committed, end) in (await group_offsets(kafka, prefix, patience_s)).items()}


async def group_offsets(kafka: KafkaSettings, prefix: str, patience_s: float = 120) -> dict[str, tuple[int, int]]:
    """Each of the run's consumer groups: (offsets committed, log-end offsets) summed over its
    input partitions. An answer the broker marks retriable (a coordinator still loading its
    groups after a broker came back, a leader moving) is asked again until `patience_s` passed."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return await _group_offsets(kafka, prefix)
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def _group_offsets(kafka: KafkaSettings, prefix: str) -> dict[str, tuple[int, int]]:
    admin = AIOKafkaAdminClient(**kafka.client_options())
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=None)
    await admin.start()
    await consumer.start()
    try:
        groups = [g[0] for g in await admin.list_consumer_groups() if g[0].startswith(prefix)]
        out = {}
        for g in groups:
            offsets = await admin.list_consumer_group_offsets(g)
            tps = [tp for tp in offsets if not tp.topic.endswith("-changelog")]
            ends = await consumer.end_offsets(tps) if tps else {}
            committed = {tp: min(offsets[tp].offset, ends[tp]) for tp in tps}
            out[g.removeprefix(prefix)] = (sum(committed.values()), sum(ends[tp] for tp in tps))
        return out
    finally:
        await consumer.stop()
        await admin.close()


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Fault:
    kind: str
    target: str
    at: float
    healed_at: float = 0.0
    recovered_s: float | None = None
    note: str = ""


@dataclass
class Plan:
    minutes: float
    rate: float
    kills: int
    pauses: int
    extras: int
    broker_restarts: int
    pg_restarts: int
    customers: int
    tight_capacity: int
    seed: int
    recovery_timeout_s: float = 240.0
    broker_kills: int = 0  # on the secured cluster: kill -9 one of three brokers, start it again
    broker_down_s: tuple[float, float] = (10, 20)  # how long a killed broker stays down
    faults: list[Fault] = field(default_factory=list)


class Run:
    def __init__(self, plan: Plan, workdir: Path, cluster=None) -> None:
        self.plan, self.workdir, self.cluster = plan, workdir, cluster
        self.rng = random.Random(plan.seed)
        self.prefix = f"chaos-{uuid.uuid4().hex[:8]}."
        # On the secured cluster the run reads as the admin and publishes as the shop; the
        # services log in as themselves.
        self.kafka = cluster.settings("admin", self.prefix) if cluster else KafkaSettings(topic_prefix=self.prefix)
        self.shop_kafka = cluster.settings("shop", self.prefix) if cluster else self.kafka
        self.schemas = {s: f"chaos_{s}_{uuid.uuid4().hex[:6]}" for s in SERVICES}
        env = (cluster.service_env() if cluster else {}) | {
               "VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": self.prefix, "CONSENT_PRIVACY_SERVICES": ",".join(SERVICES),
               "VOUCHERSTREAM_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_S * 1000)}
        for s in SERVICES:
            env[f"{s.upper()}_LOG_LEVEL"] = "WARNING"
        for s, schema in self.schemas.items():
            env[f"{s.upper()}_SCHEMA_NAME"] = schema
        self.fleet = Fleet(env, workdir)
        self.samples = 0
        self.violations: list[dict] = []
        self.sample_errors = 0
        self.probes = 0

    # -- pieces

    async def sample_invariant(self, stop: asyncio.Event) -> None:
        """``reserved + spent <= limit`` for every campaign, once a second, from the ledger itself."""
        dsn = PostgresSettings().dsn.get_secret_value()
        conn = None
        while not stop.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(dsn, timeout=3)
                rows = await conn.fetch(f"SELECT campaign_id, limit_minor, reserved, spent FROM "
                                        f"{self.schemas['issuance']}.budget_ledger")
                self.samples += 1
                for r in rows:
                    if r["reserved"] + r["spent"] > r["limit_minor"] or r["reserved"] < 0:
                        self.violations.append(dict(r) | {"at": time.time()})
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError,
                    TimeoutError):
                # (a PostgreSQL restart can leave the connection mid-operation: "cannot switch to
                # state ...; another operation is in progress" — a fresh connection next time)
                self.sample_errors += 1
                if conn is not None:
                    conn.terminate()
                conn = None
            await asyncio.sleep(1)
        if conn is not None:
            await conn.close()

    async def probe(self, shop: Shop, observer: Observer, since: float) -> float | None:
        """Recovered means: a new consent reaches consent-state, a new cart of a consented customer
        on *every* partition becomes a voucher, analytics counts them, and every service answers
        ready."""
        self.probes += 1
        n = self.probes
        await shop.event("consent-changed", ev.ConsentChanged(customer_id=f"probe-{n}", purpose="email", granted=True,
                                                              policy_version="2026-11", source="chaos-probe",
                                                              occurred_at=datetime.now(UTC)), probe=n)
        carts = [await shop.cart(self.rng.choice(customers), CART_BIG, cart_id=f"probe-{n}-p{p}")
                 for p, customers in sorted(shop.by_partition.items())]
        deadline = since + self.plan.recovery_timeout_s
        while time.monotonic() < deadline:
            seqs = [observer.issued.get(("chaos-all", f"{SEGMENT}:{cart}")) for cart in carts]
            counted = observer.counters.get("chaos-all")
            if (None not in seqs and f"probe-{n}" in observer.consent_keys and counted is not None
                    and counted.ledger.seq >= max(seqs) and await self.fleet.all_ready()):
                return time.monotonic() - since
            await asyncio.sleep(0.2)
        waiting = [c for c in carts if ("chaos-all", f"{SEGMENT}:{c}") not in observer.issued]
        log(f"probe {n}: carts without a voucher {waiting}, consent-state {f'probe-{n}' in observer.consent_keys}, "
            f"counters {getattr(observer.counters.get('chaos-all'), 'ledger', None)}, ready {await self.fleet.all_ready()}")
        return None

    def schedule(self) -> list[tuple[str, str]]:
        p = self.plan
        kinds = (["kill"] * p.kills + ["pause"] * p.pauses + ["extra"] * p.extras
                 + ["broker"] * p.broker_restarts + ["postgres"] * p.pg_restarts + ["broker-kill"] * p.broker_kills)
        self.rng.shuffle(kinds)
        return [(k, self.rng.choice(SERVICES) if k in ("kill", "pause", "extra")
                 else f"node {1 + self.rng.randrange(3)}" if k == "broker-kill" else k) for k in kinds]

    async def during_load(self, shop: Shop, observer: Observer) -> None:
        """What happens while the shop publishes: here the faults (tests/chaos/scale_out.py: replicas)."""
        await self.inject(shop, observer)

    async def inject(self, shop: Shop, observer: Observer) -> None:
        faults = self.schedule()
        budget = self.plan.minutes * 60
        gap = budget / max(1, len(faults))
        start = time.monotonic()
        for i, (kind, target) in enumerate(faults):
            due = start + i * gap + self.rng.uniform(0, gap / 3)
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            fault = Fault(kind, target, at=time.time())
            self.plan.faults.append(fault)
            t0 = time.monotonic()
            log(f"fault {i + 1}/{len(faults)}: {kind} {target}")
            try:
                if kind == "kill":
                    await self.fleet.kill9(target)
                elif kind == "pause":
                    await self.fleet.pause(target, SESSION_TIMEOUT_S + 5)
                elif kind == "extra":
                    await self.fleet.extra(target, self.rng.uniform(15, 30))
                elif kind == "broker-kill":
                    await kill_broker(int(target.split()[-1]), down_s=self.rng.uniform(*self.plan.broker_down_s))
                else:
                    await restart_component("kafka" if kind == "broker" else "postgres")
            except Exception as exc:
                fault.note = f"{type(exc).__name__}: {exc}"
                log(f"fault {kind} {target} failed to apply: {fault.note}")
            fault.healed_at = time.time()
            healed = time.monotonic()
            fault.recovered_s = await self.probe(shop, observer, healed)
            log(f"  recovered in {fault.recovered_s:.1f} s" if fault.recovered_s is not None
                else f"  NOT recovered within {self.plan.recovery_timeout_s} s")
            _ = t0

    async def quiesce(self, checkout: Checkout, timeout: float = 300) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        pool = await asyncpg.connect(PostgresSettings().dsn.get_secret_value())
        try:
            while True:
                lags = await group_lags(self.kafka, self.prefix)
                outbox = 0
                for s in SERVICES:
                    with contextlib.suppress(asyncpg.UndefinedTableError):
                        outbox += await pool.fetchval(f"SELECT count(*) FROM {self.schemas[s]}.outbox")
                if not any(lags.values()) and outbox == 0 and checkout.pending == 0:
                    await asyncio.sleep(3)  # budget-counters: at most one a second per campaign
                    return lags
                if time.monotonic() > deadline:
                    log(f"not quiet after {timeout} s: lags {lags}, outbox {outbox}, checkout {checkout.pending}")
                    return lags
                await asyncio.sleep(1)
        finally:
            await pool.close()

    async def check(self, shop: Shop, observer: Observer, checkout: Checkout, lags: dict[str, int]) -> dict:
        conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                     server_settings={"search_path": self.schemas["issuance"]})
        try:
            vouchers = await conn.fetch("SELECT id, campaign_id, customer_id, trigger_key, status FROM vouchers")
            attempts = await conn.fetch("SELECT campaign_id, customer_id, trigger_key, outcome, reason FROM issuance_attempts")
            ledger = {r["campaign_id"]: dict(r) for r in await conn.fetch("SELECT * FROM budget_ledger")}
            redemptions = await conn.fetch("SELECT voucher_id, discount, status FROM redemptions")
        finally:
            await conn.close()
        expected = shop.expected()
        checks: dict[str, dict] = {}

        def record(name: str, ok: bool, **detail) -> None:
            checks[name] = {"ok": bool(ok)} | detail

        by = defaultdict(Counter)
        for v in vouchers:
            by[v["campaign_id"]][(v["customer_id"], v["trigger_key"])] += 1
        got_all = by["chaos-all"]
        record("every eligible trigger gave exactly one voucher (chaos-all)",
               set(got_all) == expected and all(n == 1 for n in got_all.values()),
               expected=len(expected), vouchers=sum(got_all.values()),
               missing=len(expected - set(got_all)), unexpected=len(set(got_all) - expected),
               duplicated=sum(1 for n in got_all.values() if n > 1))
        got_tight = by["chaos-tight"]
        tight_attempts = {(a["customer_id"], a["trigger_key"]): a for a in attempts if a["campaign_id"] == "chaos-tight"}
        want = min(len(expected), self.plan.tight_capacity)
        record("the tight budget gave exactly its capacity, each to a right trigger, the rest denied",
               sum(got_tight.values()) == want and set(got_tight) <= expected
               and all(n == 1 for n in got_tight.values()) and set(tight_attempts) >= expected
               and all(a["outcome"] == "issued" or a["reason"] == "budget_exhausted"
                       for k, a in tight_attempts.items() if k in expected),
               capacity=self.plan.tight_capacity, triggers=len(expected), vouchers=sum(got_tight.values()))
        others = {v["customer_id"] for v in vouchers} - set(shop.a)
        record("no voucher for anyone without consent (C withdrew, D never agreed)", not others, customers=len(others))
        deliveries = observer.deliveries
        ids = {v["id"] for v in vouchers}
        record("every voucher delivered exactly once", set(deliveries) == ids and all(n == 1 for n in deliveries.values()),
               vouchers=len(ids), delivered=len(deliveries), duplicate_messages=sum(n - 1 for n in deliveries.values()))
        record("budget invariant reserved + spent <= limit at every sample", self.samples > 0 and not self.violations,
               samples=self.samples, violations=len(self.violations), samples_missed_while_db_down=self.sample_errors)
        spent = sum(r["discount"] for r in redemptions if r["status"] == "redeemed")
        record("redemptions through faults: each once, the ledger spent equals what the checkout was given",
               len(redemptions) == len(checkout.redeemed) and spent == sum(checkout.redeemed.values())
               and spent == ledger["chaos-all"]["spent"] and not checkout.refused,
               redeemed=len(checkout.redeemed), refused=len(checkout.refused), retries=checkout.retries, spent=spent)
        mismatches = {}
        for cid, row in ledger.items():
            c = observer.counters.get(cid)
            n_vouchers = sum(by[cid].values())
            n_redeemed = sum(1 for v in vouchers if v["campaign_id"] == cid and v["status"] == "redeemed")
            mine = (row["limit_minor"], row["reserved"], row["spent"], row["seq"], n_vouchers, n_redeemed)
            theirs = (c.ledger.limit, c.ledger.reserved, c.ledger.spent, c.ledger.seq, c.issued, c.redeemed) if c else None
            if mine != theirs:
                mismatches[cid] = {"ledger": mine, "budget-counters": theirs}
        record("analytics budget-counters equal the issuance ledger", not mismatches, campaigns=len(ledger),
               mismatches=mismatches)
        dlq = await read_all(self.kafka, [name for name, _ in topics.all_topics(self.prefix)
                                                    if name.endswith(topics.DLQ_SUFFIX)])
        dead, other = {}, Counter()
        for r in dlq:
            reason = dict(r.headers).get("dlq.reason", b"").decode()
            marker = next((m for m in shop.malformed if m.encode() in (r.value or b"")), None)
            if marker:
                dead.setdefault(marker, reason)
            else:  # a good event dead-lettered: an infrastructure failure taken for a bad message
                other[f"{r.topic.removeprefix(self.prefix)}: {reason}"] += 1
        record("every input processed (no lag) or dead-lettered with a reason, and only bad input dead-lettered",
               not any(lags.values()) and set(dead) == set(shop.malformed) and all(dead.values()) and not other,
               lags=lags, malformed=len(shop.malformed), dead_lettered=len(dead), good_events_dead_lettered=dict(other))
        unrecovered = [asdict(f) for f in self.plan.faults if f.recovered_s is None or f.note]
        exits = self.fleet.unexpected_exits()
        record("each service recovered from each fault by itself", not unrecovered and not exits,
               unrecovered=unrecovered, unexpected_exits=exits)
        return checks

    async def _run(self, shop: Shop, observer: Observer, checkout: Checkout) -> dict:
        p = self.plan
        log(f"shop: {len(shop.a)} consenting customers, {len(shop.c)} who withdrew, {len(shop.d)} who never agreed")
        await shop.setup()
        deadline = time.monotonic() + 120
        while len(observer.consent_keys) < len(shop.a) + len(shop.c) or any(
                (await group_lags(self.kafka, self.prefix)).values()):
            if time.monotonic() > deadline:
                raise RuntimeError("consents did not settle in 120 s")
            await asyncio.sleep(0.5)
        log(f"consents settled; load at {p.rate}/s for {p.minutes} min with {len(self.schedule())} faults")
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample_invariant(stop))
        load = asyncio.create_task(shop.load(p.rate, stop))
        t0 = time.monotonic()
        await self.during_load(shop, observer)
        if (rest := p.minutes * 60 - (time.monotonic() - t0)) > 0:
            await asyncio.sleep(rest)
        stop.set()
        await load
        self.load_seconds = time.monotonic() - t0
        log("load stopped; waiting for every group to catch up")
        lags = await self.quiesce(checkout)
        await stop_task(sampler)
        return await self.check(shop, observer, checkout, lags)

    async def go(self) -> dict:
        p = self.plan
        if self.cluster:
            from bench.cluster import prepare

            await prepare(self.cluster, self.prefix)
        else:
            await topics.ensure_topics(self.kafka, self.prefix, report=lambda *_: None)
        shop = Shop(self.shop_kafka, self.rng, self.workdir / "ground-truth.jsonl", p.customers)
        await shop.start()
        checkout = observer = None
        try:
            log(f"starting the four services (topics {self.prefix}*, logs in {self.workdir})")
            await self.fleet.start()
            conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                         server_settings={"search_path": self.schemas["issuance"]})
            _, key = await auth.create_key(conn, "chaos", ["checkout", "marketing"])
            await conn.close()
            async with httpx.AsyncClient(base_url=self.fleet.url("issuance"),
                                         headers={"Authorization": f"Bearer {key}"}) as c:
                for cid, limit in (("chaos-all", 10**12), ("chaos-tight", p.tight_capacity * FEE)):
                    r = await c.post("/v1/campaigns", json=campaign(cid, limit))
                    if r.status_code != 201:
                        raise RuntimeError(f"creating {cid}: {r.status_code} {r.text}")
            checkout = Checkout(self.fleet.url("issuance"), key)
            observer = Observer(self.kafka, checkout)
            await observer.start()
            checks = await self._run(shop, observer, checkout)
        finally:
            for part in (observer, checkout, shop, self.fleet):
                if part is not None:
                    with contextlib.suppress(Exception):
                        await part.stop()
        result = {"prefix": self.prefix, "minutes": p.minutes, "rate_per_s": p.rate, "seconds": round(self.load_seconds),
                  "published": dict(shop.published), "carts": len(shop.carts), "faults": [asdict(f) for f in p.faults],
                  "checks": checks, "passed": all(c["ok"] for c in checks.values()), "broker_down_s": list(p.broker_down_s)}
        if result["passed"]:
            if self.cluster:
                from bench.cluster import retire

                await retire(self.kafka)
            else:
                await topics.delete_topics(self.kafka, self.prefix)
            await drop_schemas(self.schemas.values())
        return result


async def stop_task(task: asyncio.Task) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def drop_schemas(schemas) -> None:
    conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value())
    try:
        for s in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
    finally:
        await conn.close()


def summary(result: dict) -> dict[str, dict]:
    by = defaultdict(list)
    for f in result["faults"]:
        by[f["kind"]].append(f["recovered_s"])
    return {k: {"count": len(v), "recovered": sum(x is not None for x in v),
                "median_s": round(statistics.median([x for x in v if x is not None]), 1) if any(x is not None for x in v) else None,
                "max_s": round(max(x for x in v if x is not None), 1) if any(x is not None for x in v) else None}
            for k, v in sorted(by.items())}


def report(result: dict, command: str) -> str:
    lines = [f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}`: "
             f"{result['seconds']} s of load aimed at {result['rate_per_s']:g} shop events/s, "
             f"{sum(result['published'].values()):,} events published ({result['carts']:,} carts; "
             f"{sum(result['published'].values()) / max(1, result['seconds']):,.0f}/s achieved, the shop's sends "
             "waiting for acks=all through the faults)" + (" on the secured three-broker cluster" if result.get("cluster")
                                                          else "") + ".", "",
             "| fault | count | recovered | recovery median | recovery max |", "|---|---:|---:|---:|---:|"]
    names = {"kill": "kill -9 a service (restarted)", "pause": f"SIGSTOP {SESSION_TIMEOUT_S + 5} s (> session timeout)",
             "extra": "a second instance for 15–30 s", "broker": "Kafka broker restart", "postgres": "PostgreSQL restart",
             "broker-kill": "kill -9 one of three brokers (cluster), started again {:g}–{:g} s later".format(
                 *result.get("broker_down_s", (10, 20)))}
    for kind, s in summary(result).items():
        lines.append(f"| {names.get(kind, kind)} | {s['count']} | {s['recovered']} | {s['median_s']} s | {s['max_s']} s |")
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    for name, c in result["checks"].items():
        detail = ", ".join(f"{k} {v}" for k, v in c.items() if k != "ok" and not isinstance(v, (dict, list)) or
                           (isinstance(v, (dict, list)) and v))
        lines.append(f"| {name} | {'pass' if c['ok'] else '**FAIL**'} | {detail} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=20, help="shop events per second")
    parser.add_argument("--kills", type=int, default=36)
    parser.add_argument("--pauses", type=int, default=6)
    parser.add_argument("--extras", type=int, default=6)
    parser.add_argument("--broker-restarts", type=int, default=4)
    parser.add_argument("--pg-restarts", type=int, default=4)
    parser.add_argument("--cluster", action="store_true", help="on the secured three-broker cluster "
                        "(deploy/local/cluster.sh, started if down): every service as its own principal, faults "
                        "--broker-kills, nothing else unless asked")
    parser.add_argument("--broker-kills", type=int, default=None, help="with --cluster: kill -9 a broker (default 3, "
                        "1 with --short)")
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--tight-capacity", type=int, default=0, help="default: a third of the expected triggers")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--short", action="store_true", help="the make-test version: 2 minutes of load, every fault "
                        "kind (with --cluster: 30 s, one broker down 3-6 s)")
    parser.add_argument("--report", type=Path, help="write the report (markdown) into this file's CHAOS-REPORT block")
    parser.add_argument("--json", type=Path, help="write the whole result as JSON")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a broker restart is expected here
    broker_kills = 0
    if args.cluster:
        # The cluster run's fault is the broker kill; the single-broker faults stay with the plain run.
        args.kills = args.pauses = args.extras = args.broker_restarts = args.pg_restarts = 0
        broker_kills = args.broker_kills if args.broker_kills is not None else (1 if args.short else 3)
        if args.short:
            args.minutes, args.customers = 0.5, 200
    elif args.short:
        args.minutes, args.kills, args.pauses, args.extras, args.broker_restarts, args.pg_restarts = 2, 3, 1, 1, 1, 1
        args.customers = 120
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    expected_triggers = args.rate * args.minutes * 60 * 0.75 * 0.7
    plan = Plan(minutes=args.minutes, rate=args.rate, kills=args.kills, pauses=args.pauses, extras=args.extras,
                broker_restarts=args.broker_restarts, pg_restarts=args.pg_restarts, broker_kills=broker_kills,
                broker_down_s=(3, 6) if args.short else (10, 20),
                customers=args.customers,
                tight_capacity=args.tight_capacity or max(10, int(expected_triggers / 3)), seed=seed)
    workdir = ROOT / ".local" / "chaos" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"seed {seed}; ground truth and service logs in {workdir}")
    with contextlib.ExitStack() as stack:
        cluster = None
        if args.cluster:
            from bench.cluster import running

            cluster = stack.enter_context(running())
        result = asyncio.run(Run(plan, workdir, cluster).go())
    result["cluster"] = bool(cluster)
    result["seed"] = seed
    (workdir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    command = " ".join(["python -m tests.chaos.harness"] + sys.argv[1:]) if args.cluster or args.short else "make chaos"
    text = report(result, command)
    print(text)
    if args.report:
        doc = args.report.read_text()
        block = "CLUSTER-CHAOS-REPORT" if args.cluster else "CHAOS-REPORT"
        begin, end = f"<!-- {block} -->", f"<!-- /{block} -->"
        head, _, rest = doc.partition(begin)
        _, _, tail = rest.partition(end)
        args.report.write_text(f"{head}{begin}\n{text}{end}{tail}")
    log("PASSED" if result["passed"] else f"FAILED (kept topics {result['prefix']}* and schemas for inspection)")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
