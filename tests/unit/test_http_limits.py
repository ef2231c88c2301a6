"""Request bodies over the limit are refused before the application reads them."""

import httpx
from fastapi import FastAPI, Request

from shared.http_limits import BodyLimit

READ: list[int] = []


def app(limit: int) -> FastAPI:
    api = FastAPI()
    api.add_middleware(BodyLimit, limit=limit)

    @api.post("/echo")
    async def echo(request: Request) -> dict:
        body = await request.body()
        READ.append(len(body))
        return {"bytes": len(body)}

    return api


async def test_an_announced_or_streamed_body_over_the_limit_gets_413_and_the_route_never_sees_it():
    READ.clear()
    transport = httpx.ASGITransport(app=app(1024))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/echo", content=b"x" * 1024)).json() == {"bytes": 1024}
        announced = await client.post("/echo", content=b"x" * (10 * 1024 * 1024))
        assert announced.status_code == 413 and "over 1024 bytes" in announced.json()["detail"]
        async def chunks():
            for _ in range(4):
                yield b"x" * 600

        streamed = await client.post("/echo", content=chunks())  # no Content-Length
        assert streamed.status_code == 413
        bad = await client.post("/echo", content=b"{}", headers={"content-length": "nonsense"})
        assert bad.status_code == 413
    assert READ == [1024]  # only the small body reached the route
