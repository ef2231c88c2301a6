"""Helpers shared by the benchmarks: running a service as its own process, percentiles."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@asynccontextmanager
async def service_process(name: str, env: dict[str, str], port: int, log_path: Path):
    """Runs ``python -m services.<name>`` until the block ends (SIGTERM, then wait)."""
    log = open(log_path, "wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", f"services.{name}", cwd=ROOT,
                                                env=os.environ | {"PYTHONPATH": str(ROOT)} | env,
                                                stdout=log, stderr=log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(300):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.returncode is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"{name} not ready after 30 s; see {log_path}")
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)
        log.close()
