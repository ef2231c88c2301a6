"""Helpers for tests on the real stack: polling, reading topics back, kcat."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import uuid

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import datakeys, db
from shared import events as ev
from shared.settings import KafkaSettings, PostgresSettings


async def committed_offsets(kafka: KafkaSettings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of one topic (partitions never committed: absent).
    A consumer commits after its batch's work, so an offset here is work done."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
    finally:
        await admin.close()


async def partition_ids(kafka: KafkaSettings, topic: str) -> set[int]:
    """The topic's partitions as the broker describes them (empty while it does not exist)."""
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return set() if described["error_code"] else {p["partition"] for p in described["partitions"]}
    finally:
        await admin.close()


NAMES: set[str] = set()  # every name unique() gave this session: the schemas among them are dropped at its end


def unique(prefix: str = "t") -> str:
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    NAMES.add(name)
    return name


async def drop_left_schemas() -> list[str]:
    """Drops the schemas named by unique() that are still there — a test that failed, timed out
    or restarted services past its own clean-up leaves them, and a machine that runs the suite
    every day would otherwise collect thousands. Returns their names."""
    conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value())
    try:
        left = [r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])",
                                               sorted(NAMES))]
        for schema in left:  # one at a time: a schema's tables are locks of their own
            await conn.execute(f'DROP SCHEMA IF EXISTS "{db.check_schema(schema)}" CASCADE')
        return left
    finally:
        await conn.close()


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Polls an async or sync predicate until it returns a truthy value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def read_topic(bootstrap: str | KafkaSettings, topic: str, *, expect: int | None = None, timeout: float = 15.0, where=None,
                     raw: bool = False):
    """Every record of ``topic`` (that ``where`` accepts) from the start to its current end, or
    until ``expect`` of them; sealed personal fields opened with the key store's data keys, as a
    service reads them (``raw``: as they are on the log)."""
    records = await _read_topic(bootstrap, topic, expect=expect, timeout=timeout, where=where)
    return records if raw else await open_records(records)


async def open_records(records: list) -> list:
    """Records with their sealed fields opened (a record whose key is gone stays sealed)."""
    if not any(ev.data_key_id(r.value) for r in records):
        return records
    async with datakeys.reader() as keys:
        values = await keys.opened([r.value for r in records])
    return [dataclasses.replace(r, value=v) for r, v in zip(records, values, strict=True)]


async def _read_topic(bootstrap: str | KafkaSettings, topic: str, *, expect: int | None, timeout: float, where):
    kafka = bootstrap if isinstance(bootstrap, KafkaSettings) else KafkaSettings(bootstrap=bootstrap)
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        parts = await wait_for(lambda: partition_ids(kafka, topic), timeout=timeout, what=f"metadata of {topic}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        out: list[ConsumerRecord] = []
        while True:
            ends = await consumer.end_offsets(tps)
            positions = {tp: await consumer.position(tp) for tp in tps}
            caught_up = all(positions[tp] >= ends[tp] for tp in tps)
            if (expect is None and caught_up) or (expect is not None and len(out) >= expect):
                return out
            if loop.time() > deadline:
                if expect is not None:
                    raise AssertionError(f"{topic}: expected {expect} records, got {len(out)} in {timeout} s")
                return out
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(r for r in records if where is None or where(r))
    finally:
        await consumer.stop()


def kcat(*args: str, input: bytes | None = None, timeout: float = 30.0) -> str:
    """Runs Debian's kcat, a Kafka client nobody here wrote."""
    exe = shutil.which("kcat") or shutil.which("kafkacat")
    if exe is None:
        raise RuntimeError("kcat is not installed (make up installs it)")
    done = subprocess.run([exe, *args], input=input, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kcat {' '.join(args)} failed: {done.stderr.decode()}")
    return done.stdout.decode()


async def group_members(bootstrap: str, group: str) -> tuple[str, int]:
    """The consumer group's state and its number of members."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (resp,) = await admin.describe_consumer_groups([group])
        _, _, state, _, _, members = resp.groups[0][:6]
        return state, len(members)
    finally:
        await admin.close()


async def create_api_key(schema: str, scopes=None) -> str:
    """A key with ``scopes`` in a running service's schema (its migrations have run)."""
    from shared import auth

    conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(), server_settings={"search_path": schema})
    try:
        _, key = await auth.create_key(conn, "tests", list(scopes or auth.SCOPES))
        return key
    finally:
        await conn.close()


async def schemathesis(base_url: str, api_key: str, *, max_time: int = 30, env: dict | None = None) -> tuple[int, str]:
    """Runs schemathesis against a served OpenAPI document: no 5xx, no answer off its schema, no
    undocumented status code or content type."""
    import os
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "schemathesis")
    proc = await asyncio.create_subprocess_exec(
        exe, "run", f"{base_url}/openapi.json", "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
        "--phases", "examples,coverage,fuzzing", "--max-time", str(max_time), "--no-color",
        "--generation-deterministic", "--request-timeout", "20", "-H", f"Authorization: Bearer {api_key}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=os.environ | (env or {}))
    out, _ = await asyncio.wait_for(proc.communicate(), max_time * 6 + 60)
    return proc.returncode or 0, out.decode()


async def columns_containing(pool, needle: str) -> list[str]:
    """Every text, bytea, json and array column of every table in the pool's schema that holds
    ``needle`` (privacy tests: no trace of a customer id, no plaintext code)."""
    schema = await pool.fetchval("SELECT current_schema()")
    cols = await pool.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = $1"
        " AND data_type IN ('text', 'character varying', 'bytea', 'jsonb', 'json', 'ARRAY')", schema)
    hits = []
    for c in cols:
        col = f'"{c["column_name"]}"'
        expr = f"encode({col}, 'escape')" if c["data_type"] == "bytea" else f"{col}::text"
        if await pool.fetchval(f'SELECT count(*) FROM "{c["table_name"]}" WHERE {expr} LIKE $1', f"%{needle}%"):
            hits.append(f'{c["table_name"]}.{c["column_name"]}')
    return hits


GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def reset_group(bootstrap: str, group: str, to: str = "--to-earliest") -> str:
    """Moves every committed offset of an inactive group with Kafka's own consumer-groups tool
    (what an operator runs to replay after a fix or a restore)."""
    from bench.common import kafka_tool

    return kafka_tool(GROUP_COMMAND, "--bootstrap-server", bootstrap, "--group", group, "--reset-offsets",
                      "--all-topics", to, "--execute")


def describe_lags(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """LAG per (topic, partition) as Kafka's consumer-groups tool prints it; a partition the group
    never committed on ('-') lags by its log-end offset (0 when nothing was ever written to it)."""
    from bench.common import kafka_tool

    out = kafka_tool(GROUP_COMMAND, "--bootstrap-server", bootstrap, "--group", group, "--describe")
    lags: dict[tuple[str, int], int] = {}
    header: list[str] | None = None
    for line in out.splitlines():
        cols = line.split()
        if cols[:2] == ["GROUP", "TOPIC"]:
            header = cols
            continue
        if header is None or len(cols) < 6 or cols[0] != group:
            continue
        row = dict(zip(header, cols, strict=False))
        end = row["LOG-END-OFFSET"]
        lag = row["LAG"] if row["LAG"] != "-" else end
        lags[(row["TOPIC"], int(row["PARTITION"]))] = int(lag) if lag != "-" else 0
    return lags


async def fault_run(tmp_path, *args: str, timeout: float = 840) -> tuple[dict, str, int]:
    """Runs the fault harness (``python -m tests.chaos.harness ARGS``) as its own process; returns
    its JSON result, the tail of its report and its exit status."""
    import json
    import os
    import sys

    from bench.common import ROOT

    out = tmp_path / "result.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.chaos.harness", *args, "--json", str(out), cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        text, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        raise
    report = text.decode(errors="replace")
    assert out.exists(), report[-4000:]
    return json.loads(out.read_text()), report[-3000:], proc.returncode or 0
