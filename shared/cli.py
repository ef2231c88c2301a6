"""``voucherstream``: the command line for the daily chores (``voucherstream --help``)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

app = typer.Typer(help="Voucherstream: consented, budgeted, single-use vouchers from a shop's Kafka events.",
                  no_args_is_help=True)
campaigns_app = typer.Typer(help="Campaigns (issuance service).", no_args_is_help=True)
app.add_typer(campaigns_app, name="campaigns")
console = Console(stderr=True)

ISSUANCE = typer.Option("http://127.0.0.1:8003", "--issuance-url", envvar="VOUCHERSTREAM_ISSUANCE_URL",
                        help="base URL of the issuance service")


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@campaigns_app.command("load")
def load_campaigns(file: Path = typer.Argument(..., exists=True, readable=True, help="YAML with a 'campaigns' list"),
                   url: str = ISSUANCE) -> None:
    """Create the campaigns of a YAML file, or replace their definitions if they exist."""
    try:
        doc = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        fail(f"{file} is not valid YAML: {exc}")
    items = doc.get("campaigns") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        fail(f"{file} needs a top-level 'campaigns' list")
    with httpx.Client(base_url=url, timeout=30) as client:
        for item in items:
            cid = item.get("id", "?") if isinstance(item, dict) else "?"
            try:
                r = client.post("/v1/campaigns", json=item)
                if r.status_code == 409:
                    r = client.put(f"/v1/campaigns/{cid}", json=item)
                    verb = "replaced"
                else:
                    verb = "created"
            except httpx.HTTPError as exc:
                fail(f"cannot reach the issuance service at {url}: {exc}")
            if r.status_code >= 400:
                fail(f"campaign {cid}: {r.status_code} {r.text}")
            console.print(f"{verb:8} {cid}")


@campaigns_app.command("partner-codes")
def partner_codes(campaign: str = typer.Argument(..., help="campaign id"),
                  partner: str = typer.Option(..., help="who distributes them (affiliate, influencer)"),
                  count: int = typer.Option(..., min=1, max=10_000_000),
                  out: Path = typer.Option(..., help="CSV file to write"),
                  chunk: int = typer.Option(20_000, min=1, max=1_000_000),
                  url: str = ISSUANCE) -> None:
    """Generate non-personal partner codes into a CSV file, with a progress bar."""
    written = 0
    with httpx.Client(base_url=url, timeout=300) as client, out.open("w") as f, Progress(
            TextColumn("partner codes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console) as progress:
        task = progress.add_task("codes", total=count)
        while written < count:
            n = min(chunk, count - written)
            try:
                r = client.post(f"/v1/campaigns/{campaign}/partner-codes", json={"partner": partner, "count": n})
            except httpx.HTTPError as exc:
                fail(f"cannot reach the issuance service at {url}: {exc}")
            if r.status_code >= 400:
                fail(f"{r.status_code} {r.text}")
            lines = r.text.splitlines(keepends=True)
            f.writelines(lines if written == 0 else lines[1:])
            written += n
            progress.update(task, completed=written)
    console.print(f"wrote {written} codes to {out}")


@app.command("topics")
def topics_cmd(bootstrap: str = typer.Option("127.0.0.1:9092", envvar="VOUCHERSTREAM_KAFKA_BOOTSTRAP")) -> None:
    """Create or update every topic of the registry (idempotent)."""
    from shared import topics

    code = topics.main(["--bootstrap", bootstrap])
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
