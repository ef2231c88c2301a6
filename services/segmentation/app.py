"""Wiring of the segmentation service: a faust-streaming app (tables backed by changelog topics)
and a small HTTP API, in one process and one event loop.

One agent reads every input topic — the shop's customer topics, ``consent-state``, the privacy
requests and the internal ticks — all keyed by customer with the same partition count, so each
customer's consent, profile and events meet on the same partition and the same worker. The agent
catches every failure per message and dead-letters it; it never dies on one message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import time
from datetime import datetime
from typing import Any

import faust
from faust.types import TP
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2
from fastapi import FastAPI, HTTPException, Path
from prometheus_client import Counter, Gauge

from services.segmentation import profile as prof
from services.segmentation import rules
from services.segmentation.settings import SegmentationSettings
from services.segmentation.watchdog import StallDetector
from shared import events as ev
from shared import logs
from shared.kafka import DeadLetter, dlq_headers
from shared.metrics import Metrics
from shared.service import ErrorOut, http_app
from shared.topics import CUSTOMER_PARTITIONS, topic as registry_topic

log = logging.getLogger(__name__)
SOURCE = "voucherstream/segmentation"
SHOP_TOPICS = ("customer-registered", "customer-updated", "order-placed", "cart-abandoned")
INPUTS = SHOP_TOPICS + ("consent-state", "erasure-requested", "export-requested", "segmentation-ticks")


class SegmentationMetrics(Metrics):
    def __init__(self, service: str = "segmentation", registry=None) -> None:
        super().__init__(service, registry)
        r = self.registry
        self.events = Counter("voucherstream_segmentation_events_total", "Events by type and outcome",
                              ["type", "outcome"], registry=r)
        self.entries = Counter("voucherstream_segment_entries_total", "Segment entries emitted", ["segment"], registry=r)
        self.table_size = Gauge("voucherstream_segmentation_table_entries", "Entries in this worker's tables",
                                ["table"], registry=r)
        self.rules_version = Gauge("voucherstream_segmentation_rules_info", "The rule set in force", ["version"],
                                   registry=r)
        self.skipped = Counter("voucherstream_segmentation_skipped_offsets_recovered_total",
                               "Messages faust's consumer skipped (an offset jump on a non-compacted topic), read "
                               "back and processed by the agent", ["topic"], registry=r)
        self.stalls = Counter("voucherstream_segmentation_partition_stalls_total",
                              "Partitions found with messages waiting and no progress, by what was done",
                              ["action"], registry=r)


def partition_of(key: bytes, partitions: int = CUSTOMER_PARTITIONS) -> int:
    """Kafka's default (Java client) partitioner: murmur2 of the key. The shop must partition
    the same way (librdkafka/kcat: ``partitioner=murmur2_random``) so a customer's events and
    consent meet on one partition."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class SegmentationService:
    def __init__(self, settings: SegmentationSettings) -> None:
        self.settings = settings
        self.metrics = SegmentationMetrics(settings.service)
        self.ruleset = rules.load(settings.rules_file)
        self._rules_mtime = settings.rules_file.stat().st_mtime
        self.metrics.rules_version.labels(self.ruleset.version).set(1)
        k = settings.kafka
        self.app = faust.App(
            settings.group_id,
            broker=f"kafka://{k.bootstrap}",
            store="memory://",
            # Tables live in memory (rebuilt from their changelogs); faust still makes a data
            # folder, which belongs in the temporary directory, not wherever the service started.
            datadir=os.path.join(tempfile.gettempdir(), "voucherstream-faust-{conf.name}"),
            topic_partitions=CUSTOMER_PARTITIONS,
            topic_replication_factor=1,
            table_standby_replicas=settings.standby_replicas,
            web_enabled=False,
            autodiscover=False,
            producer_acks=-1,
            producer_linger=0.01,  # batch changelog and output records (one produce request per event otherwise)
            consumer_auto_offset_reset="earliest",
            # After a broker restart a partition whose fetch failed waits for the next metadata
            # refresh (5 minutes by default) before it is fetched again: refresh every 30 s.
            consumer_metadata_max_age_ms=30_000,
            producer_metadata_max_age_ms=30_000,
            broker_session_timeout=k.session_timeout_ms / 1000,
            broker_heartbeat_interval=k.heartbeat_interval_ms / 1000,
            stream_buffer_maxsize=4096,
            logging_config=None,
            loghandlers=[],
        )
        self.names = {k.topic(name): name for name in INPUTS}
        self.source = self.app.topic(*self.names, key_serializer="raw", value_serializer="raw")
        self.out = {name: self.app.topic(k.topic(name), key_serializer="raw", value_serializer="raw",
                                         partitions=CUSTOMER_PARTITIONS)
                    for name in ("segment-entered", "erasure-completed", "export-completed", "segmentation-ticks")}
        # Values are plain JSON (no faust Record types): what a restarted worker reads back from the
        # changelog is exactly what was written.
        self.consent = self.app.Table("profiling-consent", default=None, partitions=CUSTOMER_PARTITIONS,
                                      key_type=str)
        self.profiles = self.app.Table("profiles", default=None, partitions=CUSTOMER_PARTITIONS,
                                       key_type=str)
        self.app.agent(self.source, name="segment")(self._agent)
        self.app.timer(settings.daily_tick_interval_s)(self._daily)
        self.app.timer(settings.rules_check_interval_s)(self._reload_rules)
        self.app.timer(5.0)(self._gauges)
        self.app.timer(settings.stall_check_interval_s)(self._watchdog)
        self.stalls = StallDetector(settings.stall_timeout_s)
        # The next offset the agent expects per input partition (set from the group's committed
        # offsets at each assignment): a jump past it on a non-compacted topic means faust skipped
        # messages, which are read back and processed before the one that revealed the jump.
        self._next: dict[tuple[str, int], int] = {}
        self._side: AIOKafkaConsumer | None = None
        self._baselines: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self._watched: frozenset = frozenset()
        self._admin: AIOKafkaAdminClient | None = None
        self.exit_code = 0
        self.handled = 0
        self.started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.app.start()
        self.started = True
        log.info("service started", extra={"service": self.settings.service})

    async def stop(self) -> None:
        self.started = False
        if self._admin is not None:
            await self._admin.close()
            self._admin = None
        if self._side is not None:
            await self._side.stop()
            self._side = None
        await self.app.stop()
        log.info("service stopped", extra={"service": self.settings.service})

    # ------------------------------------------------------------------ the agent

    async def _agent(self, stream) -> None:
        async for event in stream.events():
            message = event.message
            if self._baselines is not None:  # the first message since an assignment
                baselines, self._baselines = self._baselines, None
                self._next = await baselines
            where = (message.topic, message.partition)
            expected = self._next.get(where)
            if expected is not None and message.offset > expected and not self._compacted(message.topic):
                await self._recover_skipped(message.topic, message.partition, expected, message.offset)
            await self._process(message.topic, message.partition, message.offset, message.key, message.value)
            self._next[where] = max(expected or 0, message.offset + 1)
            self.stalls.handled(where, message.offset, time.monotonic())

    async def _process(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        name = self.names.get(topic, topic)
        try:
            await self.handle(name, partition, key, value)
        except ev.ContractError as exc:
            await self.dead_letter(topic, partition, offset, key, value, exc.reason, exc.detail)
        except Exception as exc:  # noqa: BLE001 - one message never kills the agent
            log.exception("segmentation failed on a message; dead-lettering it",
                          extra={"topic": name, "partition": partition, "offset": offset})
            await self.dead_letter(topic, partition, offset, key, value, "handler_error", f"{type(exc).__name__}: {exc}")
        self.handled += 1

    def _compacted(self, topic: str) -> bool:
        name = self.names.get(topic)
        return name is None or registry_topic(name).compacted

    async def _on_assigned(self, sender, assigned, **_) -> None:
        """At each assignment faust seeks every partition back to its committed offset: that is
        where the agent's next message must be. Read after the rebalance (not inside faust's
        callback, which may run on its consumer thread); the agent waits for it before its next
        message."""
        self._next.clear()
        tps = [TopicPartition(tp.topic, tp.partition) for tp in assigned if tp.topic in self.names]
        self._baselines = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._read_baselines(tps), self._loop), loop=self._loop)

    async def _read_baselines(self, tps: list[TopicPartition]) -> dict[tuple[str, int], int]:
        if not tps:
            return {}
        try:
            return await self._starts(tps)
        except Exception as exc:  # noqa: BLE001 - then the first message of each partition is the baseline
            log.warning("committed offsets unavailable after an assignment; skipped-offset checks start with the "
                        "next message", extra={"error": repr(exc)})
            return {}

    async def _starts(self, tps: list[TopicPartition]) -> dict[tuple[str, int], int]:
        """Where this worker starts on each partition: the group's committed offset, or the log's
        beginning for a partition the group never committed (auto_offset_reset is earliest)."""
        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka.bootstrap)
            await self._admin.start()
        group = await asyncio.wait_for(self._admin.list_consumer_group_offsets(
            self.settings.group_id, partitions=tps), timeout=10)
        starts = await asyncio.wait_for((await self._side_consumer()).beginning_offsets(tps), timeout=10)
        starts.update({tp: meta.offset for tp, meta in group.items() if meta.offset >= 0})
        return {(tp.topic, tp.partition): offset for tp, offset in starts.items()}

    async def _side_consumer(self) -> AIOKafkaConsumer:
        """A consumer outside the group: offsets for the watchdog, skipped ranges for the agent."""
        if self._side is None:
            self._side = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka.bootstrap, group_id=None,
                                          enable_auto_commit=False, auto_offset_reset="earliest")
            await self._side.start()
        return self._side

    async def _recover_skipped(self, topic: str, partition: int, start: int, end: int) -> None:
        """Reads offsets [start, end) of a partition — messages faust's consumer dropped without
        handing them to the agent — processes them, in order, and records them as done with faust
        (a gap), so that its offset commit moves past them."""
        tp = TopicPartition(topic, partition)
        side = await self._side_consumer()
        side.assign([tp])
        side.seek(tp, start)
        found, position = 0, start
        deadline = time.monotonic() + 60
        while position < end and time.monotonic() < deadline:
            batch = await side.getmany(tp, timeout_ms=1000, max_records=500)
            for record in batch.get(tp, []):
                if record.offset >= end:
                    position = end
                    break
                await self._process(topic, partition, record.offset, record.key, record.value)
                found += 1
                position = record.offset + 1
            else:
                position = max(position, await side.position(tp))
        if position > start:
            # faust commits only an unbroken run of acknowledged offsets past its last commit;
            # offsets it skipped without recording a gap (its read position was unknown, after
            # a rebalance) would hold the group's commit back for good. They are done now.
            await self.app.consumer._add_gap(TP(topic, partition), start, position - 1)
        self.metrics.skipped.labels(self.names.get(topic, topic)).inc(found)
        log.warning("faust's consumer skipped messages; read back and processed here",
                    extra={"topic": self.names.get(topic, topic), "partition": partition, "from_offset": start,
                           "to_offset": end - 1, "processed": found, "complete": position >= end})

    async def dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                          reason: str, detail: str) -> None:
        name = self.names.get(topic, topic)
        dead = DeadLetter(topic, partition, offset, key, value, reason, detail)
        await self.app.producer.send_and_wait(self.settings.kafka.topic(registry_topic(name).dlq), key,
                                              value, partition=None, timestamp=None,
                                              headers=dlq_headers(dead, self.settings.group_id))
        self.metrics.dead_letters.labels(self.metrics.service, name, reason).inc()
        self.metrics.events.labels(name, "dead_lettered").inc()

    async def handle(self, name: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        spec = registry_topic(name)
        if name == "consent-state" and value is None:  # tombstone: the customer was erased
            self.forget(key.decode())
            self.metrics.events.labels(name, "tombstone").inc()
            return
        _, event = ev.decode(value, spec.events)
        if key is None or event.key() != key.decode():
            raise ev.ContractError("key_mismatch", f"message key does not match data.{event.KEY_FIELD}")
        if name != "segmentation-ticks" and partition_of(key) != partition:
            raise ev.ContractError("wrong_partition", f"key belongs on partition {partition_of(key)}, not {partition}: "
                                   "publish with Kafka's default murmur2 partitioner")
        now = prof.utc_now()
        if isinstance(event, ev.ConsentState):
            self.on_consent(event)
        elif isinstance(event, ev.ErasureRequested):
            self.forget(event.customer_id)
            await self.send("erasure-completed", ev.ErasureCompleted(
                request_id=event.request_id, customer_id=event.customer_id, service="segmentation",
                completed_at=now, erased={"profiles": 1, "consent": 1}))
        elif isinstance(event, ev.ExportRequested):
            await self.send("export-completed", ev.ExportCompleted(
                request_id=event.request_id, customer_id=event.customer_id, service="segmentation",
                completed_at=now, data={"profiling_consent_since": self.consent.get(event.customer_id),
                                        "profile": self.profiles.get(event.customer_id)}))
        elif isinstance(event, ev.SegmentationTick):
            await self.on_tick(event.partition, now)
        else:
            await self.on_shop_event(name, event, now)
        self.metrics.events.labels(name, "handled").inc()

    def on_consent(self, state: ev.ConsentState) -> None:
        cid = state.customer_id
        if state.granted(ev.Purpose.PROFILING):
            since = state.purposes[ev.Purpose.PROFILING].since.isoformat()
            if self.consent.get(cid) != since:
                self.consent[cid] = since
        else:
            self.forget(cid)  # withdrawal deletes the profile at once

    def forget(self, cid: str) -> None:
        if self.consent.get(cid) is not None:
            del self.consent[cid]
        if self.profiles.get(cid) is not None:
            del self.profiles[cid]

    async def on_shop_event(self, name: str, event: ev.Event, now: datetime) -> None:
        cid = event.customer_id
        if self.consent.get(cid) is None:
            self.metrics.events.labels(name, "dropped_no_profiling_consent").inc()
            return
        before = self.profiles.get(cid) or prof.empty()
        after = prof.apply(before, event, now)
        after = await self.evaluate(cid, before, after, event, now)
        self.profiles[cid] = after

    async def on_tick(self, partition: int, now: datetime) -> None:
        """Time-based rules for every customer of the partition this worker owns."""
        for cid, profile in list(self.profiles.items()):
            if profile is None or partition_of(cid.encode()) != partition:
                continue
            after = await self.evaluate(cid, profile, profile, None, now)
            if after is not profile:
                self.profiles[cid] = after

    async def evaluate(self, cid: str, before: dict, after: dict, event: ev.Event | None, now: datetime) -> dict:
        facts = rules.facts(before, after, event, now)
        entries = rules.evaluate(self.ruleset, facts, set(after.get("emitted", ())))
        if not entries:
            return after
        caused_by = [getattr(event, "order_id", None) or getattr(event, "cart_id", None) or "daily"] if event else ["daily"]
        segments = dict(after.get("segments", {}))
        for entry in entries:
            entered = ev.SegmentEntered(customer_id=cid, segment=entry.segment, rule_version=self.ruleset.version,
                                        trigger_key=entry.trigger_key, facts=entry.facts, caused_by=caused_by,
                                        preferred_channel=after.get("preferred_channel"), evaluated_at=now)
            await self.send("segment-entered", entered)
            after = prof.remember(after, entry.trigger_key)
            segments[entry.segment] = {"entered_at": now.isoformat(), "rule_version": self.ruleset.version,
                                       "trigger_key": entry.trigger_key, "facts": entry.facts, "caused_by": caused_by}
            self.metrics.entries.labels(entry.segment).inc()
        return {**after, "segments": segments}

    async def send(self, name: str, event: ev.Event) -> None:
        await self.out[name].send(key=event.key().encode(), value=ev.encode(event, source=SOURCE))

    # ------------------------------------------------------------------ timers

    async def _daily(self) -> None:
        """Asks each of this worker's partitions to evaluate time-based rules (birthdays)."""
        ticks = self.settings.kafka.topic("segmentation-ticks")
        owned = sorted(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == ticks)
        for p in owned:
            tick = ev.SegmentationTick(partition_key=f"tick-{p}", partition=p, at=prof.utc_now())
            await self.out["segmentation-ticks"].send(key=tick.key().encode(), value=ev.encode(tick, source=SOURCE),
                                                      partition=p)

    async def _reload_rules(self) -> None:
        try:
            mtime = self.settings.rules_file.stat().st_mtime
            if mtime == self._rules_mtime:
                return
            new = rules.load(self.settings.rules_file)
        except (OSError, rules.RuleError) as exc:
            log.error("rules file not reloaded; keeping the rules in force", extra={"error": str(exc)})
            return
        self._rules_mtime = mtime
        self.metrics.rules_version.clear()
        self.metrics.rules_version.labels(new.version).set(1)
        log.info("rules reloaded", extra={"from_version": self.ruleset.version, "to_version": new.version})
        self.ruleset = new

    async def _watchdog(self) -> None:
        """Finds assigned partitions with messages waiting and no progress (see watchdog.py): logs
        faust's and aiokafka's view of each, resumes it, and stops the worker if that did not help."""
        now = time.monotonic()
        consumer = self.app.consumer
        if not self.started or consumer is None or self.app.rebalancing or getattr(self.app, "in_recovery", False):
            self.stalls.reset(now)
            return
        assigned = frozenset(tp for tp in consumer.assignment() if tp.topic in self.names)
        if assigned != self._watched:
            self._watched = assigned
            self.stalls.reset(now)
        if not assigned:
            return
        try:
            tps = [TopicPartition(tp.topic, tp.partition) for tp in assigned]
            ends = await asyncio.wait_for((await self._side_consumer()).end_offsets(tps), timeout=10)
            starts = await self._starts(tps)
        except Exception as exc:  # noqa: BLE001 - the broker may be restarting: check next time
            log.warning("stall check skipped: offsets unavailable", extra={"error": repr(exc)})
            self.stalls.reset(now)  # a partition cannot progress while the broker is away: not a stall
            return
        stalls = self.stalls.check({(tp.topic, tp.partition): end for tp, end in ends.items()}, now, starts)
        for stall in stalls:
            topic, partition = stall.tp
            tp = next(t for t in assigned if (t.topic, t.partition) == stall.tp)
            view = self._partition_view(tp)
            name = self.names.get(topic, topic)
            if stall.strikes >= self.settings.stall_exit_strikes:
                self.metrics.stalls.labels("worker_stopped").inc()
                log.error("partition still stalled after being resumed; stopping this worker (exit code 70) so its "
                          "supervisor starts a fresh one", extra={"topic": name, "partition": partition,
                                                                  "waiting": stall.waiting, "idle_s": round(stall.idle_s),
                                                                  **view})
                self.exit_code = 70
                os.kill(os.getpid(), signal.SIGTERM)
                return
            self.metrics.stalls.labels("resumed").inc()
            log.error("partition stalled: messages waiting, no progress; resuming it",
                      extra={"topic": name, "partition": partition, "waiting": stall.waiting,
                             "idle_s": round(stall.idle_s), "strikes": stall.strikes, **view})
            await self._resume(tp, view)

    def _partition_view(self, tp) -> dict[str, Any]:
        """faust's and aiokafka's state of one partition, for the log (private attributes: best effort)."""
        c = self.app.consumer
        view: dict[str, Any] = {}
        try:
            view.update(faust_active=tp in (c._active_partitions or ()), faust_paused=tp in c._paused_partitions,
                        faust_buffer_full=tp in c._buffered_partitions, faust_flow_active=c.flow_active,
                        in_recovery=getattr(self.app, "in_recovery", None))
            ak = c._thread._ensure_consumer()
            atp = TopicPartition(tp.topic, tp.partition)
            view["aiokafka_paused"] = atp in ak.paused()
            state = ak._fetcher._subscriptions.subscription.assignment.state_value(atp)
            if state is not None:
                view.update(aiokafka_position=state.position if state.has_valid_position else None,
                            aiokafka_highwater=state.highwater,
                            aiokafka_last_fetch_s=round(time.time() - state.timestamp / 1000, 1) if state.timestamp else None)
            else:
                view["aiokafka_assigned"] = False
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            view["view_error"] = repr(exc)
        return view

    async def _resume(self, tp, view: dict[str, Any]) -> None:
        c = self.app.consumer
        try:
            c._buffered_partitions.discard(tp)
            c.resume_partitions([tp])
            if view.get("aiokafka_paused"):
                ak = c._thread._ensure_consumer()
                await c._thread.call_thread(ak.resume, TopicPartition(tp.topic, tp.partition))
        except Exception as exc:  # noqa: BLE001 - the next strike stops the worker
            log.error("could not resume a stalled partition", extra={"error": repr(exc)})

    async def _gauges(self) -> None:
        self.metrics.table_size.labels("profiles").set(sum(1 for v in self.profiles.values() if v is not None))
        self.metrics.table_size.labels("profiling-consent").set(sum(1 for v in self.consent.values() if v is not None))

    # ------------------------------------------------------------------ HTTP

    async def ready(self) -> bool:
        return self.started and self.app.consumer is not None and bool(self.app.consumer.assignment())

    def http(self, *, manage_lifecycle: bool = True) -> FastAPI:
        api = http_app(self.start, self.stop, self.metrics, self.ready, manage_lifecycle=manage_lifecycle,
                       title="Voucherstream segmentation service", version="1")

        @api.get("/v1/customers/{customer_id}/segments", tags=["segments"],
                 responses={404: {"model": ErrorOut, "description": "No profile on this worker"}},
                 summary="The customer's segment memberships, each with the facts that explain it")
        async def segments(customer_id: str = Path(min_length=1, max_length=128,
                                                   pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")) -> dict[str, Any]:
            profile = self.profiles.get(customer_id)
            if profile is None:
                raise HTTPException(404, "no profile for this customer on this worker (no profiling consent, "
                                         "or another worker owns its partition)")
            return {"customer_id": customer_id, "segments": profile.get("segments", {})}

        return api


def create_app(settings: SegmentationSettings | None = None) -> SegmentationService:
    return SegmentationService(settings or SegmentationSettings())


def run() -> None:
    import uvicorn

    service = create_app()
    s = service.settings
    logs.configure(s.service, s.log_level)
    logging.getLogger("faust").setLevel(logging.WARNING)
    logging.getLogger("mode").setLevel(logging.WARNING)
    config = uvicorn.Config(service.http(), host=s.http_host, port=s.http_port, log_config=None, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=30, timeout_keep_alive=30)
    uvicorn.Server(config).run()
    if service.exit_code:
        sys.exit(service.exit_code)

