"""Segmentation's HTTP routes (besides /healthz, /readyz and /metrics)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Path

from services.segmentation import store
from shared.service import ErrorOut


def routes(app: FastAPI, service) -> None:
    @app.get("/v1/customers/{customer_id}/segments", tags=["segments"],
             dependencies=[Depends(service.auth.require("profiles:read", "privacy:admin"))],
             responses={404: {"model": ErrorOut, "description": "No profile for this customer"}},
             summary="The customer's segment memberships, each with the facts that explain it")
    async def segments(customer_id: str = Path(min_length=1, max_length=128,
                                               pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")) -> dict[str, Any]:
        async with service.pool.acquire() as conn:
            profile = await store.profile(conn, customer_id)
        if profile is None:
            raise HTTPException(404, "no profile for this customer (no profiling consent, or no event since)")
        return {"customer_id": customer_id, "segments": profile.get("segments", {})}
