"""The runtime every service shares: PostgreSQL pool and migrations, the producer, the outbox
relay, consumers and periodic jobs as supervised background tasks, and an HTTP app with
``/healthz``, ``/readyz`` and ``/metrics``. Nothing connects at import time: :meth:`Service.start`
builds everything and :meth:`Service.stop` closes it, in the HTTP app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from shared import datakeys, db, logs, tracing
from shared.auth import Authenticator
from shared.consumer import BatchConsumer, Handler
from shared.datakeys import DataKeys
from shared.fastpath import FastRoutes
from shared.http_limits import DEFAULT_LIMIT, BodyLimit
from shared.kafka import Producer, start_producer
from shared.metrics import Metrics, metrics_endpoint
from shared.relay import OutboxRelay
from shared.settings import InsecureSettings, ServiceSettings, require_safe_settings

log = logging.getLogger(__name__)


class JSONBody(Response):
    """A JSON response serialised by orjson (what ``JSONResponse`` does with the standard
    library's encoder, several times faster): for the hot routes' plain dict answers. FastAPI's
    own ``ORJSONResponse`` is deprecated in the version locked here."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ErrorOut(BaseModel):
    detail: str


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "No such resource"}}


class NotStarted(RuntimeError):
    """What needs the service started (its pool, producer, relay) was asked for before."""


class Service:
    """Base of the four services. Subclasses add consumers and jobs in :meth:`on_start` and
    routes in :meth:`routes`."""

    migrations: Path | None = None
    outbox_seal_key: bytes | None = None  # services that enqueue sealed records set it
    outbox_previous_seal_keys: tuple[bytes, ...] = ()  # while a seal key rotates: records sealed before

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        tracing.setup(settings.tracing)
        self.metrics: Metrics = Metrics(settings.service)
        self._pool: asyncpg.Pool | None = None
        self.auth = Authenticator(lambda: self.pool)
        self.keys = DataKeys(settings.data, lambda: self.pool)
        self._producer: Producer | None = None
        self._relay: OutboxRelay | None = None
        self._relay_pool: asyncpg.Pool | None = None
        self.consumers: list[BatchConsumer] = []
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self.started = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise NotStarted("the service's database pool exists once it has started")
        return self._pool

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            raise NotStarted("the service's producer exists once it has started")
        return self._producer

    @property
    def consumer(self) -> BatchConsumer:
        """The service's first consumer (each service has one)."""
        if not self.consumers:
            raise NotStarted("the service's consumer exists once it has started")
        return self.consumers[0]

    @property
    def relay(self) -> OutboxRelay:
        if self._relay is None:
            raise NotStarted("the service's outbox relay exists once it has started")
        return self._relay

    async def start(self) -> None:
        s = self.settings
        require_safe_settings(s)
        self._pool = pool = await db.create_pool(s.postgres, s.db_schema, application_name=s.service)
        folders = [("shared", db.SHARED_MIGRATIONS)]
        if self.migrations is not None:
            folders.append((s.service, self.migrations))
        await db.migrate(pool, s.db_schema, db.discover(*folders))
        await datakeys.migrate(pool, s.data)
        self._producer = producer = await start_producer(s.kafka, s.service)
        # The relay's own connection (one at a time holds its lock), planned for probes by key.
        self._relay_pool = await db.create_pool(s.postgres, s.db_schema, application_name=f"{s.service}-relay",
                                                min_size=1, max_size=1, session=db.KEY_PROBES)
        self._relay = OutboxRelay(pool=self._relay_pool, producer=producer,
                                 kafka=s.kafka, schema=s.db_schema, metrics=self.metrics, seal_key=self.outbox_seal_key,
                                 previous_seal_keys=self.outbox_previous_seal_keys)
        self.spawn("outbox-relay", self._relay.run)
        await self.on_start()
        # Request latency: objects that live as long as the service (settings, pools, compiled
        # schemas) leave the collector's generations, and young collections run less often, so a
        # full collection no longer lands in the middle of a checkout request.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        self.started = True
        log.info("service started", extra={"service": s.service})

    async def on_start(self) -> None:
        """Add consumers (:meth:`consume`) and jobs (:meth:`every`)."""

    async def stop(self) -> None:
        self._stopping.set()
        for consumer in self.consumers:
            consumer.stop()
        if self._relay is not None:
            self._relay.stop()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=30)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()
        for pool in (self._relay_pool, self._pool):
            if pool is not None:
                await pool.close()
        self.started = False
        log.info("service stopped", extra={"service": self.settings.service})

    def consume(self, topics: list[str], handler: Handler, *, group_suffix: str = "", **options) -> BatchConsumer:
        """Adds a batch consumer; ``options`` go to :class:`BatchConsumer` (``validate``, ``assignors``)."""
        producer = self.producer  # consume() belongs in on_start()

        async def handle(batch):
            await handler(batch)
            self.relay.wake()  # what the batch enqueued goes out now, not at the relay's next poll

        consumer = BatchConsumer(settings=self.settings.kafka, group_id=self.settings.group_id + group_suffix,
                                 topics=topics, handler=handle, producer=producer, metrics=self.metrics,
                                 keys=self.keys, **options)
        self.consumers.append(consumer)
        self.spawn(f"consumer:{','.join(topics)}", consumer.run)
        return consumer

    def every(self, name: str, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        async def loop() -> None:
            while not self._stopping.is_set():
                try:
                    await job()
                except Exception:
                    log.exception("periodic job failed", extra={"job": name})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

        self.spawn(name, loop)

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Runs ``run`` until the service stops; if it crashes it is logged and restarted."""

        async def supervised() -> None:
            delay = 0.5
            while not self._stopping.is_set():
                try:
                    await run()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background task crashed; restarting", extra={"task": name, "retry_in_s": delay})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)

        self._tasks.append(asyncio.create_task(supervised(), name=name))

    # ------------------------------------------------------------------ HTTP

    def routes(self, app: FastAPI) -> None:
        """Add the service's own routes."""

    async def ready(self) -> bool:
        if not (self.started and self._pool is not None):
            return False
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
        except Exception:
            return False
        return True

    def http(self, *, manage_lifecycle: bool = True, **fastapi_kwargs) -> FastAPI:
        app = http_app(self.start, self.stop, self.metrics, self.ready, manage_lifecycle=manage_lifecycle,
                       max_body_bytes=self.settings.http_max_body_bytes, **fastapi_kwargs)
        self.routes(app)
        tracing.instrument_app(app)
        return app


def http_app(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]], metrics: Metrics,
             ready: Callable[[], Awaitable[bool]], *, manage_lifecycle: bool = True,
             max_body_bytes: int = DEFAULT_LIMIT, **fastapi_kwargs) -> FastAPI:
    """A service's FastAPI app: lifespan (start/stop), ``/metrics``, ``/healthz``, ``/readyz``,
    request bodies bounded (413), and 400/401/403/413 documented once for every route."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if manage_lifecycle:
            await start()
        try:
            yield
        finally:
            if manage_lifecycle:
                await stop()

    fastapi_kwargs.setdefault("responses", {
        400: {"model": ErrorOut, "description": "The body is not JSON"},
        401: {"model": ErrorOut, "description": "No API key, or an unknown one"},
        403: {"model": ErrorOut, "description": "The API key lacks the scope"},
        413: {"model": ErrorOut, "description": f"The request body is over the limit ({max_body_bytes} bytes)"}})
    app = FastAPI(lifespan=lifespan, **fastapi_kwargs)
    # A service's routes may add fast handlers here (shared.fastpath); inside the body limit.
    app.state.fast_routes = {}
    app.add_middleware(FastRoutes, routes=app.state.fast_routes)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_route("/metrics", metrics_endpoint(metrics), include_in_schema=False)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        ok = await ready()
        return JSONResponse({"status": "ready" if ok else "not ready"}, status_code=200 if ok else 503)

    return app


def main(module: str, create_app: Callable[[], Service], title: str) -> tuple[Callable[[], FastAPI], Callable[[], None]]:
    """``(asgi, run)`` for a service's ``__main__``: ``asgi`` builds one worker's app (for
    ``http_workers`` > 1), ``run`` serves the service."""

    def asgi() -> FastAPI:
        service = create_app()
        logs.configure(service.settings.service, service.settings.log_level)
        return service.http(title=title, version="1")

    def start() -> None:
        run(create_app(), factory=f"{module}:asgi", title=title, version="1")

    return asgi, start


def run(service: Service, *, factory: str | None = None, **fastapi_kwargs) -> None:
    """``python -m services.<name>``: JSON logs, the HTTP server, graceful stop on SIGTERM/SIGINT.
    With ``http_workers`` > 1, uvicorn forks that many processes sharing the port, each built by
    ``factory`` (an import string of a function returning the ASGI app)."""
    s = service.settings
    logs.configure(s.service, s.log_level)
    try:
        require_safe_settings(s)
    except InsecureSettings as exc:
        raise SystemExit(str(exc)) from None
    common: dict[str, Any] = dict(host=s.http_host, port=s.http_port, log_config=None, access_log=False, lifespan="on",
                  timeout_graceful_shutdown=30, timeout_keep_alive=30)
    if s.http_workers > 1 and factory:
        uvicorn.run(factory, factory=True, workers=s.http_workers, **common)
        return
    uvicorn.Server(uvicorn.Config(service.http(**fastapi_kwargs), **common)).run()
