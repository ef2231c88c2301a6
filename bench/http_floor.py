"""The HTTP floor under the checkout's latencies: one trivial route, on the same server stack as
the services (uvicorn with uvloop and httptools, one process), at a constant rate from vegeta —
as a bare ASGI callable, and as a FastAPI route returning a dict. What the checkout's p99 cannot
go below on this machine whatever its own work costs.

    python -m bench.http_floor --rate 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.checkout import vegeta
from bench.common import cpu_seconds, cpu_share, free_port, scratch

BODY = b'{"status":"ok"}'


async def bare(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})


def fastapi_app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def serve(kind: str, port: int) -> None:
    import uvicorn

    app = bare if kind == "asgi" else fastapi_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


def measure(kind: str, rate: int, seconds: float, workdir: Path) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.http_floor", "--serve", kind, "--port", str(port)])
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"the {kind} server exited with {server.returncode}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"the {kind} server did not answer /healthz within 10 s")
        target = [{"method": "GET", "url": f"http://127.0.0.1:{port}/healthz"}]
        vegeta(target, 200, 2, workdir)
        names = {server.pid: "server"}
        before, started = cpu_seconds(names), time.monotonic()
        result = vegeta(target, rate, seconds, workdir)
        result["cores_used"] = cpu_share(before, cpu_seconds(names), time.monotonic() - started)
        return result
    finally:
        server.terminate()
        server.wait(30)


def run(rate: int, seconds: float) -> dict:
    workdir = scratch("bench-http-floor-")
    return {"benchmark": "http_floor", "bare_asgi": measure("asgi", rate, seconds, workdir),
            "fastapi_route": measure("fastapi", rate, seconds, workdir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--serve", choices=["asgi", "fastapi"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    print(json.dumps(run(args.rate, args.seconds), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
