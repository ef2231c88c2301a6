"""Group commit for single-use redemptions.

Every redemption of a campaign moves the campaign's ledger row, and PostgreSQL holds that row's
lock until the commit has flushed the WAL: one statement per redemption lets a campaign redeem
only as fast as one lock hand-over plus one flush (~900/s on the reference machine, however many
cores serve HTTP). The writer keeps at most one write per campaign in flight from this process;
the redemptions that arrive meanwhile wait and go together in the next one, a call of the
``redeem_single_use_batch`` function (migration 003): one ledger lock, one flush, each
redemption decided as if it were alone, in arrival order. An idle campaign's first redemption
goes at once; batches only form under load, which is when they help.

The writer has its own small pool: request handlers hold connections of the main pool while they
wait for it, so sharing that pool could leave it without one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.issuance import store
from services.issuance.budget import Ledger


@dataclass(frozen=True, slots=True)
class SingleUse:
    """One redemption of a single-use code, decided and ready to write."""

    campaign_id: str
    voucher_id: str
    reserved: int  # as read: the write applies only if the voucher still holds it
    discount: int
    redemption_id: str
    customer_id: str
    order_id: str | None
    order_amount: int
    currency: str
    at: datetime
    api_key_id: str
    key: str
    request_hash: bytes
    response: dict
    event_template: bytes  # voucher-redeemed with a placeholder ledger


@dataclass(frozen=True, slots=True)
class Written:
    """``redeemed`` (with the ledger right after this redemption), ``stale`` (the voucher changed
    since it was read), ``key_used`` (the Idempotency-Key was used meanwhile) or ``budget``
    (the ledger refused; nothing was written)."""

    outcome: str
    ledger: Ledger | None


class RedemptionWriter:
    def __init__(self, pool: Callable[[], asyncpg.Pool], *, max_batch: int = 200,
                 observe: Callable[[int, float], None] = lambda size, seconds: None) -> None:
        self._pool = pool
        self.max_batch = max_batch
        self._observe = observe
        self._waiting: dict[str, list[tuple[SingleUse, asyncio.Future]]] = {}
        self._writing: dict[str, asyncio.Task] = {}

    async def write(self, item: SingleUse) -> Written:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(item.campaign_id, []).append((item, future))
        if item.campaign_id not in self._writing:
            self._writing[item.campaign_id] = asyncio.create_task(self._drain(item.campaign_id))
        return await future

    async def _drain(self, campaign_id: str) -> None:
        try:
            while waiting := self._waiting.get(campaign_id):
                batch, self._waiting[campaign_id] = waiting[:self.max_batch], waiting[self.max_batch:]
                started = time.perf_counter()
                try:
                    async with self._pool().acquire() as conn:
                        written = await store.redeem_single_use_batch(conn, campaign_id, "voucher-redeemed",
                                                                      [item for item, _ in batch])
                except BaseException as exc:  # every waiter gets the error, as its own statement would have
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._observe(len(batch), time.perf_counter() - started)
                for (_, future), (outcome, ledger) in zip(batch, written, strict=True):
                    if not future.done():
                        future.set_result(Written(outcome, ledger))
        finally:
            del self._writing[campaign_id]
            for _, future in self._waiting.pop(campaign_id, []):  # only when cancelled (the service stops)
                if not future.done():
                    future.set_exception(RuntimeError("the redemption writer stopped"))
