"""Checkout sessions: a validation may hold its voucher for a while (Voucherify's ``LOCK``), so
that the same session redeems it later and nobody else does meanwhile.

A session is ``<API key id>/<session key>``: the key a shop chose (or one made for it) counts
only with the API key that made the hold. A personal voucher already reserved its value in the
budget when it was issued; a partner code, which reserved nothing, reserves the held discount
(its ``reserved``) — moved in the ledger like every reservation, so ``reserved + spent <= limit``
holds as before. The hold ends at redemption (what was reserved is spent), at release, or when
it expires (the expiry job gives a partner code's reservation back).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg

from services.issuance import checkout_store, ratelimit
from services.issuance.checkout import Accept, Refuse
from services.issuance.checkout_handlers import Checked, CheckoutHandlers, view
from services.issuance.ratelimit import Subject
from shared import events as ev

log = logging.getLogger(__name__)


def session_of(api_key_id: str, key: str) -> str:
    """A checkout session as stored: the shop's session key under its API key."""
    return f"{api_key_id}/{key}"


class CheckoutSessions:
    def __init__(self, checkout: CheckoutHandlers, pool) -> None:
        self.checkout = checkout
        self._pool = pool

    async def hold(self, *, api_key_id: str, key: str, ttl_s: float, code: str, customer_id: str, order: ev.Money,
                   items: list[ev.LineItem], who: tuple[Subject, ...] = ()) -> Checked:
        """A validation that, when the voucher is good for the order, holds it for ``key`` during
        ``ttl_s`` (again by the same session: the hold is renewed). One attempt of ``who`` is
        taken first (:class:`ratelimit.Limited` if one has none left)."""
        refused = await self.checkout.limiter.take(who)
        if refused is not None:
            raise ratelimit.Limited(refused)
        session = session_of(api_key_id, key)
        code_hash = await self.checkout.code_hash(code)
        now = ev.now_utc()
        async with self._pool().acquire() as conn, conn.transaction():
            row = await checkout_store.lock_for_redemption(conn, code_hash)
            outcome = self.checkout.decide(row, customer_id, order, items, now, session)
            if isinstance(outcome, Accept):
                v = view(row)
                held = v.reserved
                if v.customer_id is None and v.kind != "gift_card":  # a partner code reserves what it holds
                    held = outcome.discount
                    if held != v.reserved and await checkout_store.move_budget(
                            conn, v.campaign_id, held - v.reserved, 0, "held", v.id) is None:
                        outcome = Refuse("budget_exhausted", "the campaign's budget is spent")
                if isinstance(outcome, Accept):
                    await checkout_store.hold_voucher(conn, v.id, session, now + timedelta(seconds=ttl_s), held)
        self.checkout.metrics.checkout.labels(
            "hold", outcome.reason if isinstance(outcome, Refuse) else "held").inc()
        return Checked(row, outcome)

    async def release(self, *, api_key_id: str, key: str, code: str) -> bool:
        """Ends the hold of ``key`` on this code; ``False`` if it holds none (never held, expired
        and forgotten, redeemed, or another session's)."""
        session = session_of(api_key_id, key)
        code_hash = await self.checkout.code_hash(code)
        async with self._pool().acquire() as conn, conn.transaction():
            row = await checkout_store.lock_for_redemption(conn, code_hash)
            if row is None or row["session"] != session or row["status"] != "active":
                return False
            await self._give_back(conn, row["id"], row["campaign_id"], row["customer_id"], row["reserved"])
        self.checkout.metrics.checkout.labels("release", "released").inc()
        return True

    async def expire(self, pool: asyncpg.Pool, limit: int) -> int:
        """Gives back what expired holds of partner codes reserved; returns how many."""
        now = ev.now_utc()
        async with pool.acquire() as conn, conn.transaction():
            due = await checkout_store.expired_partner_holds(conn, now, limit)
            for v in due:
                await self._give_back(conn, v["id"], v["campaign_id"], None, v["reserved"])
            await checkout_store.forget_expired(conn, now)
        return len(due)

    async def _give_back(self, conn: asyncpg.Connection, voucher_id: str, campaign_id: str, customer_id: str | None,
                         reserved: int) -> None:
        if customer_id is None and reserved:
            if await checkout_store.move_budget(conn, campaign_id, -reserved, 0, "released", voucher_id) is None:
                raise RuntimeError(f"ledger refused to release a hold on {campaign_id}")  # cannot happen
            reserved = 0
        await checkout_store.release_hold(conn, voucher_id, reserved)
