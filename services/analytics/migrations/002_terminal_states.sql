-- A rollback, an expiry or a revocation can be consumed before the event it ends (they travel on
-- other topics, and Kafka orders a partition, not two topics). Updating the earlier row in place
-- lost such an ending for good: the late redemption was then inserted as live. Endings now have
-- their own tables, written whether or not the start has arrived, and the counts join them.
CREATE TABLE redemption_rollbacks (
    redemption_id text PRIMARY KEY,
    campaign_id   text NOT NULL
);
INSERT INTO redemption_rollbacks SELECT redemption_id, campaign_id FROM redemption_states WHERE rolled_back;
ALTER TABLE redemption_states DROP COLUMN rolled_back;

CREATE TABLE voucher_endings (
    voucher_id  text PRIMARY KEY,
    campaign_id text NOT NULL,
    state       text NOT NULL             -- expired, revoked
);
INSERT INTO voucher_endings SELECT voucher_id, campaign_id, state FROM voucher_states WHERE state <> 'issued';
ALTER TABLE voucher_states DROP COLUMN state;

-- Counts change without the ledger's seq changing (a denial, an ending consumed after the
-- ledger snapshot that came with it): every change bumps version, and counters are published
-- while version differs from what was last published.
ALTER TABLE ledgers ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE ledgers ADD COLUMN published_version bigint NOT NULL DEFAULT -1;
ALTER TABLE ledgers DROP COLUMN published_seq;
