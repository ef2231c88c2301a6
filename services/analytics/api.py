"""The analytics service's HTTP API (FastAPI; the OpenAPI document is served at /openapi.json)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Path

from services.analytics import store
from shared.auth import Authenticator
from shared.service import NOT_FOUND

CampaignPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]


def routes(app: FastAPI, auth: Authenticator, pool: Callable[[], asyncpg.Pool]) -> None:
    """``pool`` gives the service's pool (it exists once the service has started)."""
    @app.get("/v1/campaigns/{campaign_id}/stats", tags=["analytics"], responses=NOT_FOUND,
             dependencies=[Depends(auth.require("marketing"))],
             summary="Budget, counts and per-variant redemption rates with 95 % intervals")
    async def campaign_stats(campaign_id: CampaignPath) -> dict[str, Any]:
        async with pool().acquire() as conn:
            c = await store.counters(conn, campaign_id)
            name = await store.campaign_name(conn, campaign_id)
        if c is None:
            raise HTTPException(404, f"no events seen for campaign {campaign_id}")
        return c.stats(name)
