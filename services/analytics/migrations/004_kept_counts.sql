-- The counts behind budget-counters, the gauges and the stats answer, kept per consumed batch
-- instead of recounted from the state tables at every publication: a recount reads all of a
-- campaign's vouchers, every interval, for every campaign (docs/architecture.md, "Analytics:
-- counts kept, not recounted"). The state tables stay: they make a redelivered event a no-op and
-- let an ending meet what it ends, whichever is consumed first.
CREATE TABLE voucher_counts (
    campaign_id text   NOT NULL,
    variant     text   NOT NULL,
    channel     text   NOT NULL,
    state       text   NOT NULL,          -- issued, expired, revoked
    n           bigint NOT NULL,
    PRIMARY KEY (campaign_id, variant, channel, state)
);
INSERT INTO voucher_counts
SELECT v.campaign_id, v.variant, v.channel, coalesce(e.state, 'issued'), count(*)
FROM voucher_states v LEFT JOIN voucher_endings e USING (voucher_id) GROUP BY 1, 2, 3, 4;

-- Redemptions not rolled back, with the discount granted and the orders' revenue.
CREATE TABLE redemption_counts (
    campaign_id text   NOT NULL,
    variant     text   NOT NULL,
    channel     text   NOT NULL,
    n           bigint NOT NULL,
    discount    bigint NOT NULL,
    revenue     bigint NOT NULL,
    PRIMARY KEY (campaign_id, variant, channel)
);
INSERT INTO redemption_counts
SELECT campaign_id, variant, channel, count(*), sum(discount), sum(order_amount) FROM redemption_states r
WHERE NOT EXISTS (SELECT 1 FROM redemption_rollbacks b WHERE b.redemption_id = r.redemption_id) GROUP BY 1, 2, 3;

CREATE TABLE denial_counts (
    campaign_id text   NOT NULL,
    reason      text   NOT NULL,
    variant     text,                     -- none when refused before a variant was drawn
    n           bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (campaign_id, reason, variant)
);
INSERT INTO denial_counts SELECT campaign_id, reason, variant, count(*) FROM denials GROUP BY 1, 2, 3;

-- Only the recount read these.
DROP INDEX voucher_states_campaign;
DROP INDEX redemption_states_campaign;
DROP INDEX denials_campaign;
