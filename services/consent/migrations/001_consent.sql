-- The consent ledger: append-only proof of every decision. The current state is derived from it
-- (latest decision per purpose by event time), never stored or edited in place.
CREATE TABLE consent_ledger (
    id             bigserial   PRIMARY KEY,
    event_id       text        NOT NULL UNIQUE,      -- idempotency: a redelivered event adds nothing
    customer_id    text        NOT NULL,
    purpose        text        NOT NULL,
    granted        boolean     NOT NULL,
    policy_version text        NOT NULL,
    source         text        NOT NULL,             -- where the customer decided (cookie-banner ...)
    occurred_at    timestamptz NOT NULL,             -- event time: when the customer decided
    received_at    timestamptz NOT NULL,             -- receipt time: when we learnt it
    via            text        NOT NULL CHECK (via IN ('kafka', 'http'))
);
CREATE INDEX consent_ledger_current ON consent_ledger (customer_id, purpose, occurred_at DESC, id DESC);

-- Append-only: no UPDATE ever; DELETE only inside an erasure (SET LOCAL consent.erasure = 'on').
CREATE FUNCTION consent_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('consent.erasure', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'consent_ledger is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER consent_ledger_append_only BEFORE UPDATE OR DELETE ON consent_ledger
    FOR EACH ROW EXECUTE FUNCTION consent_ledger_append_only();

-- Privacy requests (access/portability exports and erasures) and each service's answer.
-- They name the customer only by a keyed hash (HMAC), never by id.
CREATE TABLE privacy_requests (
    id            text        PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('export', 'erasure')),
    subject_hash  text        NOT NULL,
    customer_id   text,                              -- exports only, to title the bundle; purged with it
    expected      text[]      NOT NULL,              -- services that must answer (configuration)
    requested_at  timestamptz NOT NULL,
    completed_at  timestamptz
);
CREATE INDEX privacy_requests_pending ON privacy_requests (kind, requested_at) WHERE completed_at IS NULL;
CREATE INDEX privacy_requests_subject ON privacy_requests (subject_hash);

CREATE TABLE privacy_request_parts (
    request_id    text        NOT NULL REFERENCES privacy_requests (id) ON DELETE CASCADE,
    service       text        NOT NULL,
    completed_at  timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    detail        jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- erasure: rows per table; export: the data
    PRIMARY KEY (request_id, service)
);

-- What is left of an erased customer: proof that the erasure happened, and when.
CREATE TABLE erasure_proofs (
    request_id    text        PRIMARY KEY,
    subject_hash  text        NOT NULL,
    requested_at  timestamptz NOT NULL,
    completed_at  timestamptz
);
CREATE INDEX erasure_proofs_subject ON erasure_proofs (subject_hash, requested_at DESC);
