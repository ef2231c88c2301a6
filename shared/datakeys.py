"""Per-customer data keys: crypto-shredding of the personal fields the project writes to Kafka.

Every customer gets one random AES-256 data key, kept in the key store (a PostgreSQL schema of its
own, shared by the four services) *wrapped* under a key-encryption key from the settings
(``VOUCHERSTREAM_DATA_KEY``), next to a random key id and an HMAC of the customer's id (the store
never holds the id itself). Events seal their personal fields under their customer's key
(``shared.events``) and carry the key id. An erasure deletes the row: from then on every copy of
those fields — in any topic, replica, backup or consumer's cache past :attr:`ttl_s` — is
unreadable, and a consumer that meets one skips it as erased.

Keys are read through a bounded in-memory cache; a key found gone is remembered as gone (key ids
are random and never reused).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from cryptography.exceptions import InvalidTag

from shared import db, events, sealing
from shared.erasure import subject_hash
from shared.errors import TransientError
from shared.settings import DataKeySettings, PostgresSettings

MIGRATIONS = Path(__file__).parent / "keystore_migrations"
GONE = b""  # a destroyed key, in the cache

# Each customer's key under any of their subjects (one per wrapping key: a rotation keeps the
# earlier ones), and for those with none, the new key offered under the current subject — one
# round trip. New keys go in subject order, so two writers creating keys for the same customers
# lock them in one order; one that loses the race inserts nothing and reads the winner's after.
_FIND_OR_CREATE = (
    "WITH have AS (SELECT d.key_id, d.subject, d.wrapped, w.c,"
    " (d.xmin = xid(pg_current_xact_id_if_assigned())) IS TRUE AS mine"
    " FROM unnest($1::text[], $2::int[]) AS w(subject, c) JOIN {table} d ON d.subject = w.subject),"
    " made AS (INSERT INTO {table} (key_id, subject, wrapped)"
    " SELECT n.key_id, n.subject, n.wrapped FROM unnest($3::int[], $4::text[], $5::text[], $6::bytea[])"
    " AS n(c, key_id, subject, wrapped) WHERE n.c NOT IN (SELECT c FROM have) ORDER BY n.subject"
    " ON CONFLICT (subject) DO NOTHING RETURNING key_id, subject)"
    " SELECT key_id, subject, wrapped, mine, false AS made FROM have"
    " UNION ALL SELECT key_id, subject, NULL, NULL, true FROM made")


@dataclass(frozen=True, slots=True)
class DataKey:
    id: str
    key: bytes


class KeyUnreadable(TransientError):
    """A stored data key that none of the configured wrapping keys opens: the settings are wrong
    (a rotated-out ``VOUCHERSTREAM_DATA_KEY``), not the customer erased: retried, nothing skipped."""


class DataKeys:
    def __init__(self, settings: DataKeySettings, pool: Callable[[], asyncpg.Pool]) -> None:
        secrets = [settings.key.get_secret_value(), *(k.get_secret_value() for k in settings.previous_keys)]
        self._wrap = [sealing.derive_key(s, "data-key-wrap") for s in secrets]
        self._hmac = [sealing.derive_key(s, "data-key-subject") for s in secrets]
        self.schema = db.check_schema(settings.keystore_schema)
        self.table = f'"{self.schema}".data_keys'
        self.ttl_s = settings.cache_ttl_s
        self._size = settings.cache_size
        self._pool = pool
        self._by_id: OrderedDict[str, tuple[bytes, float]] = OrderedDict()  # key id -> key (GONE), read at
        self._by_customer: OrderedDict[str, tuple[DataKey, float]] = OrderedDict()

    # ------------------------------------------------------------------ subjects

    def subjects(self, customer_id: str) -> list[str]:
        """The customer's subject under each wrapping key (the current one first)."""
        return [subject_hash(k, customer_id) for k in self._hmac]

    # ------------------------------------------------------------------ sealing side

    async def for_customers(self, conn: asyncpg.Connection, customer_ids: Iterable[str]) -> dict[str, DataKey]:
        """Each customer's data key, created if they have none, on ``conn``: inside the caller's
        transaction, a new key becomes visible exactly when the records sealed with it do; outside
        one, it commits at once (before anything is sealed under it). Keys
        another transaction committed are kept in memory for :attr:`ttl_s`; one this transaction
        wrote is not (it may still roll back)."""
        now = time.monotonic()
        out: dict[str, DataKey] = {}
        wanted = []
        for cid in dict.fromkeys(customer_ids):
            hit = self._by_customer.get(cid)
            if hit is not None and now - hit[1] < self.ttl_s:
                out[cid] = hit[0]
            else:
                wanted.append(cid)
        if not wanted:
            return out
        theirs = [self.subjects(cid) for cid in wanted]
        pairs = [(s, i) for i, each in enumerate(theirs) for s in each]
        subjects = {s: wanted[i] for s, i in pairs}
        ids = [os.urandom(12).hex() for _ in wanted]  # a new key for each, kept for those who have none
        raw = dict(zip(ids, (os.urandom(32) for _ in wanted), strict=True))
        rows = await conn.fetch(
            _FIND_OR_CREATE.format(table=self.table), [s for s, _ in pairs], [i for _, i in pairs],
            list(range(len(wanted))), ids, [each[0] for each in theirs],
            [sealing.seal(self._wrap[0], raw[i], i.encode()) for i in ids])
        # Ours are committed already outside a transaction, and not yet inside the caller's.
        made_mine = conn.is_in_transaction()
        found = {r["subject"]: (DataKey(r["key_id"], raw[r["key_id"]]), made_mine) if r["made"] else
                 (DataKey(r["key_id"], self._unwrap(r["key_id"], r["wrapped"])), r["mine"]) for r in rows}
        keyed = {subjects[s] for s in found}
        raced = [s for s, cid in subjects.items() if cid not in keyed]
        if raced:  # another writer created these customers' keys meanwhile: theirs are the keys
            found |= await self._read(conn, "subject", raced)
        for subject, (key, mine) in found.items():
            out[subjects[subject]] = key
            if not mine:
                self._by_customer[subjects[subject]] = (key, now)
                self._by_customer.move_to_end(subjects[subject])
        while len(self._by_customer) > self._size:
            self._by_customer.popitem(last=False)
        return out

    # ------------------------------------------------------------------ opening side

    async def load(self, key_ids: Iterable[str]) -> None:
        """Reads the keys of these ids that are not cached (one query, committed rows only): a key
        not found is gone, since a record sealed with a key is published only after the key's
        transaction committed."""
        now = time.monotonic()
        wanted = [k for k in dict.fromkeys(key_ids) if not self._fresh(k, now)]
        if not wanted:
            return
        async with self._pool().acquire() as conn:
            found = await self._read(conn, "key_id", wanted)
        for key_id in wanted:
            self._by_id[key_id] = (found[key_id][0].key if key_id in found else GONE, now)
            self._by_id.move_to_end(key_id)
        while len(self._by_id) > self._size:
            self._by_id.popitem(last=False)

    def opener(self, key_id: str) -> bytes | None:
        """A loaded key, or ``None`` when it is gone (the customer was erased)."""
        entry = self._by_id.get(key_id)
        if entry is None:
            raise KeyError(f"data key {key_id} was not loaded")
        return entry[0] or None

    async def opened(self, values: list[bytes | None]) -> list[bytes | None]:
        """Record values with their sealed fields opened (``events.opened``), for tools that read
        topics: the shop's sender, the CLI. A record whose key is gone stays sealed."""
        ids = {k for v in values if (k := events.data_key_id(v))}
        if not ids:
            return values
        await self.load(ids)
        return [events.opened(v, self.opener) if v is not None and events.data_key_id(v) else v for v in values]

    async def sealed(self, values: list[bytes]) -> list[bytes]:
        """Events (envelopes, validated: :class:`events.ContractError` names the first that is
        not) with their personal fields sealed under their customers' keys, created and committed
        first — the shop's producer, before it publishes (``voucherstream seal``). Id, time and
        source are kept; other extension attributes are not."""
        decoded = [events.decode(v) for v in values]
        customers = [e.key() for _, e in decoded if e.PERSONAL and e.KEY_FIELD == "customer_id"]
        async with self._pool().acquire() as conn, conn.transaction():
            found = await self.for_customers(conn, customers)
        return [events.encode(e, source=env.source, event_id=env.id, time=env.time, data_key=found.get(e.key()))
                for env, e in decoded]

    # ------------------------------------------------------------------ erasure

    async def destroy(self, conn: asyncpg.Connection, customer_ids: Iterable[str]) -> int:
        """Deletes these customers' keys, in the caller's erasure transaction, and drops them from
        this process's memory (not marked gone: the transaction may still roll back)."""
        customer_ids = list(customer_ids)
        subjects = [s for cid in customer_ids for s in self.subjects(cid)]
        if not subjects:
            return 0
        gone = await conn.fetch(f"DELETE FROM {self.table} WHERE subject = ANY($1::text[]) RETURNING key_id", subjects)
        for row in gone:
            self._by_id.pop(row["key_id"], None)
        self.forget(customer_ids)
        return len(gone)

    async def count_of(self, customer_ids: Iterable[str]) -> int:
        """How many of these customers have a key (0 once every one was erased)."""
        subjects = [s for cid in customer_ids for s in self.subjects(cid)]
        async with self._pool().acquire() as conn:
            return await conn.fetchval(f"SELECT count(*) FROM {self.table} WHERE subject = ANY($1::text[])", subjects)

    def forget(self, customer_ids: Iterable[str]) -> None:
        """Drops these customers' keys from this process's memory (an erasure handled elsewhere)."""
        for cid in customer_ids:
            hit = self._by_customer.pop(cid, None)
            if hit is not None:
                self._by_id.pop(hit[0].id, None)

    # ------------------------------------------------------------------ internals

    async def _read(self, conn: asyncpg.Connection, column: str, values: list[str]) -> dict[str, tuple[DataKey, bool]]:
        """``{value: (key, written by this very transaction)}``."""
        rows = await conn.fetch(
            f"SELECT key_id, subject, wrapped, (xmin = xid(pg_current_xact_id_if_assigned())) IS TRUE AS mine"
            f" FROM {self.table} WHERE {column} = ANY($1::text[])", values)
        return {r[column]: (DataKey(r["key_id"], self._unwrap(r["key_id"], r["wrapped"])), r["mine"]) for r in rows}

    def _unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        try:
            return sealing.unseal_any(self._wrap, wrapped, key_id.encode())
        except InvalidTag:
            raise KeyUnreadable(f"data key {key_id} opens under none of VOUCHERSTREAM_DATA_KEY and "
                                "VOUCHERSTREAM_DATA_PREVIOUS_KEYS") from None

    def _fresh(self, key_id: str, now: float) -> bool:
        entry = self._by_id.get(key_id)
        return entry is not None and (entry[0] == GONE or now - entry[1] < self.ttl_s)


async def migrate(pool: asyncpg.Pool, settings: DataKeySettings) -> list[str]:
    """Creates or updates the key store's schema (every service calls it at start)."""
    return await db.migrate(pool, settings.keystore_schema, db.discover(("keystore", MIGRATIONS)))


async def grant(conn: asyncpg.Connection, settings: DataKeySettings, role: str) -> None:
    """Lets a service's runtime role (``db.grant_runtime_role``) use the key store: read, create
    and destroy keys — never rewrite one — and read the migration record."""
    q = f'"{db.check_schema(settings.keystore_schema)}"'
    await conn.execute(f'GRANT USAGE ON SCHEMA {q} TO "{db.check_role(role)}"')
    await conn.execute(f'GRANT SELECT, INSERT, DELETE ON {q}.data_keys TO "{role}"')
    await conn.execute(f'GRANT SELECT ON {q}.schema_migrations TO "{role}"')


@asynccontextmanager
async def reader(settings: DataKeySettings | None = None,
                 postgres: PostgresSettings | None = None) -> AsyncIterator[DataKeys]:
    """Data keys for a tool outside the services (a small pool of its own), from the environment's
    settings by default."""
    postgres = postgres or PostgresSettings()
    pool = await asyncpg.create_pool(postgres.dsn.get_secret_value(), min_size=1, max_size=2)
    try:
        yield DataKeys(settings or DataKeySettings(), lambda: pool)
    finally:
        await pool.close()
