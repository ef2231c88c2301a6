-- Segmentation's state: a row per customer with profiling consent (nothing at all without it),
-- and, per input partition, the next offset to apply. Both are written in the transaction that
-- applies a batch, so a redelivered or replayed message (offset below next_offset) changes nothing.
CREATE TABLE customers (
    customer_id     text PRIMARY KEY,
    partition       int         NOT NULL,  -- Kafka's murmur2 partition of the customer id
    profiling_since text        NOT NULL,  -- when profiling consent was given (ISO-8601, as published)
    profile         jsonb,                 -- NULL until the first event after the consent
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customers_by_partition ON customers (partition) WHERE profile IS NOT NULL;

CREATE TABLE consumed_offsets (
    topic        text   NOT NULL,  -- registry name
    partition    int    NOT NULL,
    next_offset  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
