"""API keys on the real database: expiry, and a key id taken by another key fails loudly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared import auth


async def test_expired_keys_are_refused_and_id_collisions_fail_loudly(pg_schema):
    _, pool = pg_schema
    async with pool.acquire() as conn:
        _, lasting = await auth.create_key(conn, "till", ["checkout"], expires_at=datetime.now(UTC) + timedelta(days=1))
        _, expired = await auth.create_key(conn, "old till", ["checkout"],
                                           expires_at=datetime.now(UTC) - timedelta(seconds=1))
        shared_key = "vs_0badc0de_first-secret"
        assert await auth.create_key(conn, "everywhere", ["marketing"], key=shared_key) == ("0badc0de", shared_key)
        assert await auth.create_key(conn, "everywhere", ["marketing"], key=shared_key) == ("0badc0de", shared_key)
        with pytest.raises(auth.KeyIdCollision, match="0badc0de is taken"):
            await auth.create_key(conn, "impostor", ["privacy:admin"], key="vs_0badc0de_another-secret")
    authenticator = auth.Authenticator(lambda: pool, cache_s=0)
    assert (await authenticator.principal(lasting)).scopes == {"checkout"}
    assert await authenticator.principal(expired) is None
    assert (await authenticator.principal(shared_key)).scopes == {"marketing"}
    assert await authenticator.principal("vs_0badc0de_another-secret") is None
