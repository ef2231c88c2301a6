"""Group commit for single-use redemptions.

Every redemption of a campaign moves the campaign's ledger row, and PostgreSQL holds that row's
lock until the commit has flushed the WAL: one statement per redemption let a campaign redeem
only as fast as one lock hand-over plus one flush, however many cores served HTTP (the rate
measured is in docs/benchmarks.md). The writer keeps at most one write per campaign in flight
from this process; the redemptions that arrive meanwhile go together in the next one
(``shared.batching``), a call of the ``redeem_single_use_batch`` function
(``migrations/R__redeem_single_use_batch.sql``): one ledger lock, one flush, each redemption
decided as if it were alone, in arrival order.

The writer has its own small pool, so that it never waits for a connection behind the requests
it serves. It also finds the data keys its customers' events are sealed under, on the same
connection just before, creating those of customers met for the first time: a new customer's
redemption waits for one write, not for a key store round of its own first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from services.issuance import checkout_store
from services.issuance.budget import Ledger
from services.issuance.checkout_store import SingleUse
from shared.batching import Batcher
from shared.datakeys import DataKeys


@dataclass(frozen=True, slots=True)
class Written:
    """``redeemed`` (with the ledger right after this redemption), ``stale`` (the voucher changed
    since it was read), ``key_used`` (the Idempotency-Key was used meanwhile) or ``budget``
    (the ledger refused; nothing was written)."""

    outcome: str
    ledger: Ledger | None


class RedemptionWriter:
    def __init__(self, pool: Callable[[], asyncpg.Pool], keys: DataKeys, *, max_batch: int = 200,
                 observe: Callable[[int, float], None] = lambda size, seconds: None) -> None:
        self._pool = pool
        self._keys = keys
        self._observe = observe
        self._batcher: Batcher[str, SingleUse, Written] = Batcher(self._write, max_batch=max_batch)

    async def write(self, item: SingleUse) -> Written:
        return await self._batcher.submit(item.campaign_id, item)

    async def _write(self, campaign_id: str, items: list[SingleUse]) -> list[Written]:
        started = time.perf_counter()
        async with self._pool().acquire() as conn:
            # Outside a transaction a new key commits at once, before anything is sealed under it.
            keys = await self._keys.for_customers(conn, [i.customer_id for i in items])
            events = [i.event(keys[i.customer_id]) for i in items]
            written = await checkout_store.redeem_single_use_batch(conn, campaign_id, "voucher-redeemed", items, events)
        self._observe(len(items), time.perf_counter() - started)
        return [Written(outcome, ledger) for outcome, ledger in written]
