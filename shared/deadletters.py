"""Dead letters: what the consumer loop sets aside on ``<topic>.dlq`` — a record that breaks the
contract, or a valid one whose handling fails for a reason retrying will not fix — with the
reason, the error and the source topic, partition and offset in its headers."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.kafka import Message, Producer, sanitized, send_all
from shared.metrics import Metrics
from shared.settings import KafkaSettings
from shared.topics import Topic

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str  # the source topic as named on the broker
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    error: str


def dlq_headers(dead: DeadLetter, group: str) -> list[tuple[str, bytes]]:
    return [
        ("dlq.reason", dead.reason.encode()),
        ("dlq.error", dead.error[:2000].encode()),
        ("dlq.source.topic", dead.topic.encode()),
        ("dlq.source.partition", str(dead.partition).encode()),
        ("dlq.source.offset", str(dead.offset).encode()),
        ("dlq.consumer.group", group.encode()),
        ("dlq.time", datetime.now(UTC).isoformat().encode()),
    ]


class DeadLetters:
    """Sends a consumer group's dead letters and counts them."""

    def __init__(self, settings: KafkaSettings, producer: Producer, metrics: Metrics, group_id: str,
                 topics: dict[str, Topic]) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics
        self.group_id = group_id
        self.topics = topics  # broker topic name -> its registry entry

    async def send(self, dead: list[DeadLetter]) -> None:
        records = [(self.settings.topic(self.topics[d.topic].dlq), d.key, d.value, dlq_headers(d, self.group_id))
                   for d in dead]
        await send_all(self.producer, records)
        for d in dead:
            base = self.topics[d.topic].name
            self.metrics.dead_letters.labels(self.metrics.service, base, d.reason).inc()
            self.metrics.consumed.labels(self.metrics.service, base, "dead_lettered").inc()
            log.warning("dead-lettered a message", extra={"topic": base, "partition": d.partition,
                                                         "offset": d.offset, "reason": d.reason, "error": d.error})

    def of_handled(self, message: Message, exc: BaseException | None) -> DeadLetter:
        """The dead letter of a valid message whose handling failed for good (logged with where)."""
        detail = sanitized(exc) if exc else "unknown"
        log.error("handler failed on a message; dead-lettering it",
                  extra={"topic": message.topic, "partition": message.partition, "offset": message.offset,
                         "error": detail, "at": "".join(traceback.format_tb(exc.__traceback__)) if exc else ""})
        return DeadLetter(self.settings.topic(message.topic), message.partition, message.offset,
                          message.key.encode() if message.key is not None else None, message.raw,
                          "handler_error", detail)
