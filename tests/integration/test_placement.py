"""A consumer that keeps its own offsets (``start_positions``) on the real broker: no record of a
partition reaches the handler before the partition was sought to where it resumes, however slow
or failing the start positions are to read."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import events as ev
from shared.consumer import BatchConsumer
from shared.kafka import Message, send_all, start_producer
from shared.metrics import Metrics
from tests.integration.test_consumer_loop import consent, stop_consumer
from tests.support import committed_offsets, partition_ids, wait_for


async def test_no_record_is_handed_over_before_its_partition_is_placed_even_when_placing_is_slow_or_fails(kafka):
    topic = kafka.topic("consent-changed")
    producer = await start_producer(kafka, "test")
    await send_all(producer, [(topic, b"c-p", ev.encode(consent("c-p", granted=i % 2 == 0), source="test"), None)
                              for i in range(20)])
    group = kafka.topic_prefix + "placed"
    partitions = await partition_ids(kafka, topic)
    await commit_zero(kafka, group, [TopicPartition(topic, p) for p in partitions])  # as after a reset
    seen: list[Message] = []
    asked = 0

    async def handler(batch):
        seen.extend(batch)

    async def start_positions(ends):
        """The partition holding the 20 records resumes at 12; the others were never applied.
        Slow (the fetcher meanwhile reads from the group's committed offsets) and failing twice
        first, as a database that is away."""
        nonlocal asked
        asked += 1
        await asyncio.sleep(1.0)
        if asked <= 2:
            raise ConnectionRefusedError("the database is away")
        return {key: 12 for key, end in ends.items() if end == 20}

    loop = BatchConsumer(settings=kafka, group_id=group, topics=["consent-changed"],
                         handler=handler, producer=producer, metrics=Metrics("test"), start_positions=start_positions)
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: len(seen) >= 8, timeout=30, what="the records after the start position")
    await send_all(producer, [(topic, b"c-p", ev.encode(consent("c-p"), source="test"), None)])
    await wait_for(lambda: len(seen) >= 9, timeout=30, what="the record published after")

    async def committed_to_the_end() -> bool:
        offsets = await committed_offsets(kafka, group, topic)
        return len(offsets) == len(partitions) and sum(offsets.values()) == 21

    await wait_for(committed_to_the_end, timeout=30, interval=0.2, what="every partition committed to its end")
    await stop_consumer(loop, task, producer)
    assert asked >= 3  # the two failures were retried, not fallen back from
    assert [m.offset for m in seen] == list(range(12, 21))


async def commit_zero(kafka, group: str, partitions: list[TopicPartition]) -> None:
    consumer = AIOKafkaConsumer(**kafka.client_options(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.commit({tp: 0 for tp in partitions})
    finally:
        await consumer.stop()
