"""The issuance service's HTTP API: campaigns (create, replace, pause, resume), budget read-out and
partner codes (scope ``marketing``); the checkout API — validate, redeem, roll back (scope
``checkout``) and a customer's active offers (``checkout``, codes only for ``onsite``)."""

from __future__ import annotations

import csv
import io
import time
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path, Request, status
from fastapi.responses import Response
from pydantic import BaseModel, Field

from services.issuance import codes, ratelimit, store
from services.issuance.campaign_admin import CampaignConflict, NoSuchCampaign
from services.issuance.campaigns import CampaignSpec
from shared import events as ev
from shared.auth import AUTH_RESPONSES, Principal
from shared.fastpath import json_body
from shared.service import NOT_FOUND, ErrorOut, JSONBody

CampaignPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]
CONFLICT = {409: {"model": ErrorOut, "description": "The change conflicts with the campaign's state"}}


class CampaignOut(BaseModel):
    id: str
    status: Literal["active", "paused", "ended"]
    version: int
    definition: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class BudgetOut(BaseModel):
    campaign_id: str
    currency: str
    limit: int = Field(description="minor units")
    reserved: int
    spent: int
    remaining: int
    seq: int
    vouchers_issued: int


class PartnerCodesIn(BaseModel):
    partner: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
    count: int = Field(ge=1, le=100_000, description="per request; the CLI asks in chunks")


def _out(row) -> CampaignOut:
    return CampaignOut(id=row["id"], status=row["status"], version=row["version"], definition=row["definition"],
                       created_at=row["created_at"], updated_at=row["updated_at"])


class OrderIn(BaseModel):
    amount: ev.Money
    items: list[ev.LineItem] = Field(default_factory=list, max_length=1000)


HEADER_MAX = 200  # X-Shopper-Id, Idempotency-Key
ShopperId = Annotated[str | None, Header(
    alias="X-Shopper-Id", max_length=HEADER_MAX,
    description="the shopper behind this request as the shop knows them (session, account, client address): "
                "failures are limited per shopper and per customer, never per API key alone")]
Code = Field(pattern=codes.SUBMITTED)


class ValidationIn(BaseModel):
    code: str = Code
    customer_id: ev.CustomerId
    order: OrderIn


class RedemptionIn(ValidationIn):
    order_id: ev.Identifier | None = None


Checkout = TypeVar("Checkout", ValidationIn, RedemptionIn)


class CheckoutOut(BaseModel):
    valid: bool
    reason: str | None = Field(None, description="why not: unknown_code, expired, already_redeemed, "
                               "min_order_not_met, not_applicable_items, campaign_paused, currency_mismatch, "
                               "budget_exhausted, revoked, idempotency_key_reused")
    detail: str | None = None
    discount: ev.Money | None = None
    voucher_id: str | None = None
    campaign_id: str | None = None
    redemption_id: str | None = None
    remaining_balance: ev.Money | None = None


class RollbackOut(BaseModel):
    redemption_id: str
    rolled_back: bool
    changed: bool
    detail: str | None = None
    returned: ev.Money | None = None
    voucher_status: str | None = None


class OfferOut(BaseModel):
    voucher_id: str
    campaign_id: str
    campaign_name: str
    channel: str
    offer: ev.OfferSummary
    balance: ev.Money | None
    expires_at: datetime
    code: str | None = Field(None, description="only for keys with the onsite scope, for on-site vouchers")


class OffersOut(BaseModel):
    customer_id: str
    offers: list[OfferOut]


REFUSED = {
    409: {"model": CheckoutOut, "description": "Already redeemed, or the budget is spent"},
    422: {"description": "Refused with the reason (CheckoutOut), or an invalid body (HTTPValidationError)",
          "content": {"application/json": {"schema": {"anyOf": [
              {"$ref": "#/components/schemas/CheckoutOut"}, {"$ref": "#/components/schemas/HTTPValidationError"}]}}}},
    429: {"model": ErrorOut, "description": "Too many failed attempts; see Retry-After"},
}


def routes(app: FastAPI, service) -> None:
    admin = service.admin
    auth = service.auth
    marketing = Depends(auth.require("marketing"))
    checkout_scope = auth.require("checkout")

    async def run(change):
        try:
            return await change()
        except NoSuchCampaign as exc:
            raise HTTPException(404, exc.detail) from None
        except CampaignConflict as exc:
            raise HTTPException(409, exc.detail) from None

    @app.post("/v1/campaigns", status_code=status.HTTP_201_CREATED, response_model=CampaignOut, tags=["campaigns"],
              responses=CONFLICT | AUTH_RESPONSES, summary="Create a campaign (active at once)", dependencies=[marketing])
    async def create(spec: CampaignSpec) -> CampaignOut:
        async with service.pool.acquire() as conn:
            async with conn.transaction():
                await run(lambda: admin.create(conn, spec))
            return _out(await store.campaign(conn, spec.id))

    @app.get("/v1/campaigns", response_model=list[CampaignOut], tags=["campaigns"], responses=AUTH_RESPONSES,
             dependencies=[marketing])
    async def list_campaigns() -> list[CampaignOut]:
        async with service.pool.acquire() as conn:
            return [_out(r) for r in await store.campaigns(conn)]

    @app.get("/v1/campaigns/{campaign_id}", response_model=CampaignOut, tags=["campaigns"],
             responses=NOT_FOUND | AUTH_RESPONSES, dependencies=[marketing])
    async def get_campaign(campaign_id: CampaignPath) -> CampaignOut:
        async with service.pool.acquire() as conn:
            row = await store.campaign(conn, campaign_id)
        if row is None:
            raise HTTPException(404, f"no campaign {campaign_id}")
        return _out(row)

    @app.put("/v1/campaigns/{campaign_id}", response_model=CampaignOut, tags=["campaigns"],
             responses=NOT_FOUND | CONFLICT | AUTH_RESPONSES, summary="Replace a campaign's definition",
             dependencies=[marketing])
    async def replace(campaign_id: CampaignPath, spec: CampaignSpec) -> CampaignOut:
        if spec.id != campaign_id:
            raise HTTPException(409, f"the body is campaign {spec.id}, the path {campaign_id}")
        async with service.pool.acquire() as conn:
            async with conn.transaction():
                await run(lambda: admin.replace(conn, spec))
            return _out(await store.campaign(conn, campaign_id))

    for action, new_status in (("pause", "paused"), ("resume", "active"), ("end", "ended")):
        def make(new_status=new_status):
            async def change(campaign_id: CampaignPath) -> CampaignOut:
                async with service.pool.acquire() as conn:
                    async with conn.transaction():
                        await run(lambda: admin.set_status(conn, campaign_id, new_status))
                    return _out(await store.campaign(conn, campaign_id))
            return change

        app.post(f"/v1/campaigns/{{campaign_id}}/{action}", response_model=CampaignOut, tags=["campaigns"],
                 responses=NOT_FOUND | CONFLICT | AUTH_RESPONSES, summary=f"{action.capitalize()} a campaign",
                 name=f"{action}_campaign", dependencies=[marketing])(make())

    @app.get("/v1/campaigns/{campaign_id}/budget", response_model=BudgetOut, tags=["campaigns"],
             responses=NOT_FOUND | AUTH_RESPONSES, summary="The budget ledger: limit, reserved, spent, remaining",
             dependencies=[Depends(auth.require("marketing", "checkout"))])
    async def budget(campaign_id: CampaignPath) -> BudgetOut:
        async with service.pool.acquire() as conn:
            lg = await store.ledger(conn, campaign_id)
        if lg is None:
            raise HTTPException(404, f"no campaign {campaign_id}")
        return BudgetOut(campaign_id=lg.campaign_id, currency=lg.currency, limit=lg.limit, reserved=lg.reserved,
                         spent=lg.spent, remaining=lg.remaining, seq=lg.seq, vouchers_issued=lg.vouchers)

    @app.post("/v1/campaigns/{campaign_id}/partner-codes", tags=["campaigns"], responses=NOT_FOUND | AUTH_RESPONSES,
              dependencies=[marketing],
              response_class=Response, summary="Generate non-personal partner codes, as CSV",
              openapi_extra={"responses": {"200": {"content": {"text/csv": {"schema": {"type": "string"}}}}}})
    async def partner_codes(campaign_id: CampaignPath, body: Annotated[PartnerCodesIn, Body()]) -> Response:
        spec, codes_, expires = await run(lambda: admin.partner_codes(service.pool, campaign_id, body.partner, body.count))
        return Response(partner_csv(spec.id, body.partner, codes_, expires), media_type="text/csv")

    # ------------------------------------------------------------------ checkout

    async def attempt(principal: Principal, customer_id: str, shopper: str | None, run):
        return await within_limits(service, principal.key_id, customer_id, shopper, run)

    async def validation(body: ValidationIn, shopper: str | None, principal: Principal) -> Response:
        started = time.perf_counter()

        async def run(who):
            answer = await service.checkout.validate(body.code, body.customer_id, body.order.amount, body.order.items,
                                                     who)
            return answer, counts_as_failure(answer.body)

        answer = await attempt(principal, body.customer_id, shopper, run)
        service.metrics.checkout_latency.labels("validate").observe(time.perf_counter() - started)
        return JSONBody(answer.body, status_code=answer.status)

    async def redemption(body: RedemptionIn, shopper: str | None, idempotency_key: str,
                         principal: Principal) -> Response:
        started = time.perf_counter()

        async def run(who):
            answer, replay = await service.checkout.redeem(  # takes connections as it needs them
                api_key_id=principal.key_id, idempotency_key=idempotency_key,
                body=body.model_dump(mode="json"), code=body.code, customer_id=body.customer_id,
                order=body.order.amount, items=body.order.items, order_id=body.order_id, who=who)
            return (answer, replay), not replay and counts_as_failure(answer.body)

        answer, replay = await attempt(principal, body.customer_id, shopper, run)
        service.metrics.checkout_latency.labels("redeem").observe(time.perf_counter() - started)
        return JSONBody(answer.body, status_code=answer.status, headers={"Idempotent-Replayed": str(replay).lower()})

    @app.post("/v1/validations", response_model=CheckoutOut, tags=["checkout"], responses=REFUSED | AUTH_RESPONSES,
              summary="Is this code good for this order, and how much off?")
    async def validate(body: ValidationIn, shopper: ShopperId = None,
                       principal: Principal = Depends(checkout_scope)) -> Response:
        return await validation(body, shopper, principal)

    @app.post("/v1/redemptions", response_model=CheckoutOut, status_code=201, tags=["checkout"],
              responses=REFUSED | AUTH_RESPONSES,
              summary="Redeem a code, atomically and once; replays of an Idempotency-Key get the first answer")
    async def redeem(body: RedemptionIn, shopper: ShopperId = None,
                     idempotency_key: str = Header(min_length=1, max_length=HEADER_MAX, alias="Idempotency-Key"),
                     principal: Principal = Depends(checkout_scope)) -> Response:
        return await redemption(body, shopper, idempotency_key, principal)

    # The same two routes without FastAPI's per-request work (shared.fastpath): a request they
    # do not take as it is — a body or header that does not validate — goes on to the routes above.
    async def ordinary(model: type[Checkout], request: Request, raw: bytes) -> tuple[Checkout, Principal, str | None] | None:
        """The body, the caller and the shopper of a checkout request; ``None``: the route answers."""
        body = json_body(model, request, raw)
        if body is None:
            return None
        within, shopper = shopper_header(request)
        return (body, await checkout_scope(request), shopper) if within else None

    async def fast_validate(request: Request, raw: bytes) -> Response | None:
        taken = await ordinary(ValidationIn, request, raw)
        return None if taken is None else await validation(taken[0], taken[2], taken[1])

    async def fast_redeem(request: Request, raw: bytes) -> Response | None:
        taken = await ordinary(RedemptionIn, request, raw)
        key = request.headers.get("idempotency-key")
        if taken is None or key is None or not 1 <= len(key) <= HEADER_MAX:
            return None
        body, principal, shopper = taken
        return await redemption(body, shopper, key, principal)

    app.state.fast_routes[("POST", "/v1/validations")] = fast_validate
    app.state.fast_routes[("POST", "/v1/redemptions")] = fast_redeem

    @app.post("/v1/redemptions/{redemption_id}/rollback", response_model=RollbackOut, tags=["checkout"],
              responses=NOT_FOUND | AUTH_RESPONSES, summary="Give back what a redemption spent (once)")
    async def rollback(redemption_id: str = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$"),
                       principal: Principal = Depends(checkout_scope)) -> Response:
        async with service.pool.acquire() as conn:
            async with conn.transaction():
                answer = await service.checkout.rollback(conn, redemption_id, principal.key_id)
        return JSONBody(answer.body, status_code=answer.status)

    @app.get("/v1/customers/{customer_id}/offers", response_model=OffersOut, tags=["checkout"],
             responses=AUTH_RESPONSES | {429: REFUSED[429]},
             summary="A customer's active vouchers, for banners, pop-ups and live chat")
    async def offers(customer_id: str = Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"),
                     shopper: ShopperId = None,
                     principal: Principal = Depends(auth.require("checkout", "onsite"))) -> OffersOut:
        with_codes = "onsite" in principal.scopes
        if with_codes:  # codes are revealed: every listing counts, per customer and per shopper
            refused = await service.listings.take(service.listings.subjects(principal.key_id, customer_id, shopper))
            if refused is not None:
                service.metrics.rate_limited.labels(f"onsite_{refused.by}").inc()
                raise HTTPException(429, "too many listings of on-site codes; slow down",
                                    headers={"Retry-After": str(refused.retry_after)})
        async with service.pool.acquire() as conn:
            items = await service.checkout.offers(conn, customer_id, with_codes=with_codes)
        return OffersOut(customer_id=customer_id, offers=[OfferOut(**i) for i in items])


def counts_as_failure(body: dict) -> bool:
    """A refusal spends a failed attempt; a reused Idempotency-Key is the caller's bug, not a guess."""
    return not body.get("valid", True) and body.get("reason") != "idempotency_key_reused"


def shopper_header(request: Request) -> tuple[bool, str | None]:
    """``X-Shopper-Id`` as a fast handler reads it, and whether it is within ``ShopperId``'s bound
    (if not, the handler leaves the request to its route, which answers 422)."""
    shopper = request.headers.get("x-shopper-id")
    return shopper is None or len(shopper) <= HEADER_MAX, shopper


async def within_limits(service, key_id: str, customer_id: str, shopper: str | None, run):
    """Runs a checkout request within its subjects' failure limits (ratelimit.py; the attempt is
    taken where the voucher is read): 429 if one has no failures left; the attempt is given back
    unless ``run`` says the answer is a failure (``run(who)`` returns ``(answer, failed)``)."""
    who = service.limiter.subjects(key_id, customer_id, shopper)
    try:
        answer, failed = await run(who)
    except ratelimit.Limited as exc:
        service.metrics.rate_limited.labels(exc.refused.by).inc()
        raise HTTPException(429, "too many failed attempts; slow down",
                            headers={"Retry-After": str(exc.refused.retry_after)}) from None
    if not failed:
        service.limiter.give_back(s.id for s in who)
    return answer


def partner_csv(campaign_id: str, partner: str, codes_: list[str], expires: datetime) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["code", "partner", "campaign_id", "expires_at"])
    stamp = expires.isoformat()
    writer.writerows([c, partner, campaign_id, stamp] for c in codes_)
    return buf.getvalue()
