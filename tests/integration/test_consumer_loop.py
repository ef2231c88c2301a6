"""The batch consumer loop on the real broker: handled once and committed, poison to the
dead-letter topic with its reason, the loop going on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from shared import events as ev
from shared.consumer import BatchConsumer
from shared.errors import TransientError
from shared.kafka import Message, send_all, start_producer
from shared.metrics import Metrics
from tests.support import committed_offsets, read_topic, wait_for


def consent(customer: str, purpose: str = "profiling", granted: bool = True) -> ev.ConsentChanged:
    return ev.ConsentChanged(customer_id=customer, purpose=purpose, granted=granted, policy_version="v1",
                             source="test", occurred_at=datetime.now(UTC))


async def run_consumer(kafka, handler, group: str, topics=("consent-changed",)):
    producer = await start_producer(kafka, "test")
    loop = BatchConsumer(settings=kafka, group_id=group, topics=list(topics), handler=handler,
                         producer=producer, metrics=Metrics("test"))
    task = asyncio.create_task(loop.run())
    return loop, task, producer


async def stop_consumer(loop, task, producer):
    loop.stop()
    await asyncio.wait_for(task, 20)
    await producer.stop()


async def test_a_valid_message_is_handled_once_and_its_offset_committed(kafka):
    topic = kafka.topic("consent-changed")
    producer = await start_producer(kafka, "test")
    await send_all(producer, [(topic, b"c-1", ev.encode(consent("c-1"), source="test"), None)])
    seen: list[Message] = []

    async def handler(batch):
        seen.extend(batch)

    loop, task, p2 = await run_consumer(kafka, handler, kafka.topic_prefix + "g")
    await wait_for(lambda: loop.batches_committed >= 1, what="a committed batch")
    await stop_consumer(loop, task, p2)
    await producer.stop()
    assert [m.event.customer_id for m in seen] == ["c-1"]
    assert isinstance(seen[0].event, ev.ConsentChanged)
    offsets = await committed_offsets(kafka, kafka.topic_prefix + "g", topic)
    assert sum(offsets.values()) == 1  # one record consumed, committed past it

    # A restart of the same group does not see it again: it handles the record published after,
    # commits past both — so it has read every partition to its end — and has seen only that one.
    seen.clear()
    loop, task, p2 = await run_consumer(kafka, handler, kafka.topic_prefix + "g")
    producer = await start_producer(kafka, "test")
    await send_all(producer, [(topic, b"c-after", ev.encode(consent("c-after"), source="test"), None)])
    await producer.stop()

    async def past_both() -> bool:
        return sum((await committed_offsets(kafka, kafka.topic_prefix + "g", topic)).values()) == 2

    await wait_for(past_both, timeout=30, interval=0.2, what="the group committed past both records")
    await stop_consumer(loop, task, p2)
    assert [m.event.customer_id for m in seen] == ["c-after"]


async def test_a_poison_message_goes_to_its_dlq_with_the_reason_and_the_next_is_handled(kafka):
    topic = kafka.topic("consent-changed")
    producer = await start_producer(kafka, "test")
    bad_purpose = ev.encode(consent("c-2"), source="test").replace(b'"profiling"', b'"telepathy"')
    await send_all(producer, [
        (topic, b"c-2", b"{not json", None),
        (topic, b"c-2", bad_purpose, None),
        (topic, b"c-2", ev.encode(consent("c-2", granted=False), source="test"), None),
    ])
    seen: list[Message] = []

    async def handler(batch):
        seen.extend(batch)

    metrics_loop, task, p2 = await run_consumer(kafka, handler, kafka.topic_prefix + "g")
    await wait_for(lambda: len(seen) == 1, what="the valid message")
    dead = await read_topic(kafka.bootstrap, kafka.topic("consent-changed.dlq"), expect=2)
    await stop_consumer(metrics_loop, task, p2)
    await producer.stop()

    assert seen[0].event.granted is False
    headers = [dict(r.headers) for r in dead]
    assert [h["dlq.reason"] for h in headers] == [b"undecodable", b"invalid_data"]
    assert b"data.purpose" in headers[1]["dlq.error"]
    assert headers[0]["dlq.source.topic"] == topic.encode()
    assert {h["dlq.source.offset"] for h in headers} == {b"0", b"1"}
    assert dead[0].value == b"{not json" and dead[0].key == b"c-2"
    rendered = metrics_loop.metrics.render().decode()
    assert 'voucherstream_dead_letters_total{reason="undecodable",service="test",topic="consent-changed"} 1.0' in rendered


async def test_a_handler_bug_on_one_message_dead_letters_only_that_message(kafka):
    topic = kafka.topic("consent-changed")
    producer = await start_producer(kafka, "test")
    # Same key: same partition, one batch.
    await send_all(producer, [(topic, b"c-3", ev.encode(consent("c-3", purpose=p), source="test"), None)
                              for p in ("profiling", "email", "sms")])
    handled: list[str] = []

    async def handler(batch):
        if any(m.event.purpose == "email" for m in batch):
            raise ZeroDivisionError("a bug that only this message triggers")
        handled.extend(m.event.purpose for m in batch)

    loop, task, p2 = await run_consumer(kafka, handler, kafka.topic_prefix + "g")
    dead = await read_topic(kafka.bootstrap, kafka.topic("consent-changed.dlq"), expect=1)
    await wait_for(lambda: loop.batches_committed >= 1, what="commit")
    await stop_consumer(loop, task, p2)
    await producer.stop()
    assert sorted(handled) == ["profiling", "sms"]
    assert dict(dead[0].headers)["dlq.reason"] == b"handler_error"
    assert b"ZeroDivisionError" in dict(dead[0].headers)["dlq.error"]


async def test_a_transient_failure_retries_the_batch_without_losing_it(kafka):
    topic = kafka.topic("consent-changed")
    producer = await start_producer(kafka, "test")
    await send_all(producer, [(topic, b"c-4", ev.encode(consent("c-4"), source="test"), None)])
    attempts = []

    async def handler(batch):
        attempts.append(len(batch))
        if len(attempts) < 3:
            raise TransientError("database restarting")

    loop, task, p2 = await run_consumer(kafka, handler, kafka.topic_prefix + "g")
    await wait_for(lambda: loop.batches_committed >= 1, what="commit after retries")
    await stop_consumer(loop, task, p2)
    await producer.stop()
    assert attempts == [1, 1, 1]
    dead = await read_topic(kafka.bootstrap, kafka.topic("consent-changed.dlq"), timeout=2)
    assert dead == []
