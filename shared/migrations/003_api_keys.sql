-- API keys of this service's HTTP API, stored as SHA-256 hashes (a key is 256 random bits, so a
-- plain hash is enough); the key itself is shown once, when it is created.
CREATE TABLE api_keys (
    id          text        PRIMARY KEY,
    name        text        NOT NULL,
    key_hash    bytea       NOT NULL UNIQUE,
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
