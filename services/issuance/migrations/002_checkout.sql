-- Redemptions: what each one spent, so a rollback returns exactly that.
CREATE TABLE redemptions (
    id             text        PRIMARY KEY,
    voucher_id     text        NOT NULL REFERENCES vouchers (id),
    campaign_id    text        NOT NULL,
    customer_id    text        NOT NULL,
    order_id       text,
    discount       bigint      NOT NULL CHECK (discount > 0),
    reserved_used  bigint      NOT NULL CHECK (reserved_used >= 0),  -- the reservation it consumed
    order_amount   bigint      NOT NULL,
    currency       text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('redeemed', 'rolled_back')),
    redeemed_at    timestamptz NOT NULL,
    rolled_back_at timestamptz
);
CREATE INDEX redemptions_voucher ON redemptions (voucher_id);
CREATE INDEX redemptions_customer ON redemptions (customer_id);

-- Idempotency of POST /v1/redemptions: the first answer per (API key, Idempotency-Key).
CREATE TABLE idempotency_keys (
    api_key_id    text        NOT NULL,
    key           text        NOT NULL,
    request_hash  bytea       NOT NULL,
    status_code   int,
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key_id, key)
);
