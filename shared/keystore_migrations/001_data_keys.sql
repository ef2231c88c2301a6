-- One data key per customer, wrapped under VOUCHERSTREAM_DATA_KEY (shared/datakeys.py). The
-- subject is an HMAC of the customer's id, never the id itself; deleting the row is the erasure of
-- every copy of what was sealed with it.
CREATE TABLE data_keys (
    key_id      text        PRIMARY KEY,
    subject     text        NOT NULL UNIQUE,
    wrapped     bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
