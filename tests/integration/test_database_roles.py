"""Least privilege in PostgreSQL: each service's own login (``voucherstream db grant``) uses only
its own schema's rows and the key store's (never rewriting a key), and the consent ledger is
append-only by grant."""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from services.issuance.app import IssuanceService
from services.issuance.settings import IssuanceSettings
from shared import auth, datakeys, db
from shared.settings import DataKeySettings, PostgresSettings
from tests.support import unique

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "role-password-for-tests-only"


def dsn_as(role: str) -> str:
    parts = urlsplit(PostgresSettings().dsn.get_secret_value())
    return urlunsplit(parts._replace(netloc=f"{role}:{PASSWORD}@{parts.hostname}:{parts.port or 5432}"))


@contextlib.asynccontextmanager
async def migrated(service: str):
    schema = unique(f"test_{service}_")
    pool = await db.create_pool(PostgresSettings(), schema, min_size=1, max_size=2)
    await db.migrate(pool, schema, db.discover(("shared", db.SHARED_MIGRATIONS),
                                               (service, ROOT / "services" / service / "migrations")))
    await datakeys.migrate(pool, DataKeySettings())
    try:
        yield schema, pool
    finally:
        await db.drop_schema(pool, schema)
        await pool.close()


async def test_each_service_role_reaches_only_its_own_schema_and_the_ledger_only_grows(kafka):
    roles = {s: unique(f"test_role_{s}_") for s in ("consent", "issuance")}
    try:
        async with migrated("consent") as (consent, admin_c), migrated("issuance") as (issuance, admin_i):
            async with admin_c.acquire() as conn:
                assert await db.grant_runtime_role(conn, consent, roles["consent"], PASSWORD) == ["consent_ledger"]
            async with admin_i.acquire() as conn:
                assert await db.grant_runtime_role(conn, issuance, roles["issuance"], PASSWORD) == []
                for role in roles.values():  # as `voucherstream db grant` does
                    await datakeys.grant(conn, DataKeySettings(), role)
            as_issuance = await asyncpg.connect(dsn_as(roles["issuance"]))
            as_consent = await asyncpg.connect(dsn_as(roles["consent"]))
            try:
                assert await as_issuance.fetchval(f"SELECT count(*) FROM {issuance}.vouchers") == 0
                for statement in (f"SELECT * FROM {consent}.consent_ledger", f"SELECT * FROM {consent}.api_keys",
                                  f"CREATE TABLE {issuance}.extra (x int)", f"DROP TABLE {issuance}.vouchers",
                                  f"DELETE FROM {issuance}.schema_migrations",
                                  "UPDATE voucherstream_keys.data_keys SET wrapped = ''",
                                  "DELETE FROM voucherstream_keys.schema_migrations"):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await as_issuance.execute(statement)

                await as_consent.execute(
                    f"INSERT INTO {consent}.consent_ledger (event_id, customer_id, purpose, granted, policy_version,"
                    " source, occurred_at, received_at, via) VALUES ('e1', 'c-1', 'email', true, 'v1', 'test', now(),"
                    " now(), 'http')")
                for statement in (f"UPDATE {consent}.consent_ledger SET granted = false",
                                  f"DELETE FROM {consent}.consent_ledger", f"TRUNCATE {consent}.consent_ledger"):
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await as_consent.execute(statement)
                # The one sanctioned deletion, an erasure, runs through the owner's function.
                assert await as_consent.fetchval(f"SELECT {consent}.erase_consent_ledger('c-1')") == "e1"
                assert await as_consent.fetchval(f"SELECT count(*) FROM {consent}.consent_ledger") == 0
            finally:
                await as_issuance.close()
                await as_consent.close()

            # The issuance service runs under its role: it starts without changing the schema and serves.
            async with admin_i.acquire() as conn:
                _, key = await auth.create_key(conn, "tests", ["marketing"])
            service = IssuanceService(IssuanceSettings(kafka=kafka, schema_name=issuance,
                                                       postgres_dsn=SecretStr(dsn_as(roles["issuance"]))))
            await service.start()
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=service.http(manage_lifecycle=False)),
                                             base_url="http://issuance",
                                             headers={"Authorization": f"Bearer {key}"}) as client:
                    assert (await client.get("/v1/campaigns")).status_code == 200
                assert await service.pool.fetchval("SELECT current_user") == roles["issuance"]
            finally:
                await service.stop()
    finally:  # the schemas, and with them every grant, are gone: the roles can go
        conn = await asyncpg.connect(PostgresSettings().dsn.get_secret_value())
        try:
            for role in roles.values():
                if await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role):  # the key store stays
                    await conn.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA voucherstream_keys FROM "{role}"')
                    await conn.execute(f'REVOKE ALL ON SCHEMA voucherstream_keys FROM "{role}"')
                await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await conn.close()
