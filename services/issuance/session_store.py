"""SQL of checkout sessions (Voucherify's LOCK, migration 007): a voucher held by one session."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def hold(conn: asyncpg.Connection, voucher_id: str, session: str, until: datetime, reserved: int) -> None:
    """The voucher is held by ``session`` until ``until`` and holds ``reserved`` of its budget."""
    await conn.execute("UPDATE vouchers SET session = $2, session_expires_at = $3, reserved = $4 WHERE id = $1",
                       voucher_id, session, until, reserved)


async def release(conn: asyncpg.Connection, voucher_id: str, reserved: int) -> None:
    await conn.execute("UPDATE vouchers SET session = NULL, session_expires_at = NULL, reserved = $2 WHERE id = $1",
                       voucher_id, reserved)


async def expired_partner_holds(conn: asyncpg.Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    """Active partner codes whose hold expired and still reserve budget, locked (skipping rows
    another transaction holds)."""
    return await conn.fetch(
        "SELECT id, campaign_id, reserved FROM vouchers WHERE session_expires_at <= $1 AND status = 'active'"
        " AND customer_id IS NULL AND reserved > 0 ORDER BY session_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now, limit)


async def forget_expired(conn: asyncpg.Connection, now: datetime) -> None:
    """Expired holds that reserve nothing of their own are simply forgotten."""
    await conn.execute("UPDATE vouchers SET session = NULL, session_expires_at = NULL"
                       " WHERE session_expires_at <= $1 AND (customer_id IS NOT NULL OR reserved = 0"
                       " OR status <> 'active')", now)
