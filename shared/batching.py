"""Coalescing of concurrent calls into batches (the idea of a database's group commit).

``Batcher.submit(key, item)`` hands ``item`` to ``flush(key, items)``. At most one flush per key
is in flight; the items that arrive meanwhile wait and go together in the next one. An idle
key's first item is flushed at once: batches form only under load, which is when they pay (one
round trip, one lock, one commit for many). ``flush`` returns one result per item, in order; if
it raises, every item of that batch gets the error, as its own call would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[K, T, R]):
    def __init__(self, flush: Callable[[K, list[T]], Awaitable[list[R]]], *, max_batch: int = 200) -> None:
        self._flush = flush
        self.max_batch = max_batch
        self._waiting: dict[K, list[tuple[T, asyncio.Future]]] = {}
        self._flushing: dict[K, asyncio.Task] = {}

    async def submit(self, key: K, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((item, future))
        if key not in self._flushing:
            self._flushing[key] = asyncio.create_task(self._drain(key))
        return await future

    async def _drain(self, key: K) -> None:
        try:
            while waiting := self._waiting.get(key):
                batch, self._waiting[key] = waiting[:self.max_batch], waiting[self.max_batch:]
                try:
                    results = await self._flush(key, [item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"flush gave {len(results)} results for {len(batch)} items")
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException as exc:  # cancelled: the callers hear it too
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(RuntimeError(f"batch abandoned: {exc!r}"))
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            del self._flushing[key]
            for _, future in self._waiting.pop(key, []):  # left only when cancelled (the service stops)
                if not future.done():
                    future.set_exception(RuntimeError("the batcher stopped"))
