"""Hot routes answered without FastAPI's per-request machinery.

For every request FastAPI matches its route among all of the app's, resolves the route's
dependencies, validates each parameter and wraps the answer; for the checkout's validate and
redeem that machinery cost the issuance process more CPU than the routes' own work (py-spy under
``bench.checkout``, docs/benchmarks.md). :class:`FastRoutes` answers a few ``(method, path)``
pairs directly: the handler gets the request and its whole body and answers — or returns ``None``,
and the request goes on, its body replayed unchanged, to the FastAPI route of the same path. A
fast handler therefore takes only the way an ordinary request takes; whatever it does not
recognise (a body that does not validate, a header out of bounds) the FastAPI route answers, with
its documented errors. An ``HTTPException`` raised by a handler is answered as FastAPI answers it.

The middleware sits inside the app's others (body limit, tracing), which see every request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from fastapi.exception_handlers import http_exception_handler
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

M = TypeVar("M", bound=BaseModel)
FastHandler = Callable[[Request, bytes], Awaitable[Response | None]]


class FastRoutes:
    """ASGI middleware: ``routes`` maps ``(method, path)`` to a :data:`FastHandler`."""

    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], FastHandler]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            body = await request.body()
            response = await handler(request, body)
        except HTTPException as exc:
            response = await http_exception_handler(request, exc)
        if response is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await response(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request's body again, then whatever the client sends next (a disconnect)."""
    given = False

    async def again() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def json_body(model: type[M], request: Request, body: bytes) -> M | None:
    """``body`` as ``model`` when the request says it is JSON and it validates; else ``None``
    (the FastAPI route answers: 422 with the errors, or 400)."""
    if not _says_json(request):
        return None
    try:
        return model.model_validate_json(body)
    except ValidationError:
        return None


def json_object(request: Request, body: bytes) -> dict[str, Any] | None:
    """``body`` as a JSON object when the request says it is JSON and it is one; else ``None``."""
    if not _says_json(request):
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _says_json(request: Request) -> bool:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower() == "application/json"
