"""PostgreSQL: one asyncpg pool per service, bound to the service's own schema, and numbered SQL
migrations applied once each, inside a transaction.

Migrations are plain ``NNN_name.sql`` files: first the shared ones (``shared/migrations``: the
outbox), then the service's own (``services/<name>/migrations``). Each is recorded in
``<schema>.schema_migrations`` with a checksum; an applied file that was edited afterwards is an
error, not a silent drift. Concurrent instances serialise on an advisory lock, so two replicas
starting together apply each migration once.

A function that changes over time is defined once, in a repeatable file ``R__name.sql`` (Flyway's
convention) of ``CREATE OR REPLACE`` statements: it runs after every numbered migration of every
folder, again whenever its checksum changes, so the function's one definition is the file as it
is now rather than a full copy in each migration that changed it.

(Why not a library: the well-kept migration tools — alembic, yoyo, dbmate — drive psycopg or a
binary of their own; the services talk asyncpg only, and this file is the whole need.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson

from shared.settings import PostgresSettings

log = logging.getLogger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_FILE_RE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_REPEATABLE_RE = re.compile(r"^R__[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    id: str  # "shared/001_outbox", "consent/001_ledger" or "issuance/R__redeem_single_use_batch"
    sql: str
    repeatable: bool = False

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def check_schema(schema: str) -> str:
    if not _SCHEMA_RE.match(schema):
        raise ValueError(f"invalid schema name {schema!r}: lowercase letters, digits and '_' only")
    return schema


def discover(*folders: tuple[str, Path]) -> list[Migration]:
    """Reads ``(label, folder)`` pairs in order; within a folder, files sort by their number. The
    repeatable files of all folders come last, in the same order."""
    found: list[Migration] = []
    repeatable: list[Migration] = []
    for label, folder in folders:
        files = sorted(p for p in folder.glob("*.sql"))
        seen: set[str] = set()
        for path in files:
            if _REPEATABLE_RE.match(path.name):
                repeatable.append(Migration(f"{label}/{path.stem}", path.read_text(), repeatable=True))
                continue
            m = _FILE_RE.match(path.name)
            if not m:
                raise ValueError(f"migration file {path} is not named NNN_name.sql or R__name.sql")
            if m.group(1) in seen:
                raise ValueError(f"two migrations numbered {m.group(1)} in {folder}")
            seen.add(m.group(1))
            found.append(Migration(f"{label}/{path.stem}", path.read_text()))
    return found + repeatable


def _json_text(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # orjson: a redemption writes two JSON documents and the profile showed the stdlib encoder.
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(typename, encoder=_json_text, decoder=orjson.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Replaces asyncpg's reset of a connection returned to the pool (``pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL`` — a second round trip for every one-query request, 10 % of
    a validation's time in a profile). The services keep no session state: their advisory locks
    are transaction-scoped, and they never LISTEN, SET or DECLARE outside a transaction. The pool
    still rolls back a transaction left open before calling this."""


# Sessions for statements that reach every row by key, run per request (a checkout's read): each
# statement is planned once per connection, not at every run, and never as a sequential scan.
# PostgreSQL plans a prepared statement anew at every run while its custom plans cost less than the
# generic one, and a statement over ``unnest`` of an array parameter always does (the generic plan
# assumes ten elements, a custom plan knows the one or two a request has): the checkout's read
# spent longer being planned than being run (docs/benchmarks.md, "Planned at every run"). A generic
# plan is kept until a table it reads is analysed; made while a table was young it would scan that
# table as it grows ("Young tables"), hence no sequential scans in these sessions. A scan left in
# one anyway is costed past ``jit_above_cost`` and would be compiled to machine code at every run,
# which takes far longer than running it: no JIT either, and sweeps belong on the service's pool.
KEY_PROBES = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off", "jit": "off"}


async def create_pool(settings: PostgresSettings, schema: str, *, application_name: str = "voucherstream",
                      min_size: int | None = None, max_size: int | None = None,
                      session: dict[str, str] | None = None) -> asyncpg.Pool:
    """A pool whose connections see ``schema`` first on their search path, with the other
    settings of ``session`` (e.g. :data:`KEY_PROBES`). Retries while the server is starting (a
    service may start before its database)."""
    check_schema(schema)
    delay = 0.2
    for attempt in range(1, 31):
        try:
            return await asyncpg.create_pool(
                settings.dsn.get_secret_value(),
                min_size=min_size or settings.pool_min,
                max_size=max_size or settings.pool_max,
                command_timeout=settings.command_timeout_s,
                init=_init_connection,
                reset=_keep_session,
                server_settings={"search_path": f"{schema},public", "application_name": application_name,
                                 **(session or {})},
            )
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError) as exc:
            if attempt == 30:
                raise
            log.warning("postgres not reachable, retrying", extra={"error": repr(exc), "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def batch_transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction for a batch of work (a consumed batch, a sweep), whose
    statements are planned for this execution. PostgreSQL otherwise settles, after a statement's
    fifth run, on a generic plan costed with the tables as they were then: planned while a table
    was young (a fresh schema), it scans that table on every run as it grows, until autovacuum's
    next ANALYZE — seconds to minutes in which a batch takes 100 ms and more instead of a few. A
    batch runs a few times a second; planning its statements anew costs a fraction of a
    millisecond each (docs/benchmarks.md, "Young tables")."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        yield conn


async def _all_applied(conn: asyncpg.Connection, schema: str, migrations: list[Migration]) -> bool:
    """Read-only: whether every migration is applied as it is (a service running as a role that
    may not change the schema's shape starts without touching it)."""
    if await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".schema_migrations') is None:
        return False
    applied = dict(await conn.fetch(f'SELECT id, checksum FROM "{schema}".schema_migrations'))
    return all(applied.get(m.id) == m.checksum for m in migrations)


async def migrate(pool: asyncpg.Pool, schema: str, migrations: list[Migration]) -> list[str]:
    """Applies the migrations not yet applied in ``schema``; returns the ids it applied."""
    check_schema(schema)
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        if await _all_applied(conn, schema, migrations):
            return []
        try:
            await _apply(conn, schema, migrations, applied_now)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise RuntimeError(f"migrations are pending in schema {schema} and this database role may not apply "
                               f"them ({type(exc).__name__}); run `voucherstream db migrate` as the schema's owner "
                               "(docs/operations.md, \"Database roles\")") from None
    if applied_now:
        log.info("migrations applied", extra={"schema": schema, "migrations": applied_now})
    return applied_now


async def _apply(conn: asyncpg.Connection, schema: str, migrations: list[Migration], applied_now: list[str]) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{schema}")
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " id text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
    for migration in migrations:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{schema}")
            done = await conn.fetchval(
                f'SELECT checksum FROM "{schema}".schema_migrations WHERE id = $1', migration.id)
            if done == migration.checksum:
                continue
            if done is not None and not migration.repeatable:
                raise RuntimeError(
                    f"migration {migration.id} was edited after it was applied to schema {schema}; "
                    "add a new migration instead")
            await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
            await conn.execute(migration.sql)
            await conn.execute(
                f'INSERT INTO "{schema}".schema_migrations (id, checksum) VALUES ($1, $2)'
                " ON CONFLICT (id) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()",
                migration.id, migration.checksum)
            applied_now.append(migration.id)


_ROLE_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_role(role: str) -> str:
    if not _ROLE_RE.match(role):
        raise ValueError(f"invalid role name {role!r}: lowercase letters, digits and '_' only")
    return role


async def grant_runtime_role(conn: asyncpg.Connection, schema: str, role: str, password: str | None) -> list[str]:
    """Creates (or updates) ``role``, a login that may read and write the rows of ``schema`` and
    nothing else: no other schema, no DDL (it owns nothing), the migration record read-only, and
    the tables a migration marked append-only (a comment starting ``append-only``) only read and
    appended to. Run as the schema's owner after every migration (``voucherstream db grant``);
    idempotent. Returns the append-only tables."""
    check_schema(schema)
    check_role(role)
    async with conn.transaction():
        exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role)
        if not exists or password:
            verb = "ALTER" if exists else "CREATE"
            statement = await conn.fetchval(
                f"SELECT format('{verb} ROLE %I LOGIN' || CASE WHEN $2::text IS NULL THEN '' "
                "ELSE ' PASSWORD ' || quote_literal($2::text) END, $1::text)", role, password)
            await conn.execute(statement)
        q = f'"{schema}"'
        await conn.execute(f'GRANT USAGE ON SCHEMA {q} TO "{role}"')
        await conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {q} TO "{role}"')
        await conn.execute(f'GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {q} TO "{role}"')
        await conn.execute(f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {q} TO "{role}"')
        append_only = [r["relname"] for r in await conn.fetch(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relkind = 'r' AND obj_description(c.oid, 'pg_class') LIKE 'append-only%'",
            schema)]
        for table in ("schema_migrations", *append_only):
            check_schema(table)
            await conn.execute(f'REVOKE UPDATE, DELETE, TRUNCATE ON {q}."{table}" FROM "{role}"')
        await conn.execute(f'REVOKE INSERT ON {q}."schema_migrations" FROM "{role}"')
    return append_only


async def drop_schema(pool: asyncpg.Pool, schema: str) -> None:
    check_schema(schema)
    async with pool.acquire() as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
