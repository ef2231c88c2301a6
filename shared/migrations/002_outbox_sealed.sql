-- Rows whose value must not rest in plaintext (delivery requests carry voucher codes) are stored
-- sealed (AES-GCM, key in the service's settings) and opened by the relay as it publishes.
ALTER TABLE outbox ADD COLUMN sealed boolean NOT NULL DEFAULT false;
