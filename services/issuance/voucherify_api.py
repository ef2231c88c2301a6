"""The Voucherify-compatible checkout routes, under ``/voucherify`` (the SDK's ``host`` is
``http://<issuance>/voucherify``): validate, redeem, roll back, read a voucher, release a LOCK
session. Each runs the native checkout use case (``checkout_handlers.py``, ``checkout_sessions.py``)
on the request translated by ``voucherify.py``; errors are answered in Voucherify's shape
(``{code, key, message, details}``), including authentication, limits and malformed bodies.

Authentication: ``X-App-Id`` + ``X-App-Token`` are a Voucherstream API key ``vs_<id>_<secret>``
split in two (the app id is the key's id); ``Authorization: Bearer`` works too. Scope ``checkout``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import APIKey as APIKeyModel
from fastapi.openapi.models import APIKeyIn
from fastapi.responses import Response
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from pydantic import BaseModel
from starlette.exceptions import HTTPException  # FastAPI's own is a subclass; both are answered

from services.issuance import voucherify as vf
from services.issuance.api import ShopperId, counts_as_failure, shopper_header, within_limits
from services.issuance.checkout import Refuse
from services.issuance.checkout_sessions import session_of
from shared.auth import Authenticator, Principal
from shared.fastpath import json_object
from shared.service import JSONBody

PREFIX = "/voucherify"
KEYS_BY_STATUS = {400: "invalid_payload", 401: "unauthorized", 403: "forbidden", 404: "resource_not_found",
                  413: "query_too_large", 429: "too_many_requests"}


class VoucherifyErrorOut(BaseModel):
    code: int
    key: str
    message: str
    details: str | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": VoucherifyErrorOut, "description": description} for status, description in (
        (400, "Refused (key: the reason, docs/voucherify.md), or a malformed body (key: invalid_payload, ...)"),
        (401, "No application key, or an unknown one"), (403, "The key lacks the checkout scope"),
        (404, "No such voucher, redemption or session"),
        (409, "The session key or order was used with another request"),
        (429, "Too many failed attempts; see Retry-After"))}
Payload = Annotated[dict[str, Any], Body(description="Voucherify's request body (docs/voucherify.md)")]


def _error(exc: vf.VoucherifyError, headers: dict[str, str] | None = None) -> JSONBody:
    return JSONBody(exc.body(), status_code=exc.code, headers=headers)


async def in_voucherify_shape(answer: Awaitable[Response]) -> Response:
    """The answer, or its failure — a refused key, a limit, a malformed body — in Voucherify's
    error shape, which its SDKs parse."""
    try:
        return await answer
    except vf.VoucherifyError as exc:
        return _error(exc)
    except RequestValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(vf.VoucherifyError(400, "invalid_payload", "invalid payload", f"{where}: {first['msg']}"))
    except HTTPException as exc:
        key = KEYS_BY_STATUS.get(exc.status_code, "error")
        return _error(vf.VoucherifyError(exc.status_code, key, key.replace("_", " "), str(exc.detail)),
                      headers=dict(exc.headers) if exc.headers else None)


class VoucherifyRoute(APIRoute):
    """Answers every failure of these routes in Voucherify's error shape."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await in_voucherify_shape(handler(request))

        return route


class AppKeyRequirement(SecurityBase):
    """``X-App-Id`` + ``X-App-Token`` (as Voucherify's SDKs send them), or the native key headers;
    declared in OpenAPI as the ``voucherify`` scheme."""

    def __init__(self, authenticator: Authenticator, scope: str) -> None:
        self.model = APIKeyModel(**{"in": APIKeyIn.header}, name="X-App-Token",
                                 description="X-App-Id: the key's id; X-App-Token: its secret (vs_<id>_<secret>)")
        self.scheme_name = "voucherify"
        self.authenticator = authenticator
        self.scope = scope

    async def __call__(self, request: Request) -> Principal:
        app_id, token = request.headers.get("x-app-id", ""), request.headers.get("x-app-token", "")
        header = request.headers.get("authorization", "")
        if app_id and token:
            key = f"vs_{app_id}_{token}"
        else:
            key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not key:
            raise vf.VoucherifyError(401, "unauthorized", "Unauthorized", "X-App-Id and X-App-Token are required")
        principal = await self.authenticator.principal(key)
        if principal is None:
            raise vf.VoucherifyError(401, "unauthorized", "Unauthorized", "unknown, revoked or expired application key")
        if self.scope not in principal.scopes:
            raise vf.VoucherifyError(403, "forbidden", "Forbidden", f"this key lacks the {self.scope} scope")
        return principal


def routes(app: FastAPI, service) -> None:
    settings = service.settings
    checkout, sessions = service.checkout, service.sessions
    router = APIRouter(prefix=PREFIX + "/v1", route_class=VoucherifyRoute, tags=["voucherify"], responses=ERRORS)
    key = AppKeyRequirement(service.auth, "checkout")

    def translate(body: dict[str, Any]) -> vf.CheckoutRequest:
        return vf.checkout_request(body, settings.voucherify_currency, default_ttl_s=settings.voucherify_session_ttl_s)

    async def validation(body: dict[str, Any], shopper: str | None, principal: Principal) -> Response:
        started = time.perf_counter()
        req = translate(body)

        async def run(who):
            if req.lock is not None:
                checked = await sessions.hold(api_key_id=principal.key_id, key=req.lock.key, ttl_s=req.lock.ttl_s,
                                              code=req.code, customer_id=req.customer_id, order=req.order,
                                              items=req.items, who=who)
            else:
                checked = await checkout.check(req.code, req.customer_id, req.order, req.items, who,
                                               session_of(principal.key_id, req.session_key) if req.session_key else None)
            return checked, isinstance(checked.outcome, Refuse)

        checked = await within_limits(service, principal.key_id, req.customer_id, shopper, run)
        if isinstance(checked.outcome, Refuse):
            answer = vf.validation_invalid(req, vf.refusal_error(checked.outcome.reason, checked.outcome.detail))
        else:
            row = checked.row
            answer = vf.validation_valid(req, checkout.spec_of(row), row["variant"], row["kind"], row["balance"],
                                         checked.outcome.discount)
        service.metrics.checkout_latency.labels("voucherify_validate").observe(time.perf_counter() - started)
        return JSONBody(answer)

    async def redemption(body: dict[str, Any], shopper: str | None, principal: Principal) -> Response:
        started = time.perf_counter()
        req = translate(body)

        async def run(who):
            answer, replay = await checkout.redeem(
                api_key_id=principal.key_id, idempotency_key=req.idempotency_key(), body=req.native_body(),
                code=req.code, customer_id=req.customer_id, order=req.order, items=req.items, order_id=req.order_id,
                who=who, session=session_of(principal.key_id, req.session_key) if req.session_key else None)
            return answer, not replay and counts_as_failure(answer.body)

        answer = await within_limits(service, principal.key_id, req.customer_id, shopper, run)
        out = vf.redemption_answer(req, answer.body)
        service.metrics.checkout_latency.labels("voucherify_redeem").observe(time.perf_counter() - started)
        return JSONBody(out)

    @router.post("/validations", summary="Validate a voucher for an order (Voucherify's validate_stacked_discounts)")
    async def validate(body: Payload, shopper: ShopperId = None, principal: Principal = Depends(key)) -> Response:
        return await validation(body, shopper, principal)

    @router.post("/redemptions", summary="Redeem a voucher, once (Voucherify's redeem_stacked_discounts)")
    async def redeem(body: Payload, shopper: ShopperId = None, principal: Principal = Depends(key)) -> Response:
        return await redemption(body, shopper, principal)

    # The same two routes as fast handlers (shared.fastpath; services/issuance/api.py does the
    # same for the native ones): a body that is not a JSON object or a header out of bounds goes
    # on to the routes above.
    def fast(use_case: Callable[[dict[str, Any], str | None, Principal], Awaitable[Response]]):
        async def handler(request: Request, raw: bytes) -> Response | None:
            body = json_object(request, raw)
            within, shopper = shopper_header(request)
            if body is None or not within:
                return None

            async def answer() -> Response:
                return await use_case(body, shopper, await key(request))

            return await in_voucherify_shape(answer())

        return handler

    app.state.fast_routes[("POST", PREFIX + "/v1/validations")] = fast(validation)
    app.state.fast_routes[("POST", PREFIX + "/v1/redemptions")] = fast(redemption)

    @router.post("/redemptions/{redemptionId}/rollback", summary="Roll back a redemption (once)")
    async def rollback(redemption_id: Annotated[str, Path(alias="redemptionId", min_length=1, max_length=128)],
                       reason: Annotated[str | None, Query(max_length=1000)] = None,
                       tracking_id: Annotated[str | None, Query(max_length=200)] = None,
                       principal: Principal = Depends(key)) -> Response:
        if not all(c.isalnum() or c == "-" for c in redemption_id):
            raise vf.VoucherifyError(404, "resource_not_found", "Resource not found", f"no redemption {redemption_id}")
        async with service.pool.acquire() as conn, conn.transaction():
            answer = await checkout.rollback(conn, redemption_id, principal.key_id)
        if answer.status == 404:
            raise vf.VoucherifyError(404, "resource_not_found", "Resource not found", answer.body.get("detail"))
        return JSONBody(vf.rollback_answer(redemption_id, answer.body, reason))

    @router.get("/vouchers/{code}", summary="A voucher by its code (behind the validation failure limits)")
    async def voucher(code: Annotated[str, Path(min_length=1, max_length=64)], shopper: ShopperId = None,
                      principal: Principal = Depends(key)) -> Response:
        async def run(who):
            row = await checkout.lookup(code, who) if vf.CODE.fullmatch(code) else None
            return row, row is None

        # A lookup names no customer: its failures count per API key (and per shopper if given).
        row = await within_limits(service, principal.key_id, "*lookup", shopper, run)
        if row is None:
            raise vf.VoucherifyError(404, "resource_not_found", "Resource not found", "no voucher has this code")
        return JSONBody(vf.voucher_answer(code, checkout.spec_of(row), row))

    @router.delete("/vouchers/{code}/sessions/{sessionKey}", status_code=204,
                   summary="Release a LOCK session's hold on a voucher")
    async def release(code: Annotated[str, Path(min_length=1, max_length=64)],
                      session_key: Annotated[str, Path(alias="sessionKey", min_length=1, max_length=128)],
                      principal: Principal = Depends(key)) -> Response:
        released = vf.CODE.fullmatch(code) is not None and await sessions.release(
            api_key_id=principal.key_id, key=session_key, code=code)
        if not released:
            raise vf.VoucherifyError(404, "resource_not_found", "Resource not found",
                                     "this session holds no voucher with this code")
        return Response(status_code=204)

    app.include_router(router)

