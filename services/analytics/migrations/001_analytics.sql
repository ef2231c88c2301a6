-- Counters that reconcile with the issuance ledger: ledger figures are the snapshot with the
-- highest sequence number seen (a replayed or late event never moves them back); counts are
-- derived from per-voucher and per-redemption state, so a duplicate event changes nothing.
CREATE TABLE campaigns (
    campaign_id  text PRIMARY KEY,
    name         text,
    status       text,
    currency     text,
    holdout_percent int NOT NULL DEFAULT 0,
    updated_at   timestamptz
);
CREATE TABLE ledgers (
    campaign_id  text PRIMARY KEY,
    currency     text   NOT NULL,
    limit_minor  bigint NOT NULL,
    reserved     bigint NOT NULL,
    spent        bigint NOT NULL,
    seq          bigint NOT NULL,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    published_seq bigint NOT NULL DEFAULT -1
);
CREATE TABLE voucher_states (
    voucher_id   text PRIMARY KEY,
    campaign_id  text NOT NULL,
    variant      text NOT NULL,
    channel      text NOT NULL,
    state        text NOT NULL,           -- issued, expired, revoked
    max_discount bigint NOT NULL,
    issued_at    timestamptz NOT NULL
);
CREATE INDEX voucher_states_campaign ON voucher_states (campaign_id, variant, channel);
CREATE TABLE redemption_states (
    redemption_id text PRIMARY KEY,
    voucher_id    text NOT NULL,
    campaign_id   text NOT NULL,
    variant       text NOT NULL,
    channel       text NOT NULL,
    discount      bigint NOT NULL,
    order_amount  bigint NOT NULL,
    rolled_back   boolean NOT NULL DEFAULT false,
    redeemed_at   timestamptz NOT NULL
);
CREATE INDEX redemption_states_campaign ON redemption_states (campaign_id, variant, channel);
CREATE TABLE denials (
    event_id     text PRIMARY KEY,
    campaign_id  text NOT NULL,
    variant      text,
    reason       text NOT NULL
);
CREATE INDEX denials_campaign ON denials (campaign_id, reason);
-- Burn-rate samples (spent + reserved over time) and thresholds already announced.
CREATE TABLE ledger_samples (
    campaign_id text NOT NULL,
    at          timestamptz NOT NULL,
    used        bigint NOT NULL,
    PRIMARY KEY (campaign_id, at)
);
CREATE TABLE thresholds_crossed (
    campaign_id text NOT NULL,
    percent     int  NOT NULL,
    crossed_at  timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, percent)
);
