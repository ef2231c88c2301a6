-- Erasure guards compare receipt order, never a time the sender chose (docs/privacy.md):
-- a Kafka decision below the log end of the customer's consent-changed partition at the
-- erasure was published before it; an erased customer's recorded decisions stay recognisable by
-- a keyed hash of their event ids, so re-publishing them brings nobody back.
ALTER TABLE erasure_proofs ADD COLUMN changed_offset bigint;  -- log end of consent-changed then
CREATE TABLE erased_events (
    event_hash  text        PRIMARY KEY,                        -- HMAC of the event id
    request_id  text        NOT NULL REFERENCES erasure_proofs (request_id) ON DELETE CASCADE
);
