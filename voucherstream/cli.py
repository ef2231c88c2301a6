"""``voucherstream``: the command line for the daily chores (``voucherstream --help``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from voucherstream import event_commands
from voucherstream.output import console, fail

app = typer.Typer(help="Voucherstream: consented, budgeted, single-use vouchers from a shop's Kafka events.",
                  no_args_is_help=True)
campaigns_app = typer.Typer(help="Campaigns (issuance service).", no_args_is_help=True)
app.add_typer(campaigns_app, name="campaigns")

ISSUANCE = typer.Option("http://127.0.0.1:8003", "--issuance-url", envvar="VOUCHERSTREAM_ISSUANCE_URL",
                        help="base URL of the issuance service")


@campaigns_app.command("load")
def load_campaigns(file: Path = typer.Argument(..., exists=True, readable=True, help="YAML with a 'campaigns' list"),
                   url: str = ISSUANCE, key: str = typer.Option(..., envvar="VOUCHERSTREAM_API_KEY",
                                                                help="an API key with the marketing scope")) -> None:
    """Create the campaigns of a YAML file, or replace their definitions if they exist."""
    try:
        doc = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        fail(f"{file} is not valid YAML: {exc}")
    items = doc.get("campaigns") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        fail(f"{file} needs a top-level 'campaigns' list")
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
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
                  url: str = ISSUANCE, key: str = typer.Option(..., envvar="VOUCHERSTREAM_API_KEY",
                                                               help="an API key with the marketing scope")) -> None:
    """Generate non-personal partner codes into a CSV file, with a progress bar."""
    written = 0
    with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {key}"}) as client, \
            out.open("w") as f, Progress(
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


keys_app = typer.Typer(help="API keys (stored hashed in each service's schema; shown once).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
DB_SERVICES = ("consent", "segmentation", "issuance", "analytics")


async def _with_schemas(services: list[str], action, schema: str | None = None):
    from pathlib import Path as _Path

    from shared import datakeys, db
    from shared.settings import DataKeySettings, PostgresSettings

    settings = PostgresSettings()
    out = []
    for name in services:
        if name not in DB_SERVICES:
            fail(f"unknown service {name!r} (services with API keys: {', '.join(DB_SERVICES)})")
        target = schema or name
        pool = await db.create_pool(settings, target, min_size=1, max_size=1)
        try:
            folder = _Path(__file__).resolve().parents[1] / "services" / name / "migrations"
            await db.migrate(pool, target, db.discover(("shared", db.SHARED_MIGRATIONS), (name, folder)))
            await datakeys.migrate(pool, DataKeySettings())
            async with pool.acquire() as conn:
                out.append(await action(conn))
        finally:
            await pool.close()
    return out


db_app = typer.Typer(help="The services' PostgreSQL schemas: migrations, and a least-privilege role per service.",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("migrate")
def db_migrate(services: str = typer.Option(",".join(DB_SERVICES), help="comma-separated services"),
               schema: str = typer.Option(None, help="the schema, when one service runs under another name")) -> None:
    """Apply pending migrations, as the schemas' owner (VOUCHERSTREAM_POSTGRES_DSN); idempotent."""
    targets = [s.strip() for s in services.split(",") if s.strip()]
    if schema and len(targets) != 1:
        fail("--schema goes with exactly one service")

    async def nothing(conn):
        return None

    try:
        asyncio.run(_with_schemas(targets, nothing, schema))
    except OSError as exc:
        fail(f"cannot reach PostgreSQL: {exc}")
    console.print(f"migrated {', '.join(targets)}")


# The deploy Jobs' one-word spelling (the Helm chart's pre-install hook runs `db migrate`).
app.command("migrate", help="Apply pending migrations of every service's schema (the same as `db migrate`).")(db_migrate)


@db_app.command("grant")
def db_grant(services: str = typer.Argument(..., help="comma-separated: consent, segmentation, issuance, analytics"),
             role: str = typer.Option(None, help="the login to create or update, for one service "
                                                 "(default: voucherstream_<service>)"),
             password_env: str = typer.Option("VOUCHERSTREAM_DB_ROLE_PASSWORD",
                                              help="the environment variable holding the role's password"),
             schema: str = typer.Option(None, help="the schema, when the service runs under another name")) -> None:
    """Give a service its own database login that can use only its own schema's rows (run as the
    owner after `db migrate`; idempotent). The service then connects with <SERVICE>_POSTGRES_DSN."""
    import os

    from shared import datakeys, db
    from shared.settings import DataKeySettings

    targets = [s.strip() for s in services.split(",") if s.strip()]
    if (role or schema) and len(targets) != 1:
        fail("--role and --schema go with exactly one service")
    password = os.environ.get(password_env) or None
    for service in targets:
        login = role or f"voucherstream_{service}"

        async def action(conn, service=service, login=login):
            append_only = await db.grant_runtime_role(conn, schema or service, login, password)
            await datakeys.grant(conn, DataKeySettings(), login)
            return append_only

        try:
            (append_only,) = asyncio.run(_with_schemas([service], action, schema))
        except ValueError as exc:
            fail(str(exc))
        except OSError as exc:
            fail(f"cannot reach PostgreSQL: {exc}")
        extra = f"; append-only: {', '.join(append_only)}" if append_only else ""
        console.print(f"role {login} may use the rows of schema {schema or service} and the key store, and nothing "
                      f"else{extra}")


@keys_app.command("create")
def create_key(name: str = typer.Option(..., help="who uses it, e.g. shop-checkout"),
               scopes: str = typer.Option(..., help="comma-separated: checkout, onsite, marketing, consent:write, "
                                                    "privacy:admin, profiles:read"),
               services: str = typer.Option(",".join(DB_SERVICES), help="services that accept it"),
               schema: str = typer.Option(None, help="the PostgreSQL schema, when one service runs under another name"),
               expires_in_days: float = typer.Option(None, min=0.001, help="the key stops working after this long "
                                                     "(default: until revoked)"),
               quiet: bool = typer.Option(False, "--quiet", "-q", help="print only the key")) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    from datetime import UTC, datetime, timedelta

    from shared import auth

    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    key_holder: dict = {}

    async def action(conn):
        key_id, key = await auth.create_key(conn, name, wanted, key_holder.get("key"), expires_at=expires_at)
        key_holder.update(id=key_id, key=key)

    try:
        targets = [s.strip() for s in services.split(",") if s.strip()]
        if schema and len(targets) != 1:
            fail("--schema goes with exactly one service")
        asyncio.run(_with_schemas(targets, action, schema))
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot reach PostgreSQL: {exc}")
    if quiet:
        print(key_holder["key"])
        return
    console.print(f"created key {key_holder['id']} ({name}; scopes {', '.join(sorted(wanted))}; services {services})")
    console.print("it is shown only now; store it in the client's secrets:")
    print(key_holder["key"])


@keys_app.command("rotate")
def rotate_key() -> None:
    """Print a new code-hash key and the settings that rotate to it: the current key moves to the
    previous keys, so codes already issued keep validating (docs/operations.md, "Secrets")."""
    import json
    import secrets as random

    from services.issuance.settings import IssuanceSettings

    current = IssuanceSettings()
    previous = [current.code_hash_key] + current.code_hash_previous_keys
    print(f"ISSUANCE_CODE_HASH_KEY={random.token_urlsafe(32)}")
    print(f"ISSUANCE_CODE_HASH_PREVIOUS_KEYS={json.dumps([k.get_secret_value() for k in previous])}")


@keys_app.command("revoke")
def revoke_key(key_id: str = typer.Argument(..., help="the id (the part after vs_)"),
               services: str = typer.Option(",".join(DB_SERVICES))) -> None:
    """Revoke an API key everywhere it was accepted."""
    from shared import auth

    async def action(conn):
        return await auth.revoke_key(conn, key_id)

    done = asyncio.run(_with_schemas([s.strip() for s in services.split(",") if s.strip()], action))
    if not any(done):
        fail(f"no active key {key_id}")
    console.print(f"revoked {key_id}")


app.command("publish")(event_commands.publish)
app.command("seal")(event_commands.seal)
app.command("tail")(event_commands.tail)

privacy_app = typer.Typer(help="Access and erasure requests (consent service).", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
CONSENT = typer.Option("http://127.0.0.1:8001", "--consent-url", envvar="VOUCHERSTREAM_CONSENT_URL")


def _privacy(kind: str, customer: str, follow: bool, url: str, key: str, timeout: float) -> None:
    import time

    path = {"export": "exports", "erasure": "erasures"}[kind]
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        try:
            r = client.post(f"/v1/privacy/{path}", json={"customer_id": customer})
        except httpx.HTTPError as exc:
            fail(f"cannot reach the consent service at {url}: {exc}")
        if r.status_code >= 400:
            fail(f"{r.status_code} {r.text}")
        body = r.json()
        console.print(f"{kind} request {body['request_id']} started for {customer}")
        shown: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while follow:
            for service, part in body["services"].items():
                if shown.get(service) != part["status"]:
                    shown[service] = part["status"]
                    console.print(f"  {service:14} {part['status']:9} {part['completed_at'] or ''}")
            if body["status"] == "delivered":
                fail(f"the bundle was already handed out at {body['delivered_at']} (an export is delivered once)")
            if body["status"] == "completed":
                console.print(f"{kind} completed at {body['completed_at']}")
                if kind == "export":
                    print(json.dumps(body["bundle"], indent=2))
                return
            if time.monotonic() > deadline:
                fail(f"still pending after {timeout:.0f} s: {', '.join(s for s, st in shown.items() if st != 'completed')}")
            time.sleep(0.5)
            body = client.get(f"/v1/privacy/{path}/{body['request_id']}").json()
        print(json.dumps(body, indent=2))


@privacy_app.command("export")
def privacy_export(customer: str, follow: bool = typer.Option(True, "--follow/--no-follow"), url: str = CONSENT,
                   key: str = typer.Option(..., envvar="VOUCHERSTREAM_API_KEY", help="a key with the privacy:admin scope"),
                   timeout: float = typer.Option(120.0, help="seconds to follow")) -> None:
    """Start an access/portability export and follow it until every service answered."""
    _privacy("export", customer, follow, url, key, timeout)


@privacy_app.command("erase")
def privacy_erase(customer: str, follow: bool = typer.Option(True, "--follow/--no-follow"), url: str = CONSENT,
                  key: str = typer.Option(..., envvar="VOUCHERSTREAM_API_KEY", help="a key with the privacy:admin scope"),
                  timeout: float = typer.Option(120.0, help="seconds to follow")) -> None:
    """Start an erasure and follow it until every service confirmed."""
    _privacy("erasure", customer, follow, url, key, timeout)


@app.command("topics")
def topics_cmd(bootstrap: str = typer.Option("127.0.0.1:9092", envvar="VOUCHERSTREAM_KAFKA_BOOTSTRAP")) -> None:
    """Create or update every topic of the registry (idempotent)."""
    from shared import topics

    code = topics.main(["--bootstrap", bootstrap])
    raise typer.Exit(code)


@app.command("acls")
def acls_cmd(prune: bool = typer.Option(False, "--prune", help="delete the registry principals' ACLs it no longer "
                                        "asks for"),
             list_only: bool = typer.Option(False, "--list", help="print the ACLs, change nothing")) -> None:
    """Apply the ACLs the topic registry implies (each service reads what it consumes and writes what
    it produces; the shop writes its inbound topics; only the sender reads the codes), as a principal
    allowed to alter ACLs (VOUCHERSTREAM_KAFKA_*)."""
    from shared import acls

    raise typer.Exit(acls.main((["--prune"] if prune else []) + (["--list"] if list_only else [])))


if __name__ == "__main__":
    app()
