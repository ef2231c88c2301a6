"""The four services as processes on the real stack, for end-to-end tests: their own schemas and
ports, an API key with every scope, and helpers to query their databases and metrics."""

from __future__ import annotations

import contextlib
from pathlib import Path

import asyncpg
import httpx

from bench.common import free_port, samples, service_process
from shared import auth
from shared.settings import KafkaSettings, PostgresSettings
from tests.support import columns_containing, unique

SERVICES = ("consent", "segmentation", "issuance", "analytics")


class Fleet:
    def __init__(self, kafka: KafkaSettings, logs: Path, **env: str) -> None:
        self.kafka = kafka
        self.logs = logs
        self.ports = {s: free_port() for s in SERVICES}
        self.schemas = {s: unique(f"e2e_{s}_") for s in SERVICES}
        self.env = {"VOUCHERSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
                    "CONSENT_PRIVACY_SERVICES": ",".join(SERVICES)} | env
        for s in SERVICES:
            self.env[f"{s.upper()}_HTTP_PORT"] = str(self.ports[s])
            self.env[f"{s.upper()}_SCHEMA_NAME"] = self.schemas[s]
        _, self.key = auth.new_key()
        self._stack = contextlib.AsyncExitStack()
        self.runs = 0

    async def start(self) -> None:
        self.runs += 1
        for s in SERVICES:
            await self._stack.enter_async_context(
                service_process(s, self.env, self.ports[s], self.logs / f"{s}-{self.runs}.log"))
        if self.runs == 1:  # (a restart keeps the schemas, and the key in them)
            for s in SERVICES:
                async with self.connect(s) as conn:
                    await auth.create_key(conn, "e2e", list(auth.SCOPES), key=self.key)

    async def stop(self) -> None:
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def connect(self, service: str):
        conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value(),
                                     server_settings={"search_path": self.schemas[service]})
        try:
            yield conn
        finally:
            await conn.close()

    async def fetchval(self, service: str, query: str, *args):
        async with self.connect(service) as conn:
            return await conn.fetchval(query, *args)

    async def fetch(self, service: str, query: str, *args):
        async with self.connect(service) as conn:
            return await conn.fetch(query, *args)

    def client(self, service: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.ports[service]}",
                                 headers={"Authorization": f"Bearer {self.key}"}, timeout=30)

    async def metrics(self, service: str) -> str:
        async with self.client(service) as client:
            return (await client.get("/metrics")).text

    async def columns_containing(self, needle: str) -> list[str]:
        """Every text-like column of every table of the four schemas that holds ``needle``."""
        hits = []
        for s in SERVICES:
            async with self.connect(s) as conn:
                hits += [f"{s}.{hit}" for hit in await columns_containing(conn, needle)]
        return hits


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when absent)."""
    return sum(x.value for x in samples(text, name) if all(x.labels.get(k) == v for k, v in labels.items()))
