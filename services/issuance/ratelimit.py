"""Failure limits of the checkout API, against code guessing, shared by every worker and instance.

A shop calls checkout with one API key for all its shoppers, so a limit per key (or per client
address: the shop's server) would let one guesser lock every honest shopper out. Failures are
counted per subject instead — the key with the customer id, and the key with the shopper the
shop names (``X-Shopper-Id``: a session, an account, a client address) — so a guesser exhausts
only their own buckets. Each subject may fail ``burst`` times, refilled at ``per_minute``.
Listings of on-site codes (which reveal codes) are limited the same way, under their own budget,
and always count.

A request takes a token from each of its subjects before it is answered — in the statement that
reads its voucher — and gives them back unless it failed, in the background: with the next
statement that takes attempts (a later request's read), or on their own when none comes within
:data:`LINGER_S`. Concurrent guesses cannot overdraw a bucket, and a request that would succeed
never waits on anyone else's failures. The buckets and their rule live in PostgreSQL (migration
``005_failure_limits.sql``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import asyncpg

from services.issuance import checkout_store
from shared.batching import Batcher
from shared.erasure import subject_hash
from shared.kafka import sanitized

log = logging.getLogger(__name__)

# How long give-backs wait for a statement that takes attempts to carry them before they are
# written on their own: under load a read comes sooner, and one round trip serves both.
LINGER_S = 0.01


@dataclass(frozen=True, slots=True)
class Subject:
    kind: str  # "customer" or "shopper": the metric's label when this subject runs out
    id: str


@dataclass(frozen=True, slots=True)
class Refused:
    retry_after: int
    by: str  # the kind of subject that ran out


class Limited(Exception):
    """A checkout request refused because one of its subjects has no attempts left."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(f"no attempts left for the {refused.by}")
        self.refused = refused


def judge(requests: Sequence[Sequence[Subject]], waits: Sequence[int]) -> tuple[list[Refused | None], list[str]]:
    """Each request's outcome from the per-subject answers of a take (in the same flat order),
    and the subjects whose tokens must go back: a request refused by one subject takes nothing."""
    answers: list[Refused | None] = []
    undo: list[str] = []
    i = 0
    for who in requests:
        mine = waits[i:i + len(who)]
        i += len(who)
        if any(mine):
            worst = max(range(len(who)), key=lambda j: mine[j])
            answers.append(Refused(mine[worst], who[worst].kind))
            undo += [s.id for s, w in zip(who, mine, strict=True) if w == 0]
        else:
            answers.append(None)
    return answers, undo


class FailureLimiter:
    def __init__(self, pool: Callable[[], asyncpg.Pool], key: bytes, *, purpose: str = "failed",
                 per_minute: float = 30.0, burst: int = 30, max_batch: int = 500) -> None:
        """``purpose`` keeps budgets apart in the one table (failed attempts, on-site listings);
        subjects are stored as keyed hashes under ``key`` (no customer or shopper id at rest)."""
        self._pool = pool
        self._key = key
        self.purpose = purpose
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._takes: Batcher[None, tuple[Subject, ...], Refused | None] = Batcher(self._take, max_batch=max_batch)
        self.max_batch = max_batch
        self._returns: list[str] = []
        self._returning: asyncio.Task | None = None
        self._draining = asyncio.Event()  # set at stop: no linger

    def subjects(self, key_id: str, customer_id: str, shopper: str | None) -> tuple[Subject, ...]:
        """Whose budget a checkout request counts against."""
        by_customer = Subject("customer", self._id(f"{key_id}/c/{customer_id}"))
        return (by_customer, Subject("shopper", self._id(f"{key_id}/s/{shopper}"))) if shopper else (by_customer,)

    def _id(self, subject: str) -> str:
        return f"{self.purpose}/{subject_hash(self._key, subject)[:32]}"

    async def take(self, who: Sequence[Subject]) -> Refused | None:
        """One attempt from every subject, or why not (then nothing is taken). The checkout's
        validations and redemptions take theirs in the statement that reads their voucher
        (``checkout_store.redemption_contexts``); this is for requests that read nothing else."""
        return await self._takes.submit(None, tuple(who))

    def give_back(self, subject_ids: Iterable[str]) -> None:
        """Tokens return (the attempt did not fail, or its request took nothing), in the background:
        the answer does not wait. They go with the next statement that takes attempts
        (:meth:`carried`), or on their own after :data:`LINGER_S`."""
        self._returns.extend(subject_ids)
        if self._returns and self._returning is None:
            self._returning = asyncio.create_task(self._give_back())

    @contextlib.contextmanager
    def carried(self) -> Iterator[list[str]]:
        """The give-backs waiting, for the statement run inside to carry; given back again if it
        fails (a bucket holds at most its burst, so one returned twice costs nothing)."""
        due, self._returns = self._returns, []
        try:
            yield due
        except BaseException:
            self.give_back(due)
            raise

    async def drain(self) -> None:
        """Writes the give-backs still waiting for a read at once, and waits for them (before the
        pool closes)."""
        self._draining.set()
        if self._returning is not None:
            await self._returning

    async def _give_back(self) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), LINGER_S)
            while self._returns:
                batch, self._returns = self._returns[:self.max_batch], self._returns[self.max_batch:]
                try:
                    await checkout_store.settle_attempts(self._pool(), [], batch, self.rate, self.burst)
                except Exception as exc:
                    log.warning("failure-limit tokens not given back", extra={"error": sanitized(exc),
                                                                              "subjects": len(batch)})
        finally:
            self._returning = None

    async def forget_full(self, pool: asyncpg.Pool) -> int:
        """Removes buckets that have refilled since they were last taken from (a sweep of the
        table: on ``pool``, not the sessions planned for probes by key the takes use)."""
        return await checkout_store.forget_full_buckets(pool, self.purpose + "/", self.rate, self.burst)

    async def _take(self, _: None, requests: list[tuple[Subject, ...]]) -> list[Refused | None]:
        with self.carried() as returns:
            waits = await checkout_store.settle_attempts(self._pool(), [s.id for who in requests for s in who],
                                                         returns, self.rate, self.burst)
        answers, undo = judge(requests, waits)
        self.give_back(undo)
        return answers

