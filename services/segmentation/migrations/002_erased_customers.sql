-- Erased customers, by keyed hash only (SEGMENTATION_PSEUDONYM_KEY): a consent-state the consent
-- service wrote before the erasure (a replay, a stale copy) is dropped instead of bringing the
-- customer back. A state written after it is a returning customer's.
CREATE TABLE erased_customers (
    subject_hash  text        PRIMARY KEY,
    erased_at     timestamptz NOT NULL     -- the consent service's time of the request
);
