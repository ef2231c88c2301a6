"""Failure limits on the real database: one guesser on a shop's shared checkout key is stopped
without stopping anyone else, and two workers share one budget."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.issuance import checkout_store, ratelimit
from services.issuance.app import IssuanceService
from shared import auth
from tests.integration.issuance.conftest import campaign
from tests.integration.issuance.test_checkout import issue, order
from tests.support import wait_for

BURST = 30


def client(service, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http(manage_lifecycle=False)),
                             base_url="http://issuance", headers={"Authorization": f"Bearer {key}"})


async def test_a_guesser_is_stopped_while_honest_shoppers_on_the_same_key_redeem(issuance, kafka):
    await issuance.client.post("/v1/campaigns", json=campaign())
    honest = [f"h-{i}" for i in range(100)]
    codes = await issue(issuance, kafka, honest)
    second = IssuanceService(issuance.settings)  # another worker on the same database
    await second.start()
    async with issuance.pool.acquire() as conn:
        _, shop_key = await auth.create_key(conn, "the shop's backend", ["checkout"])
    workers = [client(issuance, shop_key), client(second, shop_key)]
    try:
        async def guess(i: int, customer: str = "guesser", shopper: str = "tab-666") -> int:
            r = await workers[i % 2].post("/v1/validations", headers={"X-Shopper-Id": shopper}, json={
                "code": f"GUESS{i:05d}XX", "customer_id": customer, "order": order(20000)})
            assert r.status_code in (200, 429), r.text
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
            return r.status_code

        async def redeem(i: int, customer: str) -> int:
            r = await workers[i % 2].post("/v1/redemptions", headers={
                "X-Shopper-Id": f"tab-{i}", "Idempotency-Key": f"order-{i}"}, json={
                "code": codes[customer], "customer_id": customer, "order": order(20000), "order_id": f"o-{i}"})
            return r.status_code

        # 60 guesses at once, spread over both workers, while 100 shoppers redeem on the same key.
        guesses, redemptions = await asyncio.gather(
            asyncio.gather(*(guess(i) for i in range(60))),
            asyncio.gather(*(redeem(i, c) for i, c in enumerate(honest))))
        assert redemptions == [201] * 100
        assert guesses.count(200) == BURST and guesses.count(429) == 60 - BURST  # one budget, taken atomically

        # Changing the customer id does not reset the shopper's budget; an honest shopper's
        # refusal (a typo) costs only their own budget.
        assert await guess(100, customer="someone-else") == 429
        assert (await workers[0].post("/v1/validations", headers={"X-Shopper-Id": "tab-1"}, json={
            "code": "TYPO1234XYZ", "customer_id": "h-1", "order": order(20000)})).json()["reason"] == "unknown_code"
        metrics = issuance.metrics.render().decode() + second.metrics.render().decode()
        assert 'voucherstream_checkout_rate_limited_total{by="shopper"}' in metrics
        # Buckets of requests that did not fail are not kept (given back in the background).
        async def only_the_failed_buckets():
            return await issuance.pool.fetchval("SELECT count(*) FROM failure_buckets") == 4 or None

        await wait_for(only_the_failed_buckets, what="the honest shoppers' buckets gone")
    finally:
        for c in workers:
            await c.aclose()
        await second.stop()


async def test_the_sweep_forgets_the_buckets_that_refilled_and_keeps_the_others(issuance):
    key_id = issuance.api_key.split("_")[1]
    # Failed validations keep their buckets short: one token for "earlier", ten (20 s to refill) for "now".
    for customer in ["earlier"] + ["now"] * 10:
        r = await issuance.client.post("/v1/validations", headers={"X-Shopper-Id": f"tab-{customer}"}, json={
            "code": "NOSUCH2345XY", "customer_id": customer, "order": order(20000)})
        assert r.json()["reason"] == "unknown_code"
    subjects = {c: {s.id for s in issuance.limiter.subjects(key_id, c, f"tab-{c}")} for c in ("earlier", "now")}
    async with issuance.pool.acquire() as conn:
        assert set(await conn.fetchval("SELECT array_agg(subject) FROM failure_buckets")) == \
            subjects["earlier"] | subjects["now"]
        await conn.execute("UPDATE failure_buckets SET updated_at = updated_at - interval '1 hour'"
                           " WHERE subject = ANY($1::text[])", list(subjects["earlier"]))  # refilled since
        await issuance.forget_full_buckets()
        assert set(await conn.fetchval("SELECT array_agg(subject) FROM failure_buckets")) == subjects["now"]


async def test_tokens_go_back_with_the_next_read_or_on_their_own_and_survive_a_failed_one(issuance, monkeypatch):
    alone = []
    settle, contexts = checkout_store.settle_attempts, checkout_store.redemption_contexts

    async def settle_alone(conn, takes, returns, rate, burst):
        alone.append(len(returns))
        return await settle(conn, takes, returns, rate, burst)

    failing = [True]

    async def read_failing_once(*args, **kwargs):
        if failing.pop() if failing else False:
            raise ConnectionResetError("the read's connection went away")
        return await contexts(*args, **kwargs)

    monkeypatch.setattr(checkout_store, "settle_attempts", settle_alone)
    linger = 5.0  # the next read comes sooner, however slow the machine
    monkeypatch.setattr(ratelimit, "LINGER_S", linger)

    async def validate(i: int) -> int:
        return (await issuance.client.post("/v1/validations", headers={"X-Shopper-Id": f"tab-{i}"}, json={
            "code": "NOSUCH3456XY", "customer_id": f"c-{i}", "order": order(20000)})).status_code

    async def all_given_back():
        return await issuance.pool.fetchval("SELECT count(*) FROM failure_buckets") == 0 or None

    # Refusals count, so give back by hand what honest requests would: twenty requests in a row,
    # each answered before the next is read; their give-backs ride on the next read.
    limiter = issuance.limiter
    key_id = issuance.api_key.split("_")[1]
    started = asyncio.get_running_loop().time()
    for i in range(20):
        assert await validate(i) == 200
        limiter.give_back(s.id for s in limiter.subjects(key_id, f"c-{i}", f"tab-{i}"))
    took = asyncio.get_running_loop().time() - started
    await wait_for(all_given_back, what="every token back")
    # The last request's two (no read came after them), and two more per linger the loop outlasted.
    assert sum(alone) <= 2 * (1 + int(took / linger))

    monkeypatch.setattr(checkout_store, "redemption_contexts", read_failing_once)
    limiter.give_back(s.id for s in limiter.subjects(key_id, "c-0", "tab-0"))
    limiter.give_back(["failed/none"])  # (a subject with no bucket: nothing to give back to)
    with pytest.raises(ConnectionResetError):
        await issuance.client.post("/v1/validations", json={
            "code": "NOSUCH3456XY", "customer_id": "c-x", "order": order(20000)})
    await wait_for(all_given_back, what="the tokens a failed read carried, back on their own")


async def test_at_stop_the_waiting_give_backs_are_written_at_once(issuance, monkeypatch):
    """``drain`` does not wait out the linger: a stopping service writes what it owes at once."""
    monkeypatch.setattr(ratelimit, "LINGER_S", 60.0)
    assert (await issuance.client.post("/v1/validations", headers={"X-Shopper-Id": "tab-stop"}, json={
        "code": "NOSUCH3456XY", "customer_id": "c-stop", "order": order(20000)})).status_code == 200
    assert await issuance.pool.fetchval("SELECT count(*) FROM failure_buckets") > 0  # the refusal's tokens
    limiter = issuance.limiter
    limiter.give_back(s.id for s in limiter.subjects(issuance.api_key.split("_")[1], "c-stop", "tab-stop"))
    await asyncio.wait_for(limiter.drain(), timeout=5)
    assert await issuance.pool.fetchval("SELECT count(*) FROM failure_buckets") == 0
