-- Campaigns as the marketer defined them (validated JSON) plus the columns we query by.
CREATE TABLE campaigns (
    id          text        PRIMARY KEY,
    segment     text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('active', 'paused', 'ended')),
    definition  jsonb       NOT NULL,
    version     int         NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaigns_active_by_segment ON campaigns (segment) WHERE status = 'active';

-- The budget ledger. The CHECK is the invariant itself: no code path can overrun a budget.
CREATE TABLE budget_ledger (
    campaign_id  text   PRIMARY KEY REFERENCES campaigns (id),
    currency     text   NOT NULL,
    limit_minor  bigint NOT NULL CHECK (limit_minor >= 0),
    reserved     bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    spent        bigint NOT NULL DEFAULT 0 CHECK (spent >= 0),
    seq          bigint NOT NULL DEFAULT 0,
    vouchers     bigint NOT NULL DEFAULT 0,
    CONSTRAINT budget_never_exceeded CHECK (reserved + spent <= limit_minor)
);

-- Every ledger change, in order: what downstream counters reconcile against.
CREATE TABLE budget_ledger_history (
    campaign_id  text        NOT NULL,
    seq          bigint      NOT NULL,
    limit_minor  bigint      NOT NULL,
    reserved     bigint      NOT NULL,
    spent        bigint      NOT NULL,
    cause        text        NOT NULL,   -- issued, redeemed, rolled_back, expired, revoked, limit_changed
    voucher_id   text,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (campaign_id, seq)
);

-- What the issuance service knows of each customer's consent (from consent-state).
CREATE TABLE customer_consent (
    customer_id          text        PRIMARY KEY,
    personalized_offers  boolean     NOT NULL,
    channels             text[]      NOT NULL,
    updated_at           timestamptz NOT NULL
);

-- One decision per (campaign, customer, trigger): the idempotency key of issuing.
CREATE TABLE issuance_attempts (
    campaign_id  text        NOT NULL,
    customer_id  text        NOT NULL,
    trigger_key  text        NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('issued', 'denied')),
    reason       text,
    variant      text,
    voucher_id   text,
    decided_at   timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, customer_id, trigger_key)
);

-- Vouchers. The code is stored only as an HMAC; customer_id is NULL for partner codes.
CREATE TABLE vouchers (
    id            text        PRIMARY KEY,
    campaign_id   text        NOT NULL REFERENCES campaigns (id),
    customer_id   text,
    partner       text,
    code_hash     bytea       NOT NULL UNIQUE,
    code_sealed   bytea,                                       -- on-site vouchers only: AES-GCM under a key kept outside the database
    variant       text        NOT NULL,
    channel       text        NOT NULL,                        -- email, sms, push, onsite, or partner
    kind          text        NOT NULL,
    brand         text,                                        -- a personal restriction (favourite brand)
    currency      text        NOT NULL,
    reserved      bigint      NOT NULL CHECK (reserved >= 0),   -- what this voucher holds of the budget now
    balance       bigint,                                      -- gift cards: what is left to spend
    status        text        NOT NULL CHECK (status IN ('active', 'redeemed', 'expired', 'revoked')),
    trigger_key   text,
    issued_at     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    closed_at     timestamptz
);
CREATE INDEX vouchers_customer ON vouchers (customer_id, campaign_id);
CREATE INDEX vouchers_expiring ON vouchers (expires_at) WHERE status = 'active';
