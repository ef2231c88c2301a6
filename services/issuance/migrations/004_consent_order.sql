-- Consent before triggers (services/issuance/ordering.py, docs/privacy.md).

-- Per customer partition: how far consent applied consent-changed (its latest watermark) and how
-- far this service applied consent-state. Written in the transaction that applies them.
CREATE TABLE consent_marks (
    partition       integer PRIMARY KEY CHECK (partition >= 0),
    changed_offset  bigint  NOT NULL DEFAULT 0,
    state_offset    bigint  NOT NULL DEFAULT 0
);

-- Segment entries waiting for consent to catch up with their marks (usually none; at most
-- ISSUANCE_CONSENT_HOLD_MAX_S each). One per (customer, segment, trigger).
CREATE TABLE held_triggers (
    customer_id     text        NOT NULL,
    segment         text        NOT NULL,
    trigger_key     text        NOT NULL,
    partition       integer     NOT NULL,
    changed_offset  bigint      NOT NULL,
    state_offset    bigint      NOT NULL,
    event           jsonb       NOT NULL,   -- the segment-entered data
    entered_ms      bigint      NOT NULL,   -- its record's timestamp (latency metrics)
    held_at         timestamptz NOT NULL,
    PRIMARY KEY (customer_id, segment, trigger_key)
);
CREATE INDEX held_triggers_partition ON held_triggers (partition, changed_offset, state_offset);
CREATE INDEX held_triggers_age ON held_triggers (held_at);

-- Erased customers, by keyed hash only: later events for them are dropped (a stale consent-state,
-- a trigger without a consent given after the erasure).
CREATE TABLE erased_customers (
    subject_hash  text        PRIMARY KEY,
    erased_at     timestamptz NOT NULL     -- the consent service's time of the request
);
