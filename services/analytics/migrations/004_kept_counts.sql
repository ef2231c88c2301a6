-- The counts behind budget-counters, the gauges and the stats answer, kept as rows are stored
-- instead of recounted from the state tables at every reading: a recount reads all of a
-- campaign's vouchers, every interval, for every campaign (docs/architecture.md, "Analytics:
-- counts kept, not recounted"). The state tables stay: they make a redelivered event a no-op
-- (only new rows count) and let an ending meet what it ends, whichever is consumed first.
--
-- Triggers keep the counts, so they hold whoever stores the rows — an instance of an earlier
-- version still running while a rolling upgrade applies this migration included.
CREATE TABLE voucher_counts (
    campaign_id text   NOT NULL,
    variant     text   NOT NULL,
    channel     text   NOT NULL,
    state       text   NOT NULL,          -- issued, expired, revoked
    n           bigint NOT NULL,
    PRIMARY KEY (campaign_id, variant, channel, state)
);
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
CREATE TABLE denial_counts (
    campaign_id text   NOT NULL,
    reason      text   NOT NULL,
    variant     text,                     -- none when refused before a variant was drawn
    n           bigint NOT NULL,
    UNIQUE NULLS NOT DISTINCT (campaign_id, reason, variant)
);

-- A voucher and its ending (a redemption and its rollback) stored by two transactions at once
-- would each miss the other. Holding the campaign until commit makes the second wait, and its
-- next statement sees what the first stored. Taken in one order (bytewise, as the service sorts
-- them when it takes a batch's campaigns up front), so holders never wait on each other in a cycle.
CREATE FUNCTION lock_campaign_counts(schema_name text, campaigns text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    c text;
BEGIN
    FOR c IN SELECT DISTINCT x COLLATE "C" FROM unnest(campaigns) AS x ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(hashtext('analytics-counts:' || schema_name || ':' || c));
    END LOOP;
END $$;

-- A new voucher counts under its ending if that came first, else as issued.
CREATE FUNCTION count_new_vouchers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lock_campaign_counts(TG_TABLE_SCHEMA, ARRAY(SELECT campaign_id FROM new));
    INSERT INTO voucher_counts AS c
    SELECT n.campaign_id, n.variant, n.channel, coalesce(e.state, 'issued'), count(*)
    FROM new n LEFT JOIN voucher_endings e USING (voucher_id) GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (campaign_id, variant, channel, state) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

-- A new ending moves its voucher, if already stored, from issued to its state.
CREATE FUNCTION count_new_endings() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lock_campaign_counts(TG_TABLE_SCHEMA, ARRAY(SELECT campaign_id FROM new));
    INSERT INTO voucher_counts AS c
    SELECT campaign_id, variant, channel, state, sum(k) FROM (
        SELECT v.campaign_id, v.variant, v.channel, n.state, 1 AS k FROM new n JOIN voucher_states v USING (voucher_id)
        UNION ALL
        SELECT v.campaign_id, v.variant, v.channel, 'issued', -1 FROM new n JOIN voucher_states v USING (voucher_id)
    ) moved GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (campaign_id, variant, channel, state) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

-- A new redemption counts unless its rollback came first.
CREATE FUNCTION count_new_redemptions() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lock_campaign_counts(TG_TABLE_SCHEMA, ARRAY(SELECT campaign_id FROM new));
    INSERT INTO redemption_counts AS c
    SELECT campaign_id, variant, channel, count(*), sum(discount), sum(order_amount) FROM new n
    WHERE NOT EXISTS (SELECT 1 FROM redemption_rollbacks b WHERE b.redemption_id = n.redemption_id)
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, variant, channel) DO UPDATE
    SET n = c.n + excluded.n, discount = c.discount + excluded.discount, revenue = c.revenue + excluded.revenue;
    RETURN NULL;
END $$;

-- A new rollback takes its redemption, if already stored, out.
CREATE FUNCTION count_new_rollbacks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lock_campaign_counts(TG_TABLE_SCHEMA, ARRAY(SELECT campaign_id FROM new));
    INSERT INTO redemption_counts AS c
    SELECT r.campaign_id, r.variant, r.channel, -count(*), -sum(r.discount), -sum(r.order_amount)
    FROM new n JOIN redemption_states r USING (redemption_id) GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, variant, channel) DO UPDATE
    SET n = c.n + excluded.n, discount = c.discount + excluded.discount, revenue = c.revenue + excluded.revenue;
    RETURN NULL;
END $$;

CREATE FUNCTION count_new_denials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO denial_counts AS c
    SELECT campaign_id, reason, variant, count(*) FROM new GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, reason, variant) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

-- Statement triggers: once per insert, over the rows it really inserted (a duplicate skipped by
-- ON CONFLICT DO NOTHING is not in "new").
CREATE TRIGGER counted AFTER INSERT ON voucher_states REFERENCING NEW TABLE AS new
    FOR EACH STATEMENT EXECUTE FUNCTION count_new_vouchers();
CREATE TRIGGER counted AFTER INSERT ON voucher_endings REFERENCING NEW TABLE AS new
    FOR EACH STATEMENT EXECUTE FUNCTION count_new_endings();
CREATE TRIGGER counted AFTER INSERT ON redemption_states REFERENCING NEW TABLE AS new
    FOR EACH STATEMENT EXECUTE FUNCTION count_new_redemptions();
CREATE TRIGGER counted AFTER INSERT ON redemption_rollbacks REFERENCING NEW TABLE AS new
    FOR EACH STATEMENT EXECUTE FUNCTION count_new_rollbacks();
CREATE TRIGGER counted AFTER INSERT ON denials REFERENCING NEW TABLE AS new
    FOR EACH STATEMENT EXECUTE FUNCTION count_new_denials();

-- What is already stored, counted once. Creating the triggers locked the state tables against
-- inserts until this migration commits, so every row is counted either here or by a trigger.
INSERT INTO voucher_counts
SELECT v.campaign_id, v.variant, v.channel, coalesce(e.state, 'issued'), count(*)
FROM voucher_states v LEFT JOIN voucher_endings e USING (voucher_id) GROUP BY 1, 2, 3, 4;
INSERT INTO redemption_counts
SELECT campaign_id, variant, channel, count(*), sum(discount), sum(order_amount) FROM redemption_states r
WHERE NOT EXISTS (SELECT 1 FROM redemption_rollbacks b WHERE b.redemption_id = r.redemption_id) GROUP BY 1, 2, 3;
INSERT INTO denial_counts SELECT campaign_id, reason, variant, count(*) FROM denials GROUP BY 1, 2, 3;

-- Only the recount read these.
DROP INDEX voucher_states_campaign;
DROP INDEX redemption_states_campaign;
DROP INDEX denials_campaign;
