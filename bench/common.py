"""Helpers shared by the benchmarks: running a service as its own process, percentiles."""

from __future__ import annotations

import asyncio
import atexit
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx

from shared import db, topics
from shared.settings import PostgresSettings

ROOT = Path(__file__).resolve().parents[1]


_handed_out: set[int] = set()
_scratch: list[Path] = []
_failed = False


def scratch(prefix: str) -> Path:
    """A working folder for one run (service logs, load results), removed when the process ends
    normally; kept when it ends on an unhandled exception, so the logs it names can be read, or
    when ``VOUCHERSTREAM_BENCH_KEEP`` is set (to read a good run's results afterwards)."""
    if not _scratch:
        hook = sys.excepthook

        def failed(*exc) -> None:
            global _failed
            _failed = True
            for path in _scratch:
                print(f"[bench] kept {path} (the run failed)", file=sys.stderr)
            hook(*exc)

        def remove() -> None:
            keep = bool(os.environ.get("VOUCHERSTREAM_BENCH_KEEP"))
            for path in _scratch:
                if keep and not _failed:
                    print(f"[bench] kept {path} (VOUCHERSTREAM_BENCH_KEEP)", file=sys.stderr)
                elif not _failed:
                    shutil.rmtree(path, ignore_errors=True)

        sys.excepthook = failed
        atexit.register(remove)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _scratch.append(path)
    return path


def found(pattern: str, text: str, what: str) -> str:
    """The first group of ``pattern`` in a tool's output; a clear error when the tool printed otherwise."""
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"{what} not found in:\n{text[-2000:]}")
    return match.group(1)

def free_port() -> int:
    """A free port for a service to listen on, below Linux's ephemeral range (32768–60999): a port
    the kernel picked for us there can be taken by any outgoing connection (a Kafka or PostgreSQL
    client) before the service binds it — a chaos run once lost consent to "address already in use"."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port between 20000 and 32000")


def kafka_libs() -> Path:
    """The Kafka jars the local stack runs (fetched into the cache by ``stack.sh fetch``)."""
    pom = (ROOT / "deploy/local/kafka/pom.xml").read_text()
    version = found(r"<kafka.version>(.*?)</kafka.version>", pom, "deploy/local/kafka/pom.xml's kafka.version")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voucherstream"
    libs = cache / f"kafka-{version}" / "libs"
    if not (libs / ".complete").exists():
        subprocess.run(["bash", str(ROOT / "deploy/local/stack.sh"), "fetch"], check=True)
    return libs


def local_broker_age_s() -> float | None:
    """How long the local stack's broker (``deploy/local/stack.sh``) has run, in seconds; ``None``
    when it is not ours (another broker answers, or this is not Linux). A young JVM is still
    compiling its hot code, which takes CPU from everything beside it (docs/benchmarks.md)."""
    try:
        state = Path(os.environ.get("VOUCHERSTREAM_STATE_DIR") or ROOT / ".local")
        pid = (state / "kafka" / "pid").read_text().strip()
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - ticks / os.sysconf("SC_CLK_TCK"), 1)


def kafka_tool(main: str, *args: str, timeout: float = 120) -> str:
    """Runs one of Kafka's own tools (a class in the jars) and returns what it printed."""
    cmd = ["java", "-Xmx512m", f"-Dlog4j2.configurationFile={ROOT / 'deploy/local/kafka/log4j2.yaml'}",
           "-cp", f"{kafka_libs()}/*", main, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{main} {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def samples(text: str, name: str) -> list:
    """The samples named ``name`` in Prometheus text (prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def histogram(text: str, name: str) -> dict[float, float]:
    """A Prometheus histogram's cumulative bucket counts ``{upper bound: count}`` from /metrics text
    (summed over label sets)."""
    out: dict[float, float] = {}
    for sample in samples(text, name + "_bucket"):
        bound = float(sample.labels["le"])
        out[bound] = out.get(bound, 0.0) + sample.value
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` of what was observed between two
    scrapes (Prometheus' own histogram_quantile interpolates inside the bucket; this reports the
    bucket's bound, an upper estimate)."""
    delta = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return float("nan")
    for bound in sorted(delta):
        if delta[bound] >= q / 100 * total:
            return bound
    return float("inf")


def cpu_seconds(names: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by every process on the machine, grouped: the pids
    in ``names`` by their name, Kafka's JVM as ``kafka``, PostgreSQL's processes as ``postgres``,
    this process as ``bench``, the rest as ``other`` (a process that ended meanwhile is not counted)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        used = (int(fields[11]) + int(fields[12])) / tick
        pid = int(proc.name)
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        group = (names.get(pid) or ("bench" if pid == os.getpid() else None)
                 or ("kafka" if b"kafka.Kafka" in cmdline else None)
                 or ("postgres" if comm.startswith("postgres") else "other"))
        out[group] = out.get(group, 0.0) + used
    return out


def cpu_share(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Cores used by each group between two ``cpu_seconds`` readings ``seconds`` apart."""
    used = {g: after[g] - before.get(g, 0.0) for g in after}
    return {g: round(u / seconds, 2) for g, u in sorted(used.items(), key=lambda gu: -gu[1]) if u > 0.005 * seconds}


AUTOVACUUM_ANALYZE_THRESHOLD = 50  # PostgreSQL's default: rows changed before a first ANALYZE


async def analyze(schemas: list[str]) -> None:
    """ANALYZE the tables of these schemas that autovacuum would analyse in a running system: those
    with at least ``autovacuum_analyze_threshold`` (50) rows. A bench's tables are created moments
    before it measures: without column statistics PostgreSQL takes ``customer_id = ANY($1)`` over a
    few hundred ids to match every row and scans the whole table. An empty table is left as
    autovacuum leaves it, never analysed: analysed empty, every plan cached from then on believes
    it empty and scans it as it grows (docs/benchmarks.md, "Young tables")."""
    conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value())
    try:
        tables = await conn.fetch("SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY($1::text[])",
                                  schemas)
        for t in tables:
            name = f'"{t["schemaname"]}"."{t["tablename"]}"'
            if await conn.fetchval(f"SELECT count(*) FROM (SELECT FROM {name} LIMIT {AUTOVACUUM_ANALYZE_THRESHOLD}) s"
                                   ) == AUTOVACUUM_ANALYZE_THRESHOLD:
                await conn.execute(f"ANALYZE {name}")
    finally:
        await conn.close()


@asynccontextmanager
async def scratch_schema(prefix: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A new schema of the bench's own and a one-connection pool on it; both go at the end."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    pool = await db.create_pool(PostgresSettings(), schema, min_size=1, max_size=1)
    try:
        yield schema, pool
    finally:
        try:
            await db.drop_schema(pool, schema)
        finally:
            await pool.close()


async def drop_schemas(schemas: list[str]) -> None:
    """Drops a bench's own schemas (each run creates new ones)."""
    pool = await db.create_pool(PostgresSettings(), schemas[0], min_size=1, max_size=1)
    try:
        for schema in schemas:
            await db.drop_schema(pool, schema)
    finally:
        await pool.close()


async def clean_up(bootstrap: str, prefix: str, env: dict[str, str]) -> None:
    """A bench's own topics and schemas (each ``*_SCHEMA_NAME`` in its services' environment) go
    when it ends, however it ends: a machine that runs the benches daily keeps none of them."""
    try:
        await topics.delete_topics(bootstrap, prefix)
    finally:
        schemas = sorted({v for k, v in env.items() if k.endswith("_SCHEMA_NAME")})
        if schemas:
            await drop_schemas(schemas)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@asynccontextmanager
async def service_process(name: str, env: dict[str, str], port: int, log_path: Path):
    """Runs ``python -m services.<name>`` until the block ends (SIGTERM, then wait)."""
    log = open(log_path, "wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", f"services.{name}", cwd=ROOT,
                                                env=os.environ | {"PYTHONPATH": str(ROOT)} | env,
                                                stdout=log, stderr=log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(300):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.returncode is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"{name} not ready after 30 s; see {log_path}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
        log.close()
