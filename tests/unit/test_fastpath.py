"""Fast handlers answer the ordinary request; everything else reaches the FastAPI route as sent."""

import httpx
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from shared.fastpath import FastRoutes, json_body
from shared.http_limits import BodyLimit

SEEN: list[bytes] = []


class Item(BaseModel):
    name: str = Field(min_length=1)
    qty: int


def caller(request: Request) -> str:
    if request.headers.get("x-key") != "good":
        raise HTTPException(401, "no key", headers={"WWW-Authenticate": "Bearer"})
    return "good"


def app() -> FastAPI:
    api = FastAPI()
    routes: dict = {}
    api.add_middleware(FastRoutes, routes=routes)
    api.add_middleware(BodyLimit, limit=1024)

    @api.post("/items")
    async def add(item: Item, request: Request, who: str = Depends(caller)) -> dict:
        SEEN.append(await request.body())
        return {"name": item.name, "qty": item.qty, "by": "route"}

    async def fast_add(request: Request, raw: bytes):
        item = json_body(Item, request, raw)
        if item is None or "x-slow" in request.headers:  # a case this handler leaves to the route
            return None
        caller(request)
        from fastapi.responses import JSONResponse
        return JSONResponse({"name": item.name, "qty": item.qty, "by": "fast"})

    routes[("POST", "/items")] = fast_add
    return api


async def test_the_ordinary_request_is_answered_fast_and_the_rest_as_fastapi_answers_it():
    SEEN.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://t",
                                 headers={"x-key": "good"}) as client:
        ok = await client.post("/items", json={"name": "a", "qty": 2})
        assert ok.json() == {"name": "a", "qty": 2, "by": "fast"}
        left = b'{"name": "b", "qty": 3}'
        passed_on = await client.post("/items", content=left, headers={"content-type": "application/json", "x-slow": "1"})
        assert passed_on.json() == {"name": "b", "qty": 3, "by": "route"}

        bad = b'{"name": "", "qty": "many"}'
        invalid = await client.post("/items", content=bad, headers={"content-type": "application/json"})
        assert invalid.status_code == 422
        assert {e["loc"][-1] for e in invalid.json()["detail"]} == {"name", "qty"}
        not_json = await client.post("/items", content=b"{oops", headers={"content-type": "application/json"})
        assert not_json.status_code == 422
        form = await client.post("/items", content=b'{"name": "b", "qty": 1}', headers={"content-type": "text/plain"})
        assert form.status_code == 422  # FastAPI's own answer to a body it does not read as JSON

        unauthorised = await client.post("/items", json={"name": "a", "qty": 2}, headers={"x-key": "bad"})
        assert unauthorised.status_code == 401 and unauthorised.json() == {"detail": "no key"}
        assert unauthorised.headers["www-authenticate"] == "Bearer"

        over = await client.post("/items", content=b'{"name": "' + b"x" * 2000 + b'", "qty": 1}',
                                 headers={"content-type": "application/json"})
        assert over.status_code == 413
    assert SEEN == [left]  # the route read the body the fast handler had read, unchanged


async def test_other_paths_and_methods_go_straight_to_the_app():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://t") as client:
        assert (await client.get("/items")).status_code == 405
        assert (await client.post("/other", json={})).status_code == 404
