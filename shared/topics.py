"""The topic registry: every topic's name, key, partitions, cleanup policy, retention and the
event types it carries. `make topics` (``python -m shared.topics``) creates or updates them.

Every customer-keyed topic has the same partition count, so a stream processor that reads
several of them together (segmentation joins the shop topics with ``consent-state``) sees a
customer's events on the same partition number everywhere. Campaign-keyed topics share theirs.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from aiokafka.partitioner import murmur2

from shared import events as ev
from shared.settings import KafkaSettings

DAY_MS = 24 * 3600 * 1000
# One deployment-wide setting: every service, `make topics` and the shop's producers must agree on
# it (segmentation co-partitions by it). Grow it with `make topics`, never shrink it.
CUSTOMER_PARTITIONS = int(os.environ.get("VOUCHERSTREAM_CUSTOMER_PARTITIONS", "6"))


@lru_cache(maxsize=1 << 16)
def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner for keyed records (murmur2, positive, modulo), as the Java
    client and librdkafka's ``murmur2_random`` place them. Cached: murmur2 in Python is slow and
    the same customers come back."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def check_partition(partition: int, key: str | None, event: ev.Event | None,
                    partitions: int = CUSTOMER_PARTITIONS) -> None:
    """Refuses a customer's record on another partition than its customer's: consumers that join
    a customer's topics (segmentation) or order them by offset (consent's watermarks) rely on
    every customer-keyed record sitting on the partition Kafka's default partitioner gives it.
    Records keyed otherwise (ticks, watermarks) are placed on purpose and pass."""
    if key is None or (event is not None and event.KEY_FIELD != "customer_id"):
        return
    right = partition_for(key.encode(), partitions)
    if right != partition:
        raise ev.ContractError("wrong_partition", f"key belongs on partition {right}, not {partition}: "
                               "publish with Kafka's default murmur2 partitioner")


CAMPAIGN_PARTITIONS = 6
DLQ_PARTITIONS = 1
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    name: str
    key: Literal["customer_id", "campaign_id", "partition_key"]
    events: tuple[type[ev.Event], ...]
    description: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    partitions: int = CUSTOMER_PARTITIONS
    compacted: bool = False
    retention_ms: int = 30 * DAY_MS
    # Services that only ask its log-end offsets (consent marks: how far consent-changed is
    # applied), which Kafka authorizes as Describe.
    watchers: tuple[str, ...] = ()
    extra_config: dict[str, str] = field(default_factory=dict)

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX

    def config(self) -> dict[str, str]:
        """Topic-level configuration as Kafka takes it."""
        if self.compacted:
            conf = {
                "cleanup.policy": "compact",
                # Bounded: a tombstone or an overwritten value is compacted away within an hour,
                # so erased customers leave no state behind for long.
                "max.compaction.lag.ms": str(3600 * 1000),
                "min.compaction.lag.ms": "0",
                "delete.retention.ms": str(DAY_MS),
                "segment.ms": str(3600 * 1000),
                "min.cleanable.dirty.ratio": "0.1",
            }
        else:
            conf = {"cleanup.policy": "delete", "retention.ms": str(self.retention_ms)}
        return conf | self.extra_config


SHOP = ("shop",)
# Who outside the services touches Kafka: the shop publishes its events and reads the budget
# topics; its sender (e-mail/SMS/push) alone reads the codes. Each gets its own principal and
# ACLs (`shared.acls`).
SENDER = ("sender",)
EXTERNAL = SHOP + SENDER

TOPICS: tuple[Topic, ...] = (
    # Inbound shop events: a short retention is the privacy default.
    Topic("customer-registered", "customer_id", (ev.CustomerRegistered,), "a customer signed up",
          SHOP, ("segmentation",), retention_ms=7 * DAY_MS),
    Topic("customer-updated", "customer_id", (ev.CustomerUpdated,), "a customer changed birthday or preferred channel",
          SHOP, ("segmentation",), retention_ms=7 * DAY_MS),
    Topic("order-placed", "customer_id", (ev.OrderPlaced,), "a customer placed an order",
          SHOP, ("segmentation",), retention_ms=7 * DAY_MS),
    Topic("cart-abandoned", "customer_id", (ev.CartAbandoned,), "a customer left a cart",
          SHOP, ("segmentation",), retention_ms=7 * DAY_MS),
    Topic("consent-changed", "customer_id", (ev.ConsentChanged,), "a customer granted or withdrew consent for a purpose",
          SHOP, ("consent",), retention_ms=7 * DAY_MS, watchers=("segmentation", "issuance")),
    # Consent and privacy.
    Topic("consent-state", "customer_id", (ev.ConsentState, ev.ConsentWatermark),
          "a customer's whole current consent (compacted), and per partition how far consent-changed is applied",
          ("consent",), ("segmentation", "issuance"), compacted=True),
    Topic("erasure-requested", "customer_id", (ev.ErasureRequested,), "erase a customer everywhere",
          ("consent",), ("segmentation", "issuance", "analytics")),
    Topic("erasure-completed", "customer_id", (ev.ErasureCompleted,), "a service confirms an erasure",
          ("segmentation", "issuance", "analytics", "consent"), ("consent",)),
    Topic("export-requested", "customer_id", (ev.ExportRequested,), "export everything held on a customer",
          ("consent",), ("segmentation", "issuance", "analytics")),
    Topic("export-completed", "customer_id", (ev.ExportCompleted,), "a service's part of an export",
          ("segmentation", "issuance", "analytics", "consent"), ("consent",)),
    # Segmentation.
    Topic("segment-entered", "customer_id", (ev.SegmentEntered,), "a customer entered a segment, with the explanation",
          ("segmentation",), ("issuance",)),
    Topic("segmentation-ticks", "partition_key", (ev.SegmentationTick,),
          "internal: wakes the owner of a partition to evaluate birthdays", ("segmentation",), ("segmentation",),
          retention_ms=1 * DAY_MS),
    # Issuance.
    Topic("voucher-issued", "customer_id", (ev.VoucherIssued,), "a voucher was issued (no code)",
          ("issuance",), ("analytics",)),
    Topic("issuance-denied", "customer_id", (ev.IssuanceDenied,), "a voucher was refused, with the reason",
          ("issuance",), ("analytics",)),
    Topic("delivery-requested", "customer_id", (ev.DeliveryRequested, ev.DeliveryCancelled),
          "send this code through this channel; or do not (cancelled after consent was withdrawn)",
          ("issuance",), SENDER, retention_ms=7 * DAY_MS),
    Topic("voucher-redeemed", "customer_id", (ev.VoucherRedeemed,), "a voucher was redeemed at checkout",
          ("issuance",), ("analytics",)),
    Topic("redemption-rolled-back", "customer_id", (ev.RedemptionRolledBack,), "a redemption was rolled back",
          ("issuance",), ("analytics",)),
    Topic("voucher-expired", "customer_id", (ev.VoucherExpired,), "a voucher expired and released its reservation",
          ("issuance",), ("analytics",)),
    Topic("voucher-revoked", "customer_id", (ev.VoucherRevoked,), "a voucher was revoked (e.g. consent withdrawn)",
          ("issuance",), ("analytics",)),
    Topic("campaign-changed", "campaign_id", (ev.CampaignChanged,), "a campaign's current definition (compacted)",
          ("issuance",), ("analytics",), partitions=CAMPAIGN_PARTITIONS, compacted=True),
    # Analytics.
    Topic("budget-counters", "campaign_id", (ev.BudgetCounters,), "live budget counters per campaign (compacted)",
          ("analytics",), ("shop",), partitions=CAMPAIGN_PARTITIONS, compacted=True),
    Topic("budget-threshold-crossed", "campaign_id", (ev.BudgetThresholdCrossed,), "50/80/100 % of a budget reached",
          ("analytics",), ("shop",), partitions=CAMPAIGN_PARTITIONS),
)

BY_NAME: dict[str, Topic] = {t.name: t for t in TOPICS}


def topic(name: str) -> Topic:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in the topic registry") from None


def privacy_answerers() -> list[str]:
    """The services that answer every export and erasure: the producers of both answers' topics."""
    erasure, export = topic("erasure-completed").producers, topic("export-completed").producers
    return [s for s in erasure if s in export]


def dlq_topic(source: Topic) -> Topic:
    """Dead letters keep the source key and raw value, with the reason in headers."""
    return Topic(source.dlq, source.key, (), f"dead letters of {source.name}", source.consumers, ("operators",),
                 partitions=DLQ_PARTITIONS, retention_ms=30 * DAY_MS)


def all_topics(prefix: str = "") -> list[tuple[str, Topic]]:
    """Every topic and dead-letter topic, with names under ``prefix`` (tests use one each)."""
    out = []
    for t in TOPICS:
        out.append((prefix + t.name, t))
        if any(c not in EXTERNAL for c in t.consumers):
            out.append((prefix + t.dlq, dlq_topic(t)))
    return out


def _settings(kafka: KafkaSettings | str) -> KafkaSettings:
    """Settings from the environment; a bare bootstrap string keeps the environment's security."""
    return kafka if isinstance(kafka, KafkaSettings) else KafkaSettings(bootstrap=kafka)


def replication_of(t: Topic, kafka: KafkaSettings) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) of a topic: dead letters may have their own factor."""
    factor = (kafka.dlq_replication_factor or kafka.replication_factor) if t.name.endswith(DLQ_SUFFIX) \
        else kafka.replication_factor
    return factor, min(kafka.min_insync_replicas, factor)


def wanted_config(t: Topic, kafka: KafkaSettings) -> dict[str, str]:
    return t.config() | {"min.insync.replicas": str(replication_of(t, kafka)[1])}


async def ensure_topics(kafka: KafkaSettings | str, prefix: str = "", *, report=print) -> dict[str, str]:
    """Creates missing topics with the settings' replication, raises partition counts that are too
    low and sets each topic's configuration (``min.insync.replicas`` included). Idempotent.
    Reports what it cannot change (fewer replicas than wanted, more partitions than the registry).
    Returns ``{name: "created" | "updated" | "unchanged"}``."""
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    kafka = _settings(kafka)
    admin = AIOKafkaAdminClient(**kafka.client_options(client_id="voucherstream-topics"))
    await admin.start()
    outcome: dict[str, str] = {}
    try:
        wanted = all_topics(prefix)
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, t.partitions, replication_of(t, kafka)[0], topic_configs=wanted_config(t, kafka))
                   for name, t in wanted if name not in existing]
        if missing:
            resp = await admin.create_topics(missing)
            for name, code, *rest in resp.topic_errors:
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a concurrent creator)
                    raise RuntimeError(f"creating topic {name} failed with Kafka error {code}: {rest}")
            for t in missing:
                outcome[t.name] = "created"
            await _wait_for_leaders(admin, [t.name for t in missing])
        present = [(name, t) for name, t in wanted if name in existing]
        if present:
            described = {d["topic"]: d for d in await admin.describe_topics([n for n, _ in present])}
            grow = {}
            for name, t in present:
                parts = described[name]["partitions"]
                have = len(parts)
                if have < t.partitions:
                    grow[name] = NewPartitions(total_count=t.partitions)
                elif have > t.partitions:
                    report(f"warning: {name} has {have} partitions, the registry says {t.partitions}; "
                           "Kafka cannot shrink a topic, leaving it")
                replicas = min((len(p["replicas"]) for p in parts), default=0)
                if replicas != replication_of(t, kafka)[0]:
                    report(f"drift: {name} has {replicas} replicas, the settings say {replication_of(t, kafka)[0]}; "
                           "change it with a partition reassignment (kafka-reassign-partitions), "
                           "docs/operations.md \"Replication\"")
            if grow:
                await admin.create_partitions(grow)
            resources = [ConfigResource(ConfigResourceType.TOPIC, name) for name, _ in present]
            current = await admin.describe_configs(resources)
            have_conf: dict[str, dict[str, str]] = {}
            for resp in current:
                for res in resp.resources:
                    _, _, _, res_name, entries = res[:5]
                    have_conf[res_name] = {e[0]: e[1] for e in entries}
            changes = []
            for name, t in present:
                want = wanted_config(t, kafka)
                drifted = {k: (have_conf.get(name, {}).get(k), v) for k, v in want.items()
                           if have_conf.get(name, {}).get(k) != v}
                if drifted:
                    report(f"drift: {name}: " + ", ".join(f"{k} {old} -> {new}" for k, (old, new) in drifted.items()))
                    changes.append(ConfigResource(ConfigResourceType.TOPIC, name, configs=want))
                    outcome[name] = "updated"
                else:
                    outcome[name] = "updated" if name in grow else "unchanged"
            if changes:
                await admin.alter_configs(changes)
    finally:
        await admin.close()
    return outcome


async def _wait_for_leaders(admin, names: list[str], timeout_s: float = 15.0) -> None:
    """New topics are usable once every partition has a leader; producing earlier only retries."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        if all(d["error_code"] == 0 and d["partitions"] and all(p["leader"] >= 0 for p in d["partitions"])
               for d in described):
            return
        if loop.time() > deadline:
            raise RuntimeError(f"topics without a leader after {timeout_s} s: {names}")
        await asyncio.sleep(0.1)


async def delete_topics(kafka: KafkaSettings | str, prefix: str) -> None:
    """Deletes the topics under ``prefix`` (test clean-up). Refuses an empty prefix."""
    if not prefix:
        raise ValueError("refusing to delete the production topics (empty prefix)")
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**_settings(kafka).client_options(client_id="voucherstream-topics"))
    await admin.start()
    try:
        names = [n for n in await admin.list_topics() if n.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


def markdown_table() -> str:
    lines = ["| topic | key | partitions | retention | carries | produced by | consumed by |",
             "|---|---|---|---|---|---|---|"]
    for t in TOPICS:
        kind = "compacted" if t.compacted else f"{int(t.config()['retention.ms']) // DAY_MS} days"
        types = ", ".join(f"`{e.TYPE}`" for e in t.events)
        lines.append(f"| `{t.name}` | `{t.key}` | {t.partitions} | {kind} | {types} | "
                     f"{', '.join(t.producers)} | {', '.join(t.consumers)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from shared.settings import KafkaSettings

    parser = argparse.ArgumentParser(prog="python -m shared.topics", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=None,
                        help="Kafka bootstrap servers (default: VOUCHERSTREAM_KAFKA_BOOTSTRAP or 127.0.0.1:9092)")
    parser.add_argument("--prefix", default=None, help="create every topic under this name prefix")
    parser.add_argument("--markdown", action="store_true", help="print the registry as the README's table and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table())
        return 0
    kafka = KafkaSettings()
    if args.bootstrap:
        kafka = kafka.model_copy(update={"bootstrap": args.bootstrap})
    bootstrap = kafka.bootstrap
    prefix = kafka.topic_prefix if args.prefix is None else args.prefix
    try:
        outcome = asyncio.run(ensure_topics(kafka, prefix))
    except Exception as exc:
        print(f"error: could not create the topics on {bootstrap}: {exc}", file=sys.stderr)
        return 1
    for name, t in all_topics(prefix):
        kind = "compacted" if t.compacted else f"retention {int(t.config()['retention.ms']) // DAY_MS} d"
        factor, isr = replication_of(t, kafka)
        print(f"{outcome.get(name, '?'):9}  {name:34} {t.partitions:2} partitions  x{factor} (min in sync {isr})  "
              f"key {t.key:11}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
