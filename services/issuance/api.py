"""The issuance service's HTTP API: campaigns (create, replace, pause, resume), budget read-out,
partner codes. The checkout endpoints (validate, redeem, roll back, on-site offers) belong to the
checkout API issue."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, HTTPException, Path, status
from fastapi.responses import Response
from pydantic import BaseModel, Field

from services.issuance import store
from services.issuance.campaigns import CampaignSpec
from services.issuance.handlers import CampaignError
from shared.service import NOT_FOUND, ErrorOut

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
    count: int = Field(ge=1, le=1_000_000)


def _out(row) -> CampaignOut:
    return CampaignOut(id=row["id"], status=row["status"], version=row["version"], definition=row["definition"],
                       created_at=row["created_at"], updated_at=row["updated_at"])


def routes(app: FastAPI, service) -> None:
    admin = service.admin

    async def run(change):
        try:
            return await change()
        except CampaignError as exc:
            raise HTTPException(exc.status, exc.detail) from None

    @app.post("/v1/campaigns", status_code=status.HTTP_201_CREATED, response_model=CampaignOut, tags=["campaigns"],
              responses=CONFLICT, summary="Create a campaign (active at once)")
    async def create(spec: CampaignSpec) -> CampaignOut:
        async with service.pool.acquire() as conn:
            async with conn.transaction():
                await run(lambda: admin.create(conn, spec))
            return _out(await store.campaign(conn, spec.id))

    @app.get("/v1/campaigns", response_model=list[CampaignOut], tags=["campaigns"])
    async def list_campaigns() -> list[CampaignOut]:
        async with service.pool.acquire() as conn:
            return [_out(r) for r in await store.campaigns(conn)]

    @app.get("/v1/campaigns/{campaign_id}", response_model=CampaignOut, tags=["campaigns"], responses=NOT_FOUND)
    async def get_campaign(campaign_id: CampaignPath) -> CampaignOut:
        async with service.pool.acquire() as conn:
            row = await store.campaign(conn, campaign_id)
        if row is None:
            raise HTTPException(404, f"no campaign {campaign_id}")
        return _out(row)

    @app.put("/v1/campaigns/{campaign_id}", response_model=CampaignOut, tags=["campaigns"],
             responses=NOT_FOUND | CONFLICT, summary="Replace a campaign's definition")
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
                 responses=NOT_FOUND | CONFLICT, summary=f"{action.capitalize()} a campaign",
                 name=f"{action}_campaign")(make())

    @app.get("/v1/campaigns/{campaign_id}/budget", response_model=BudgetOut, tags=["campaigns"], responses=NOT_FOUND,
             summary="The budget ledger: limit, reserved, spent, remaining")
    async def budget(campaign_id: CampaignPath) -> BudgetOut:
        async with service.pool.acquire() as conn:
            lg = await store.ledger(conn, campaign_id)
        if lg is None:
            raise HTTPException(404, f"no campaign {campaign_id}")
        return BudgetOut(campaign_id=lg.campaign_id, currency=lg.currency, limit=lg.limit, reserved=lg.reserved,
                         spent=lg.spent, remaining=lg.remaining, seq=lg.seq, vouchers_issued=lg.vouchers)

    @app.post("/v1/campaigns/{campaign_id}/partner-codes", tags=["campaigns"], responses=NOT_FOUND,
              response_class=Response, summary="Generate non-personal partner codes, as CSV",
              openapi_extra={"responses": {"200": {"content": {"text/csv": {"schema": {"type": "string"}}}}}})
    async def partner_codes(campaign_id: CampaignPath, body: Annotated[PartnerCodesIn, Body()]) -> Response:
        spec, codes_, expires = await run(lambda: admin.partner_codes(service.pool, campaign_id, body.partner, body.count))
        return Response(partner_csv(spec.id, body.partner, codes_, expires), media_type="text/csv")


def partner_csv(campaign_id: str, partner: str, codes_: list[str], expires: datetime) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["code", "partner", "campaign_id", "expires_at"])
    stamp = expires.isoformat()
    writer.writerows([c, partner, campaign_id, stamp] for c in codes_)
    return buf.getvalue()
