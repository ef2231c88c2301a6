"""The consent service's HTTP API (FastAPI; the OpenAPI document is served at /openapi.json)."""

from __future__ import annotations

import json
import pathlib
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.consent import ledger, privacy, store
from services.consent.handlers import Change, ConsentHandlers
from services.consent.ledger import idempotent_event_id
from shared import events as ev
from shared.auth import AUTH_RESPONSES, Principal
from shared.kafka import is_transient
from shared.outbox import wait_published
from shared.processing import register
from shared.service import NOT_FOUND

REGISTER = pathlib.Path(__file__).with_name("register.json")  # python -m tools.processing_register writes it
KEY_REUSED = {422: {"description": "An invalid body (HTTPValidationError), or an Idempotency-Key reused with "
                                   "another decision (ErrorOut)",
                    "content": {"application/json": {"schema": {"anyOf": [
                        {"$ref": "#/components/schemas/ErrorOut"},
                        {"$ref": "#/components/schemas/HTTPValidationError"}]}}}}}

CustomerPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]
RequestPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")]


class ConsentChangeIn(BaseModel):
    """Same rules as the ``consent-changed`` topic. ``event_id`` (or an ``Idempotency-Key`` header)
    makes a retried call add nothing."""

    customer_id: ev.CustomerId
    purpose: ev.Purpose
    granted: bool = Field(strict=True)
    policy_version: ev.Text
    source: ev.Text
    occurred_at: ev.UtcDatetime
    event_id: ev.Identifier | None = None


class ConsentStateOut(BaseModel):
    customer_id: str
    purposes: dict[ev.Purpose, ev.PurposeState]


class LedgerEntryOut(BaseModel):
    event_id: str
    purpose: ev.Purpose
    granted: bool
    policy_version: str
    source: str
    occurred_at: datetime
    received_at: datetime
    via: Literal["kafka", "http"]


class HistoryOut(BaseModel):
    customer_id: str
    ledger: list[LedgerEntryOut]


class PrivacyRequestIn(BaseModel):
    customer_id: ev.CustomerId


class ServiceProgress(BaseModel):
    status: Literal["pending", "completed"]
    completed_at: str | None


class PrivacyRequestOut(BaseModel):
    request_id: str
    kind: Literal["export", "erasure"]
    status: Literal["pending", "completed", "delivered"]
    requested_at: datetime
    completed_at: datetime | None
    delivered_at: datetime | None = Field(None, description="exports only: when the bundle was handed out")
    services: dict[str, ServiceProgress]
    bundle: dict[str, Any] | None = Field(None, description="exports only: the whole export, handed out once — by "
                                          "the first read after every service answered; then it is deleted "
                                          "(status delivered)")


class RegisterOut(BaseModel):
    controller_note: str
    activities: list[dict[str, Any]]
    undeclared_services: list[str]


def routes(app: FastAPI, service) -> None:
    """Recording and reading consent needs ``consent:write`` (the shop's consent banner backend) or
    ``privacy:admin``; histories, exports, erasures and the register need ``privacy:admin`` (the
    data-protection officer's tools)."""
    handlers: ConsentHandlers = service.handlers
    consent_scope = Depends(service.auth.require("consent:write", "privacy:admin"))
    privacy_scope = [Depends(service.auth.require("privacy:admin"))]

    @app.post("/v1/consents", status_code=status.HTTP_201_CREATED, response_model=ConsentStateOut,
              tags=["consent"], summary="Record a consent decision", responses=AUTH_RESPONSES | KEY_REUSED)
    async def record_consent(body: ConsentChangeIn, response: Response,
                             idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
                             principal: Principal = consent_scope) -> ConsentStateOut | JSONResponse:
        change = ev.ConsentChanged(**body.model_dump(exclude={"event_id"}))
        event_id = body.event_id or (idempotent_event_id(principal.key_id, change.customer_id, idempotency_key)
                                     if idempotency_key else f"http:{uuid.uuid4()}")
        received_at = ev.now_utc()
        try:
            ledger.check_occurred_at(change.occurred_at, received_at, service.settings.max_future_skew_s)
        except ev.ContractError as exc:  # as FastAPI's own 422s are shaped: the reason is the error's type
            raise RequestValidationError([{"loc": ("body", "occurred_at"), "msg": exc.detail, "type": exc.reason}]) from None
        async with service.pool.acquire() as conn, conn.transaction():
            outcome = await handlers.record_changes(conn, [Change(event_id, change)], via="http",
                                                    received_at=received_at)
            if outcome.duplicates and idempotency_key and not ledger.same_decision(
                    await store.entry(conn, event_id), change):
                return JSONResponse({"detail": "idempotency_key_reused: this Idempotency-Key was used with "
                                               "another decision"}, status_code=422)
        # Answer once the new consent-state is on Kafka: a trigger the shop publishes after this
        # answer then finds it below its consent marks (docs/privacy.md).
        service.relay.wake()
        published = await wait_published(service.pool, outcome.outbox_ids, service.settings.publish_wait_s)
        if not published:
            handlers.metrics.consent_ignored.labels("publish_wait_timed_out").inc()
            response.headers["Voucherstream-Propagation"] = "pending"
        return ConsentStateOut(customer_id=body.customer_id, purposes=outcome.states[body.customer_id])

    @app.get("/v1/customers/{customer_id}/consents", dependencies=[consent_scope], response_model=ConsentStateOut,
             tags=["consent"],
             summary="A customer's current consent, derived from the ledger")
    async def current(customer_id: CustomerPath) -> ConsentStateOut:
        async with service.pool.acquire() as conn:
            decisions = (await store.decisions(conn, [customer_id])).get(customer_id, [])
        return ConsentStateOut(customer_id=customer_id, purposes=ledger.current_state(decisions))

    @app.get("/v1/customers/{customer_id}/consents/history", dependencies=privacy_scope, response_model=HistoryOut, tags=["consent"],
             summary="Every consent decision ever recorded for the customer (the proof)")
    async def history(customer_id: CustomerPath) -> HistoryOut:
        async with service.pool.acquire() as conn:
            rows = await store.history(conn, customer_id)
        return HistoryOut(customer_id=customer_id, ledger=[LedgerEntryOut(**dict(r)) for r in rows])

    @app.post("/v1/privacy/exports", dependencies=privacy_scope, status_code=status.HTTP_202_ACCEPTED, response_model=PrivacyRequestOut,
              tags=["privacy"], summary="Start an access/portability export across every service")
    async def start_export(body: PrivacyRequestIn) -> PrivacyRequestOut:
        async with service.pool.acquire() as conn:
            async with conn.transaction():
                request_id = await handlers.request_export(conn, body.customer_id)
            return await _request_out(conn, request_id, "export")

    @app.get("/v1/privacy/exports/{request_id}", dependencies=privacy_scope, response_model=PrivacyRequestOut,
             tags=["privacy"], responses=NOT_FOUND | AUTH_RESPONSES,
             summary="An export's progress per service and, once complete, the bundle (handed out once)")
    async def get_export(request_id: RequestPath) -> PrivacyRequestOut:
        async with service.pool.acquire() as conn, conn.transaction():
            return await _request_out(conn, request_id, "export")

    @app.post("/v1/privacy/erasures", dependencies=privacy_scope, status_code=status.HTTP_202_ACCEPTED, response_model=PrivacyRequestOut,
              tags=["privacy"], summary="Erase a customer in every service")
    async def start_erasure(body: PrivacyRequestIn) -> PrivacyRequestOut:
        try:
            changed_end = await service.changed_end(body.customer_id)
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "Kafka is unreachable; nothing was erased yet, "
                                "retry") from None
        async with service.pool.acquire() as conn:
            async with conn.transaction():
                request_id = await handlers.request_erasure(conn, body.customer_id, changed_end)
            return await _request_out(conn, request_id, "erasure")

    @app.get("/v1/privacy/erasures/{request_id}", dependencies=privacy_scope, response_model=PrivacyRequestOut,
             tags=["privacy"], responses=NOT_FOUND | AUTH_RESPONSES,
             summary="An erasure's status per service, with times")
    async def get_erasure(request_id: RequestPath) -> PrivacyRequestOut:
        async with service.pool.acquire() as conn:
            return await _request_out(conn, request_id, "erasure")

    declared = json.loads(REGISTER.read_text())

    @app.get("/v1/privacy/register", dependencies=privacy_scope, response_model=RegisterOut, tags=["privacy"],
             summary="The register of processing, as each service declares it in code")
    async def processing_register() -> RegisterOut:
        return RegisterOut(**register(declared, service.settings.privacy_services))

    async def _request_out(conn, request_id: str, kind: str) -> PrivacyRequestOut:
        row = await store.request(conn, request_id, kind)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {kind} request {request_id}")
        parts = await store.parts(conn, request_id)
        expected = list(row["expected"])
        complete = row["completed_at"] is not None
        bundle, delivered_at = None, row["delivered_at"]
        if kind == "export" and complete and delivered_at is None:
            now = ev.now_utc()
            if await store.deliver_export(conn, request_id, now):  # the first read takes it
                bundle = privacy.export_bundle(request_id, row["customer_id"], expected,
                                               handlers.opened(request_id, parts), row["completed_at"])
            delivered_at = now if bundle is None else None
        state = "delivered" if delivered_at is not None else "completed" if complete else "pending"
        return PrivacyRequestOut(request_id=request_id, kind=kind, status=state, requested_at=row["requested_at"],
                                 completed_at=row["completed_at"], delivered_at=delivered_at,
                                 services=privacy.progress(expected, parts), bundle=bundle)
