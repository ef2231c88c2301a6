"""Wiring of the segmentation service: one batch consumer over the customer topics, consent-state,
the privacy requests and the daily ticks (its handler applies each batch exactly once, see
handlers.py), the daily tick, the rules reload, the gauges and the HTTP API."""

from __future__ import annotations

import logging
from pathlib import Path

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from fastapi import FastAPI

from services.segmentation import api, engine, rules, store
from services.segmentation.handlers import SOURCE, SegmentationHandlers
from services.segmentation.metrics import SegmentationMetrics
from services.segmentation.settings import SegmentationSettings
from shared import events as ev
from shared.kafka import Message
from shared.service import Service
from shared.topics import check_partition

log = logging.getLogger(__name__)
INPUTS = ["customer-registered", "customer-updated", "order-placed", "cart-abandoned", "consent-state",
          "erasure-requested", "export-requested", engine.TICKS]


class SegmentationService(Service):
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, settings: SegmentationSettings) -> None:
        super().__init__(settings)
        self.settings: SegmentationSettings = settings
        self.metrics: SegmentationMetrics = SegmentationMetrics(settings.service)
        self.ruleset = rules.load(settings.rules_file)
        self._rules_mtime = settings.rules_file.stat().st_mtime
        self.metrics.rules_version.labels(self.ruleset.version).set(1)
        self.handlers = SegmentationHandlers(settings.db_schema, self.metrics, lambda: self.ruleset,
                                             lambda partitions: self.consumer.end_offsets(partitions),
                                             settings.pseudonym_key.get_secret_value().encode(), self.keys)

    @property
    def handled(self) -> int:
        return self.handlers.handled

    async def on_start(self) -> None:
        # Range assignment gives one worker the same partition of every input: a customer's
        # consent, profile and events stay together (the topics share their partition count).
        self.consume(INPUTS, lambda batch: self.handlers.on_batch(self.pool, batch),
                     validate=self._validate, assignors=(RangePartitionAssignor,),
                     start_positions=lambda ends: self.handlers.start_positions(self.pool, ends))
        self.every("daily-tick", self.settings.daily_tick_interval_s, self.daily)
        self.every("rules-reload", self.settings.rules_check_interval_s, self.reload_rules)
        self.every("gauges", 15.0, self.gauges)

    @staticmethod
    def _validate(message: Message) -> None:
        check_partition(message.partition, message.key, message.event)

    async def daily(self) -> None:
        """Asks each of this worker's tick partitions to evaluate time-based rules (birthdays)."""
        for p in sorted(p for topic, p in self.consumer.assignment() if topic == engine.TICKS):
            tick = ev.SegmentationTick(partition_key=f"tick-{p}", partition=p, at=ev.now_utc())
            await self.producer.send_and_wait(self.settings.kafka.topic(engine.TICKS), key=tick.key().encode(),
                                              value=ev.encode(tick, source=SOURCE), partition=p)

    async def reload_rules(self) -> None:
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

    async def gauges(self) -> None:
        async with self.pool.acquire() as conn:
            kept, profiles = await store.sizes(conn)
        self.metrics.table_size.labels("profiling-consent").set(kept)
        self.metrics.table_size.labels("profiles").set(profiles)

    def routes(self, app: FastAPI) -> None:
        api.routes(app, self)


def create_app(settings: SegmentationSettings | None = None) -> SegmentationService:
    return SegmentationService(settings or SegmentationSettings())
