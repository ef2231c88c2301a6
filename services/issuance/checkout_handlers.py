"""Checkout use cases: validate, redeem, roll back, on-site offers.

A single-use code (personal or partner) is read without locks and decided, then written by the
redemption writer together with the campaign's other redemptions of the moment: the write
applies only if the voucher is still as read and the Idempotency-Key new, else the request reads
again (two redemptions of one code: exactly one wins). A gift card takes the pessimistic path,
one transaction: the key is claimed first (a concurrent request with the same key waits, then
gets the first answer), the voucher row locked, the campaign's ledger row moved last. Refusals
are answered too, and replayed as given.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from services.issuance import checkout_store, codes, ratelimit
from services.issuance.campaigns import Catalogue, offer_summary
from services.issuance.checkout import Accept, Refuse, VoucherView, evaluate
from services.issuance.handlers import SOURCE
from services.issuance.keyset import IssuanceKeys
from services.issuance.metrics import IssuanceMetrics
from services.issuance.ratelimit import FailureLimiter, Subject
from services.issuance.redemption_writer import RedemptionWriter, SingleUse
from services.issuance.store import LedgerDisagrees
from shared import events as ev
from shared import tracing
from shared.batching import Batcher
from shared.datakeys import DataKey, DataKeys
from shared.outbox import enqueue, event_record


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Checked:
    row: asyncpg.Record | None  # the checkout context (checkout_store.redemption_contexts), None: no such code
    outcome: Accept | Refuse


def view(row: asyncpg.Record) -> VoucherView:
    return VoucherView(row["id"], row["campaign_id"], row["customer_id"], row["partner"], row["variant"], row["kind"],
                       row["brand"], row["currency"], row["reserved"], row["balance"], row["status"], row["expires_at"],
                       row.get("session"), row.get("session_expires_at"))


def refusal(r: Refuse) -> dict[str, Any]:
    return {"valid": False, "reason": r.reason, "detail": r.detail}


log = logging.getLogger(__name__)

# A lost race re-reads the voucher (then usually answers already_redeemed); after this many, the
# pessimistic path takes the locks and waits its turn.
MAX_OPTIMISTIC_ATTEMPTS = 3


class CheckoutHandlers:
    def __init__(self, catalogue: Catalogue, secrets: IssuanceKeys, keys: DataKeys, metrics: IssuanceMetrics,
                 pool: Callable[[], asyncpg.Pool], reads: Callable[[], asyncpg.Pool], writer: RedemptionWriter,
                 limiter: FailureLimiter, *, max_batch: int = 200) -> None:
        self.catalogue = catalogue
        self.secrets = secrets
        self.keys = keys
        self.metrics = metrics
        self._pool = pool
        self._reads = reads  # sessions planned for probes by key (shared.db.KEY_PROBES)
        self.writer = writer
        self.limiter = limiter
        # Validations and redemptions read their vouchers together: what arrives while one read
        # is in flight goes in the next (one round trip for many; each request alone when idle).
        # The same statement takes their failure-limit attempts.
        self._reader: Batcher[None, tuple[bytes, str, str, tuple[Subject, ...]], tuple] = Batcher(
            self._read, max_batch=max_batch)

    async def _read(self, _: None, lookups: list[tuple[bytes, str, str, tuple[Subject, ...]]]) -> list[tuple]:
        attempts = [who for *_, who in lookups]
        with self.limiter.carried() as returns:
            rows, waits = await checkout_store.redemption_contexts(
                self._reads(), [lookup[:3] for lookup in lookups], [s.id for who in attempts for s in who], returns,
                self.limiter.rate, self.limiter.burst)
        refused, undo = ratelimit.judge(attempts, waits) if waits else ([None] * len(rows), [])
        self.limiter.give_back(undo)
        return [(row, prior, r) for (row, prior), r in zip(rows, refused, strict=True)]

    async def _context(self, code_hash: bytes, api_key_id: str = "", key: str = "", who: tuple[Subject, ...] = ()):
        """The voucher with its campaign and ledger, and the answer already given to this
        Idempotency-Key (none when no key is given); with ``who``, one attempt taken from each of
        those subjects, or :class:`ratelimit.Limited` (then nothing was taken)."""
        row, prior, refused = await self._reader.submit(None, (code_hash, api_key_id, key, who))
        if refused is not None:
            raise ratelimit.Limited(refused)
        return row, prior

    def _spec(self, campaign_id: str, version: int, definition: dict):
        return self.catalogue.spec({"id": campaign_id, "version": version, "definition": definition})

    async def code_hash(self, code: str) -> bytes:
        """The code's hash under the current key; while earlier keys are kept (a rotation), under
        the key its voucher was stored with."""
        hashes = self.secrets.code_hashes(code)
        if len(hashes) == 1:
            return hashes[0]
        return await checkout_store.stored_code_hash(self._pool(), hashes) or hashes[0]

    async def check(self, code: str, customer_id: str, order: ev.Money, items: list[ev.LineItem],
                    who: tuple[Subject, ...] = (), session: str | None = None) -> Checked:
        """A validation: the voucher with its campaign and ledger read (and one attempt of ``who``
        taken), and the decision."""
        row, _ = await self._context(await self.code_hash(code), who=who)
        outcome = self.decide(row, customer_id, order, items, ev.now_utc(), session)
        self.metrics.checkout.labels("validate", outcome.reason if isinstance(outcome, Refuse) else "valid").inc()
        return Checked(row, outcome)

    async def lookup(self, code: str, who: tuple[Subject, ...] = ()) -> asyncpg.Record | None:
        """A voucher with its campaign and ledger, by code (one attempt of ``who`` taken)."""
        row, _ = await self._context(await self.code_hash(code), who=who)
        return row

    async def validate(self, code: str, customer_id: str, order: ev.Money, items: list[ev.LineItem],
                       who: tuple[Subject, ...] = ()) -> Answer:
        checked = await self.check(code, customer_id, order, items, who)
        if isinstance(checked.outcome, Refuse):
            return Answer(200, refusal(checked.outcome))
        row = checked.row
        assert row is not None  # an accepted code exists
        return Answer(200, {"valid": True, "discount": {"amount": checked.outcome.discount, "currency": order.currency},
                            "voucher_id": row["id"], "campaign_id": row["campaign_id"]})

    async def redeem(self, *, api_key_id: str, idempotency_key: str, body: dict,
                     code: str, customer_id: str, order: ev.Money, items: list[ev.LineItem],
                     order_id: str | None, who: tuple[Subject, ...] = (),
                     session: str | None = None) -> tuple[Answer, bool]:
        """Returns the answer and whether it is a replay. Takes a connection of the pool only for
        each statement: while the writer has the redemption, the request holds none (the pool's
        size would otherwise cap how many redemptions one batch can gather).

        A single-use code (personal or partner) is redeemed optimistically: read without locks,
        decide, then written by the redemption writer (with the campaign's other redemptions of
        the moment) only if the voucher is still as read (the usual case: a lost race reads again
        and answers ``already_redeemed``). A gift card, whose concurrent partial spends would
        mostly lose that race, takes its row lock first instead."""
        request_hash = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
        code_hash = await self.code_hash(code)
        for attempt in range(MAX_OPTIMISTIC_ATTEMPTS):
            row, prior = await self._context(code_hash, api_key_id, idempotency_key, who if attempt == 0 else ())
            if prior is not None and (prior["prior_status"] is not None or prior["prior_hash"] != request_hash):
                return self._replay(prior["prior_hash"], prior["prior_status"], prior["prior_response"],
                                    request_hash), True
            if prior is not None or (row is not None and row["kind"] == "gift_card"):
                break  # a gift card, or this key held by a request still in flight: lock and wait
            now = ev.now_utc()
            outcome = self.decide(row, customer_id, order, items, now, session)
            if not isinstance(outcome, Refuse):
                v, discount = view(row), outcome.discount
                redemption_id = str(uuid.uuid4())
                result = Answer(201, {"valid": True, "redemption_id": redemption_id, "voucher_id": v.id,
                                      "campaign_id": v.campaign_id,
                                      "discount": {"amount": discount, "currency": v.currency},
                                      "remaining_balance": None})
                written = await self.writer.write(SingleUse(
                    campaign_id=v.campaign_id, voucher_id=v.id, reserved=v.reserved, discount=discount,
                    redemption_id=redemption_id, customer_id=customer_id, order_id=order_id,
                    order_amount=order.amount, currency=order.currency, at=now, api_key_id=api_key_id,
                    key=idempotency_key, request_hash=request_hash, response=result.body,
                    event=functools.partial(self._redeemed_template, redemption_id, v, row, customer_id, discount,
                                            order, now, traceparent=tracing.current()),
                    session=session))
                if written.outcome in ("stale", "key_used"):
                    continue  # redeemed, rolled back or the key answered since it was read: read again
                if written.outcome == "redeemed":
                    self.metrics.checkout.labels("redeem", "redeemed").inc()
                    self.metrics.redeemed_amount.labels(v.campaign_id).inc(discount)
                    return result, False
                if v.customer_id is not None:  # spending what was reserved keeps reserved + spent equal
                    raise RuntimeError(f"ledger refused a reserved spend on {v.campaign_id}")
                outcome = Refuse("budget_exhausted", "the campaign's budget is spent")  # a partner code
            answer = self._refused("redeem", outcome)
            if await checkout_store.store_answer_once(self._pool(), api_key_id, idempotency_key, request_hash,
                                                      answer.status, answer.body):
                return answer, False
            # else the key was used meanwhile: answer as it was answered
        async with self._pool().acquire() as conn, conn.transaction():
            return await self._redeem_locked(conn, api_key_id=api_key_id, idempotency_key=idempotency_key,
                                             request_hash=request_hash, code_hash=code_hash, customer_id=customer_id,
                                             order=order, items=items, order_id=order_id, session=session)

    def decide(self, row: asyncpg.Record | None, customer_id: str, order: ev.Money, items: list[ev.LineItem],
               now, session: str | None = None) -> Accept | Refuse:
        """The discount this voucher row gives this order, or why not (``row``: a checkout context;
        ``session``: the checkout session of the request, ``<API key id>/<key>``)."""
        if row is None:
            return evaluate(None, None, None, customer_id=customer_id, order=order, items=items, now=now,
                            budget_remaining=0)
        return evaluate(view(row), self.spec_of(row), row["campaign_status"], customer_id=customer_id, order=order,
                        items=items, now=now, session=session,
                        budget_remaining=row["limit_minor"] - row["ledger_reserved"] - row["ledger_spent"])

    def spec_of(self, row: asyncpg.Record):
        """The campaign a checkout context's voucher belongs to, as it is now."""
        return self._spec(row["campaign_id"], row["version"], row["definition"])

    def _replay(self, prior_hash: bytes, status: int, response: dict, request_hash: bytes) -> Answer:
        if prior_hash != request_hash:
            return Answer(422, {"valid": False, "reason": "idempotency_key_reused",
                                "detail": "this Idempotency-Key was used with another request body"})
        return Answer(status, response)

    def _refused(self, action: str, outcome: Refuse) -> Answer:
        self.metrics.checkout.labels(action, outcome.reason).inc()
        status = 409 if outcome.reason in ("already_redeemed", "budget_exhausted") else 422
        return Answer(status, refusal(outcome))

    def _redeemed_template(self, redemption_id: str, v: VoucherView, row: asyncpg.Record, customer_id: str,
                           discount: int, order: ev.Money, now, data_key: DataKey, *, traceparent: str | None) -> bytes:
        """The event, encoded with a placeholder ledger: the statement that moves the budget writes
        it to the outbox with the ledger it produced. Its id is the redemption's (one event each);
        the order's amount is sealed under the customer's data key; ``traceparent``: the request's."""
        placeholder = ev.LedgerSnapshot(currency=v.currency, limit=0, reserved=0, spent=0, seq=0)
        return ev.encode(ev.VoucherRedeemed(
            redemption_id=redemption_id, voucher_id=v.id, campaign_id=v.campaign_id, customer_id=customer_id,
            variant=v.variant, channel=row_channel(row), discount=ev.Money(amount=discount, currency=v.currency),
            order_amount=order, redeemed_at=now, ledger=placeholder), source=SOURCE, event_id=redemption_id,
            data_key=data_key, traceparent=traceparent)

    async def _redeem_locked(self, conn: asyncpg.Connection, *, api_key_id: str, idempotency_key: str,
                             request_hash: bytes, code_hash: bytes, customer_id: str, order: ev.Money,
                             items: list[ev.LineItem], order_id: str | None,
                             session: str | None = None) -> tuple[Answer, bool]:
        """The pessimistic path, inside a transaction: the key is claimed (a concurrent holder is
        waited for), the voucher row locked, then the ledger moved last."""
        prior = await checkout_store.claim_idempotency_key(conn, api_key_id, idempotency_key, request_hash)
        if prior is not None:
            return self._replay(prior["request_hash"], prior["status_code"], prior["response"], request_hash), True

        async def answer(a: Answer) -> Answer:
            await checkout_store.store_idempotent_answer(conn, api_key_id, idempotency_key, a.status, a.body)
            return a

        now = ev.now_utc()
        row = await checkout_store.lock_for_redemption(conn, code_hash)
        outcome = self.decide(row, customer_id, order, items, now, session)
        if isinstance(outcome, Refuse):
            return await answer(self._refused("redeem", outcome)), False
        assert row is not None  # decide() refuses a code that does not exist
        v, discount = view(row), outcome.discount
        if v.customer_id is None:  # a partner code: spends what its hold reserved (if any), the rest from what remains
            reserved_used, new_status, new_reserved, new_balance = v.reserved, "redeemed", 0, v.balance
        elif v.kind == "gift_card":  # a partial spend of the balance
            reserved_used = min(discount, v.reserved)
            new_balance = (v.balance or 0) - discount
            new_reserved, new_status = v.reserved - reserved_used, ("redeemed" if new_balance == 0 else "active")
        else:  # single use: the actual discount is spent, the rest of the reservation released
            reserved_used, new_status, new_reserved, new_balance = v.reserved, "redeemed", 0, v.balance
        # The ledger's row lock is the campaign's hot spot: it is taken last, by one conditional
        # statement, and held only until the commit. A move that can fail (spending beyond what
        # this voucher reserved: partner codes) runs after a savepoint, so a refusal undoes the rest.
        can_fail = discount > reserved_used
        savepoint = conn.transaction()  # nested in the request's: a savepoint
        if can_fail:
            await savepoint.start()
        redemption_id = str(uuid.uuid4())
        result = Answer(201, {
            "valid": True, "redemption_id": redemption_id, "voucher_id": v.id, "campaign_id": v.campaign_id,
            "discount": {"amount": discount, "currency": v.currency},
            "remaining_balance": {"amount": new_balance, "currency": v.currency} if v.kind == "gift_card" else None})
        await checkout_store.record_redemption(
            conn, voucher_id=v.id, status=new_status, reserved=new_reserved, balance=new_balance,
            closed_at=now if new_status == "redeemed" else None,
            redemption=(redemption_id, v.campaign_id, customer_id, order_id, discount, reserved_used, order.amount,
                        order.currency, now),
            api_key_id=api_key_id, idempotency_key=idempotency_key, response=result.body)
        if session is not None and row["session"] == session:  # the session's hold ends with its redemption
            await checkout_store.release_hold(conn, v.id, new_reserved)
        data_key = (await self.keys.for_customers(conn, [customer_id]))[customer_id]
        template = self._redeemed_template(redemption_id, v, row, customer_id, discount, order, now, data_key,
                                           traceparent=tracing.current())
        moved = await checkout_store.move_budget_and_announce(conn, v.campaign_id, -reserved_used, discount, "redeemed",
                                                              v.id, "voucher-redeemed", customer_id, template)
        if moved is None:
            if not can_fail:  # cannot happen: spending what was reserved keeps reserved + spent equal
                raise RuntimeError(f"ledger refused a reserved spend on {v.campaign_id}")
            await savepoint.rollback()
            return await answer(self._refused("redeem", Refuse("budget_exhausted", "the campaign's budget is spent"))), False
        if can_fail:
            await savepoint.commit()  # releases the savepoint; the request's transaction commits it
        self.metrics.checkout.labels("redeem", "redeemed").inc()
        self.metrics.redeemed_amount.labels(v.campaign_id).inc(discount)
        return result, False

    async def rollback(self, conn: asyncpg.Connection, redemption_id: str, api_key_id: str) -> Answer:
        """Only the key that redeemed may roll back; to any other the redemption does not exist."""
        now = ev.now_utc()
        red = await checkout_store.redemption(conn, redemption_id, for_update=True)
        if red is None or await checkout_store.redeemed_with(conn, redemption_id) != api_key_id:
            if red is not None:
                log.warning("rollback refused: another API key redeemed it",
                            extra={"redemption_id": redemption_id, "api_key_id": api_key_id})
            return Answer(404, {"detail": f"no redemption {redemption_id} made with this API key"})
        if red["status"] == "rolled_back":
            return Answer(200, {"redemption_id": redemption_id, "rolled_back": True, "changed": False,
                                "detail": "already rolled back; nothing changed"})
        row = await checkout_store.voucher_by_id(conn, red["voucher_id"], for_update=True)
        v = view(row)
        still_valid = v.status != "revoked" and now < v.expires_at
        discount = red["discount"]
        # What was spent comes back. A voucher still valid gets its reservation back — in full if
        # the budget still has room, else at least what it had spent (always room for that).
        wanted = red["reserved_used"] if (still_valid and v.customer_id is not None) else 0
        moved = await checkout_store.move_budget(conn, v.campaign_id, wanted, -discount, "rolled_back", v.id)
        if moved is None:
            wanted = min(wanted, discount)
            moved = await checkout_store.move_budget(conn, v.campaign_id, wanted, -discount, "rolled_back", v.id)
        if moved is None:  # giving back at most what it spent only lowers reserved + spent
            raise LedgerDisagrees(f"rollback of {redemption_id}: the ledger refused to return {discount}")
        status = "active" if still_valid else ("revoked" if v.status == "revoked" else "expired")
        balance = (v.balance or 0) + discount if v.kind == "gift_card" else v.balance
        await checkout_store.set_voucher(conn, v.id, status, v.reserved + wanted, balance, None if status == "active" else now)
        await checkout_store.mark_rolled_back(conn, redemption_id, now)
        await enqueue(conn, [event_record("redemption-rolled-back", ev.RedemptionRolledBack(
            redemption_id=redemption_id, voucher_id=v.id, campaign_id=v.campaign_id, customer_id=red["customer_id"],
            returned=ev.Money(amount=discount, currency=v.currency), rolled_back_at=now, ledger=moved.snapshot()),
            source=SOURCE)])
        self.metrics.checkout.labels("rollback", "rolled_back").inc()
        log.info("redemption rolled back", extra={"redemption_id": redemption_id, "api_key_id": api_key_id,
                                                  "campaign_id": v.campaign_id, "returned": discount})
        return Answer(200, {"redemption_id": redemption_id, "rolled_back": True, "changed": True,
                            "returned": {"amount": discount, "currency": v.currency}, "voucher_status": status})

    async def offers(self, conn: asyncpg.Connection, customer_id: str, *, with_codes: bool) -> list[dict[str, Any]]:
        out = []
        for r in await checkout_store.active_offers(conn, customer_id, ev.now_utc()):
            spec = self.catalogue.spec(r)
            offer = spec.offer_for(r["variant"])
            item = {"voucher_id": r["id"], "campaign_id": r["campaign_id"], "campaign_name": spec.name,
                    "channel": r["channel"], "offer": offer_summary(offer, r["brand"]).model_dump(mode="json"),
                    "balance": ({"amount": r["balance"], "currency": r["currency"]} if r["kind"] == "gift_card" else None),
                    "expires_at": r["expires_at"].isoformat(), "code": None}
            if with_codes and r["code_sealed"] is not None:
                item["code"] = codes.unseal(self.secrets.seal_keys, r["code_sealed"], r["id"])
            out.append(item)
        return out


def row_channel(row: asyncpg.Record) -> ev.Channel:
    return ev.Channel(row["channel"])

