"""How a consumer retries its batch work (``shared.consumer``): a transient failure — the database
or the broker away, a serialization conflict — backs off and runs the same work again, for as long
as it takes, so nothing is lost and the service never dies; any other failure is raised for the
caller to isolate, and a stop asked for meanwhile ends the retrying."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shared.kafka import is_transient
from shared.metrics import Metrics

log = logging.getLogger(__name__)


class NotTransient(Exception):
    """A failure that retrying will not fix (its ``__cause__`` is the failure)."""


class Abandoned(Exception):
    """A stop was asked for while the work kept failing transiently; nothing was committed."""


class Retrying:
    def __init__(self, *, metrics: Metrics, group_id: str, max_backoff_s: float, stopping: asyncio.Event) -> None:
        self.metrics = metrics
        self.group_id = group_id
        self.max_backoff_s = max_backoff_s
        self.stopping = stopping

    async def __call__(self, attempt: Callable[[], Awaitable[None]]) -> None:
        """Runs ``attempt`` until it succeeds; transient failures back off and retry, anything else
        is raised as :class:`NotTransient`, and a stop asked for during a transient failure as
        :class:`Abandoned`."""
        delay = 0.1
        while True:
            try:
                await attempt()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise NotTransient() from exc
                if self.stopping.is_set():
                    raise Abandoned() from exc
                self.metrics.handler_retries.labels(self.metrics.service, type(exc).__name__).inc()
                log.warning("transient failure, retrying the batch",
                            extra={"group": self.group_id, "error": repr(exc), "retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
