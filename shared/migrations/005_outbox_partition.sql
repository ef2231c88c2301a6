-- A record that belongs on one partition whatever its key hashes to (consent's per-partition
-- watermarks on consent-state). NULL: Kafka's murmur2 of the key, as before.
ALTER TABLE outbox ADD COLUMN partition integer CHECK (partition >= 0);
