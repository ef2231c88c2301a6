-- redeem_single_use_batch: single-use redemptions of one campaign in one call, each decided as if
-- it were written alone, in the order given (services/issuance/redemption_writer.py). This file is
-- its one definition; migrations 003 and 007-010 are its history.
-- - Each Idempotency-Key is inserted together with its answer, and deleted again if the ledger
--   refuses the redemption. An update of the answer afterwards was never HOT (the answer is in an
--   index's expression, migration 006) and left a dead row behind every redemption.
-- - Planned without sequential scans (enable_seqscan = off, migration 010): it reaches every row it
--   touches by key, and PL/pgSQL keeps a generic plan per statement costed with the tables as they
--   were at its fifth call.
CREATE OR REPLACE FUNCTION redeem_single_use_batch(
    p_campaign text, p_topic text, p_voucher text[], p_reserved bigint[], p_discount bigint[],
    p_redemption text[], p_customer text[], p_order text[], p_order_amount bigint[], p_currency text[],
    p_at timestamptz[], p_api_key text[], p_key text[], p_hash bytea[], p_response jsonb[], p_event text[],
    p_session text[])
RETURNS TABLE (outcome text, currency text, limit_minor bigint, reserved bigint, spent bigint, seq bigint,
               vouchers bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT SET enable_seqscan = off AS $$
DECLARE
    n         int := cardinality(p_voucher);
    decided   text[] := array_fill(NULL::text, ARRAY[n]);
    s_res     bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    s_spent   bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    s_seq     bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    l_ids     text[];
    l_res     bigint[];
    l_status  text[];
    l_held    text[];
    taken     text[] := '{}';
    claimed   text[];
    given     text[] := '{}';
    lg        budget_ledger%ROWTYPE;
    cand      int[];
    step_     record;
    k         int;
    pos       int;
    who       text;
    new_res   bigint;
    new_spent bigint;
    moved     boolean := false;
    refused   boolean := false;
BEGIN
    -- 1. The vouchers, locked; those no longer as read, or held by another checkout session
    --    (a LOCK not yet expired), are stale.
    SELECT coalesce(array_agg(x.id), '{}'), coalesce(array_agg(x.reserved), '{}'),
           coalesce(array_agg(x.status), '{}'), coalesce(array_agg(x.held), '{}')
      INTO l_ids, l_res, l_status, l_held
      FROM (SELECT v.id, v.reserved, v.status,
                   CASE WHEN v.session_expires_at > now() THEN v.session END AS held
              FROM vouchers v WHERE v.id = ANY (p_voucher) ORDER BY v.id FOR UPDATE) x;
    FOR k IN 1 .. n LOOP
        pos := array_position(l_ids, p_voucher[k]);
        IF pos IS NULL OR l_status[pos] <> 'active' OR l_res[pos] <> p_reserved[k] OR p_voucher[k] = ANY (taken)
           OR (l_held[pos] IS NOT NULL AND l_held[pos] IS DISTINCT FROM p_session[k]) THEN
            decided[k] := 'stale';
        ELSE
            taken := taken || p_voucher[k];
        END IF;
    END LOOP;

    -- 2. The Idempotency-Keys claimed, each with its answer: of a key given twice, the first item's,
    --    the one the loop below makes the candidate. A key another transaction holds is waited for.
    WITH ins AS (
        INSERT INTO idempotency_keys AS ik (api_key_id, key, request_hash, status_code, response)
        SELECT p_api_key[o], p_key[o], p_hash[o], 201, p_response[o] FROM generate_subscripts(p_voucher, 1) AS o
         WHERE decided[o] IS NULL ORDER BY p_api_key[o], p_key[o], o
        ON CONFLICT DO NOTHING RETURNING ik.api_key_id, ik.key)
    SELECT coalesce(array_agg(ins.api_key_id || ' ' || ins.key), '{}') INTO claimed FROM ins;
    FOR k IN 1 .. n LOOP
        CONTINUE WHEN decided[k] IS NOT NULL;
        who := p_api_key[k] || ' ' || p_key[k];
        IF who = ANY (claimed) AND NOT who = ANY (given) THEN
            given := given || who;
            decided[k] := 'candidate';
        ELSE
            decided[k] := 'key_used';
        END IF;
    END LOOP;

    -- 3. What does not depend on the ledger is written before its lock is taken (the lock is held
    --    until the commit, and serialises the campaign): voucher and redemption.
    UPDATE vouchers v SET status = 'redeemed', reserved = 0, closed_at = p_at[o]
      FROM generate_subscripts(p_voucher, 1) AS o WHERE decided[o] = 'candidate' AND v.id = p_voucher[o];
    INSERT INTO redemptions (id, voucher_id, campaign_id, customer_id, order_id, discount, reserved_used,
                             order_amount, currency, status, redeemed_at)
    SELECT p_redemption[o], p_voucher[o], p_campaign, p_customer[o], p_order[o], p_discount[o], p_reserved[o],
           p_order_amount[o], p_currency[o], 'redeemed', p_at[o]
      FROM generate_subscripts(p_voucher, 1) AS o WHERE decided[o] = 'candidate';

    -- 4. The ledger, step by step in the order given (budget_apply: the rule, the history).
    SELECT coalesce(array_agg(o ORDER BY o), '{}') INTO cand
      FROM generate_subscripts(p_voucher, 1) AS o WHERE decided[o] = 'candidate';
    FOR step_ IN SELECT * FROM budget_apply(
            array_fill(p_campaign, ARRAY[cardinality(cand)]), array_fill(0::bigint, ARRAY[cardinality(cand)]),
            ARRAY(SELECT -p_reserved[c] FROM unnest(cand) WITH ORDINALITY AS t(c, i) ORDER BY i),
            ARRAY(SELECT p_discount[c] FROM unnest(cand) WITH ORDINALITY AS t(c, i) ORDER BY i),
            array_fill(0::bigint, ARRAY[cardinality(cand)]), array_fill('redeemed'::text, ARRAY[cardinality(cand)]),
            ARRAY(SELECT p_voucher[c] FROM unnest(cand) WITH ORDINALITY AS t(c, i) ORDER BY i)) LOOP
        k := cand[step_.step];
        IF step_.applied THEN
            decided[k] := 'redeemed';
            s_res[k] := step_.reserved;
            s_spent[k] := step_.spent;
            s_seq[k] := step_.seq;
            lg.currency := step_.currency;
            lg.limit_minor := step_.limit_minor;
            lg.vouchers := step_.vouchers;
            moved := true;
        ELSE
            decided[k] := 'budget';
            refused := true;
        END IF;
    END LOOP;

    IF moved THEN
        INSERT INTO outbox (topic, key, value, traceparent)
        SELECT p_topic, convert_to(p_customer[o], 'UTF8'),
               convert_to(jsonb_set(p_event[o]::jsonb, '{data,ledger}', jsonb_build_object(
                   'currency', lg.currency, 'limit', lg.limit_minor, 'reserved', s_res[o], 'spent', s_spent[o],
                   'seq', s_seq[o]))::text, 'UTF8'), p_event[o]::jsonb ->> 'traceparent'
          FROM generate_subscripts(p_voucher, 1) AS o WHERE decided[o] = 'redeemed' ORDER BY o;
    END IF;
    IF refused THEN  -- steps 2 and 3 undone for what the ledger refused; the caller answers those keys
        UPDATE vouchers v SET status = 'active', reserved = p_reserved[o], closed_at = NULL
          FROM generate_subscripts(p_voucher, 1) AS o WHERE decided[o] = 'budget' AND v.id = p_voucher[o];
        DELETE FROM redemptions r USING generate_subscripts(p_voucher, 1) AS o
         WHERE decided[o] = 'budget' AND r.id = p_redemption[o];
        DELETE FROM idempotency_keys ik USING generate_subscripts(p_voucher, 1) AS o
         WHERE decided[o] = 'budget' AND ik.api_key_id = p_api_key[o] AND ik.key = p_key[o];
    END IF;

    RETURN QUERY SELECT decided[o], lg.currency, lg.limit_minor, s_res[o], s_spent[o], s_seq[o], lg.vouchers
                   FROM generate_subscripts(p_voucher, 1) AS o ORDER BY o;
END
$$;
