"""``voucherstream publish``, ``seal`` and ``tail``: shop events onto the registry's topics, sealed
for them, and read back off them (registered on the command line in ``voucherstream.cli``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import typer

from voucherstream.output import console, fail


def publish(topic: str = typer.Argument(..., help="a registry topic, e.g. cart-abandoned"),
            data: str = typer.Option(None, help="the event's data as JSON"),
            file: Path = typer.Option(None, exists=True, readable=True, help="a JSON file: one data object or a list"),
            source: str = typer.Option("voucherstream-cli", help="the envelope's source"),
            seal_personal: bool = typer.Option(False, "--seal", help="seal personal fields under the customers' "
                                               "data keys (as `voucherstream seal`)"),
            bootstrap: str = typer.Option("127.0.0.1:9092", envvar="VOUCHERSTREAM_KAFKA_BOOTSTRAP")) -> None:
    """Publish shop events: each data object is validated against the topic's model, wrapped in
    a CloudEvents envelope and keyed by its customer (or campaign) id."""
    from pydantic import ValidationError

    from shared import datakeys
    from shared import events as ev
    from shared.kafka import send_all, start_producer
    from shared.settings import KafkaSettings
    from shared.topics import topic as registry_topic

    try:
        spec = registry_topic(topic)
    except KeyError as exc:
        fail(str(exc))
    if (data is None) == (file is None):
        fail("give exactly one of --data and --file")
    try:
        raw = json.loads(data if data is not None else file.read_text())
    except json.JSONDecodeError as exc:
        fail(f"not JSON: {exc}")
    items = raw if isinstance(raw, list) else [raw]
    model = spec.events[0]
    try:
        events = [model.model_validate(item) for item in items]
    except ValidationError as exc:
        fail(f"not a valid {model.TYPE}: {ev.describe_validation_error(exc, 'data')}")
    kafka = KafkaSettings(bootstrap=bootstrap)

    async def go():
        values = [ev.encode(e, source=source) for e in events]
        if seal_personal:
            async with datakeys.reader() as keys:
                values = await keys.sealed(values)
        producer = await start_producer(kafka, "voucherstream-cli")
        try:
            await send_all(producer, [(kafka.topic(topic), e.key().encode(), v, None) for e, v in zip(events, values, strict=True)])
        finally:
            await producer.stop()

    asyncio.run(go())
    console.print(f"published {len(events)} {model.TYPE} event(s) to {kafka.topic(topic)}")


def seal(separator: str = typer.Option(None, "--key-separator", "-K",
                                       help="lines are key<separator>envelope, as `kcat -P -K` reads them")) -> None:
    """Seal shop events' personal fields under their customers' data keys: envelopes in, one per
    line on stdin, the same envelopes sealed on stdout — a pipe before `kcat -P`, so an erasure
    reaches the shop's own topics too (docs/privacy.md). Needs the key store:
    VOUCHERSTREAM_POSTGRES_DSN and VOUCHERSTREAM_DATA_KEY as the services have them."""
    from shared import datakeys
    from shared import events as ev

    lines = [line.rstrip(b"\n") for line in sys.stdin.buffer if line.strip()]
    keys: list[bytes] = []
    values: list[bytes] = []
    for line in lines:
        key, found, value = line.partition(separator.encode()) if separator else (b"", True, line)
        if not found:
            fail(f"line {len(values) + 1} has no key separator {separator!r}")
        keys.append(key)
        values.append(value)

    async def go():
        async with datakeys.reader() as store:
            return await store.sealed(values)

    try:
        sealed = asyncio.run(go())
    except ev.ContractError as exc:
        fail(f"not an event of the contract ({exc}); nothing was written")
    except OSError as exc:
        fail(f"cannot reach the key store's PostgreSQL: {exc}")
    for key, value in zip(keys, sealed, strict=True):
        sys.stdout.buffer.write((key + separator.encode() if separator else b"") + value + b"\n")
    sys.stdout.flush()
    console.print(f"sealed {len(sealed)} event(s)")


def tail(topic: str = typer.Argument(..., help="a registry topic (or its .dlq)"),
         from_beginning: bool = typer.Option(False, "--from-beginning"),
         count: int = typer.Option(0, help="stop after this many messages (0: until Ctrl-C)"),
         open_sealed: bool = typer.Option(False, "--open", help="open sealed personal fields with the key store "
                                          "(VOUCHERSTREAM_POSTGRES_DSN, VOUCHERSTREAM_DATA_KEY)"),
         bootstrap: str = typer.Option("127.0.0.1:9092", envvar="VOUCHERSTREAM_KAFKA_BOOTSTRAP")) -> None:
    """Print a topic's messages decoded, one JSON line each (dead letters with their reason);
    sealed personal fields stay sealed unless --open."""
    from aiokafka import AIOKafkaConsumer

    from shared import datakeys
    from shared import events as ev
    from shared.settings import KafkaSettings

    kafka = KafkaSettings(bootstrap=bootstrap)

    async def go():
        async with contextlib.AsyncExitStack() as stack:
            keys = await stack.enter_async_context(datakeys.reader()) if open_sealed else None
            await show(keys)

    async def show(keys):
        consumer = AIOKafkaConsumer(kafka.topic(topic), **kafka.client_options(), group_id=None,
                                    auto_offset_reset="earliest" if from_beginning else "latest")
        await consumer.start()
        seen = 0
        try:
            while not count or seen < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    values = await keys.opened([r.value for r in records]) if keys else [r.value for r in records]
                    for r, value in zip(records, values, strict=True):
                        line = {"partition": r.partition, "offset": r.offset,
                                "key": r.key.decode("utf-8", "replace") if r.key else None}
                        headers = {k: v.decode("utf-8", "replace") for k, v in (r.headers or ())}
                        if any(k.startswith("dlq.") for k in headers):
                            line["dead_letter"] = {k[4:]: v for k, v in headers.items() if k.startswith("dlq.")}
                            line["raw"] = (r.value or b"").decode("utf-8", "replace")
                        elif r.value is None:
                            line["tombstone"] = True
                        else:
                            try:
                                envelope, event = ev.decode(value)
                                line.update(type=envelope.type, id=envelope.id, time=envelope.time.isoformat(),
                                            data=event.model_dump(mode="json", exclude_none=True))
                            except ev.ContractError as exc:
                                if exc.reason != "sealed":
                                    line["undecodable"] = str(exc)
                                else:  # as it is on the log (erased, or not opened)
                                    line["sealed"] = json.loads(value)
                        print(json.dumps(line), flush=True)
                        seen += 1
                        if count and seen >= count:
                            return
        finally:
            await consumer.stop()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        pass
