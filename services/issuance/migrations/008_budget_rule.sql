-- The budget rule, written once: a ledger may stand at (limit, reserved, spent) only if reserved
-- and spent are not negative and together stay within the limit. The table's CHECK, the single
-- conditional step (budget_move) and the batch of steps (budget_apply) all ask this function; every
-- writer moves a ledger through one of the two (services/issuance/budget.py is the model the
-- property-based test holds them to).
CREATE FUNCTION budget_allows(p_limit bigint, p_reserved bigint, p_spent bigint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN p_reserved >= 0 AND p_spent >= 0 AND p_reserved + p_spent <= p_limit;

ALTER TABLE budget_ledger
    DROP CONSTRAINT budget_never_exceeded,
    DROP CONSTRAINT budget_ledger_limit_minor_check,
    DROP CONSTRAINT budget_ledger_reserved_check,
    DROP CONSTRAINT budget_ledger_spent_check,
    ADD CONSTRAINT budget_never_exceeded CHECK (budget_allows(limit_minor, reserved, spent));

-- One conditional step and its history row, in one statement (the checkout's rollbacks, holds and
-- gift cards): the campaign's hot row is locked from here to the commit only. No row comes back,
-- and nothing changes, when the rule refuses the step.
CREATE FUNCTION budget_move(p_campaign text, p_d_reserved bigint, p_d_spent bigint, p_cause text, p_voucher text)
RETURNS SETOF budget_ledger
LANGUAGE sql SET search_path FROM CURRENT AS $$
    WITH l AS (UPDATE budget_ledger SET reserved = reserved + p_d_reserved, spent = spent + p_d_spent, seq = seq + 1
                WHERE campaign_id = p_campaign AND budget_allows(limit_minor, reserved + p_d_reserved, spent + p_d_spent)
                RETURNING *),
         h AS (INSERT INTO budget_ledger_history (campaign_id, seq, limit_minor, reserved, spent, cause, voucher_id)
               SELECT campaign_id, seq, limit_minor, reserved, spent, p_cause, p_voucher FROM l)
    SELECT * FROM l
$$;

-- Steps in the order given, over any campaigns (issuing, expiry, revocation, a limit change, a
-- batch of redemptions): the ledgers are locked in id order, each step is applied if the rule
-- allows it and skipped if not, every applied step gets its history row, and each ledger is
-- written once. Returns each step: applied or not, and the ledger right after it.
CREATE FUNCTION budget_apply(p_campaign text[], p_d_limit bigint[], p_d_reserved bigint[], p_d_spent bigint[],
                             p_d_vouchers bigint[], p_cause text[], p_voucher text[])
RETURNS TABLE (step int, applied boolean, campaign_id text, currency text, limit_minor bigint, reserved bigint,
               spent bigint, seq bigint, vouchers bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n    int := coalesce(cardinality(p_campaign), 0);
    ids  text[];
    lgs  budget_ledger[];
    lg   budget_ledger;
    pos  int;
    ok   boolean[] := array_fill(false, ARRAY[n]);
    s    budget_ledger[] := array_fill(NULL::budget_ledger, ARRAY[n]);
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    SELECT coalesce(array_agg((x.l).campaign_id ORDER BY (x.l).campaign_id), '{}'),
           coalesce(array_agg(x.l ORDER BY (x.l).campaign_id), '{}')
      INTO ids, lgs
      FROM (SELECT b AS l FROM budget_ledger b WHERE b.campaign_id = ANY (p_campaign)
             ORDER BY b.campaign_id FOR UPDATE) x;
    FOR k IN 1 .. n LOOP
        pos := array_position(ids, p_campaign[k]);
        CONTINUE WHEN pos IS NULL;
        lg := lgs[pos];
        CONTINUE WHEN NOT budget_allows(lg.limit_minor + p_d_limit[k], lg.reserved + p_d_reserved[k],
                                        lg.spent + p_d_spent[k]);
        lg.limit_minor := lg.limit_minor + p_d_limit[k];
        lg.reserved := lg.reserved + p_d_reserved[k];
        lg.spent := lg.spent + p_d_spent[k];
        lg.vouchers := lg.vouchers + p_d_vouchers[k];
        lg.seq := lg.seq + 1;
        lgs[pos] := lg;
        ok[k] := true;
        s[k] := lg;
    END LOOP;
    UPDATE budget_ledger b SET limit_minor = x.limit_minor, reserved = x.reserved, spent = x.spent, seq = x.seq,
                               vouchers = x.vouchers
      FROM unnest(lgs) x WHERE b.campaign_id = x.campaign_id AND b.seq <> x.seq;
    INSERT INTO budget_ledger_history (campaign_id, seq, limit_minor, reserved, spent, cause, voucher_id)
    SELECT (s[k]).campaign_id, (s[k]).seq, (s[k]).limit_minor, (s[k]).reserved, (s[k]).spent, p_cause[k], p_voucher[k]
      FROM generate_subscripts(p_campaign, 1) AS k WHERE ok[k] ORDER BY k;
    RETURN QUERY SELECT k, ok[k], p_campaign[k], (s[k]).currency, (s[k]).limit_minor, (s[k]).reserved, (s[k]).spent,
                        (s[k]).seq, (s[k]).vouchers
                   FROM generate_subscripts(p_campaign, 1) AS k ORDER BY k;
END
$$;

-- redeem_single_use_batch (migrations 003, 007) with its ledger step through budget_apply: the
-- redemptions of a batch are steps like any other, checked by the one rule. Its outbox rows keep
-- the request's trace context (shared migration 007), which the event's envelope carries.
CREATE OR REPLACE FUNCTION redeem_single_use_batch(
    p_campaign text, p_topic text, p_voucher text[], p_reserved bigint[], p_discount bigint[],
    p_redemption text[], p_customer text[], p_order text[], p_order_amount bigint[], p_currency text[],
    p_at timestamptz[], p_api_key text[], p_key text[], p_hash bytea[], p_response jsonb[], p_event text[],
    p_session text[])
RETURNS TABLE (outcome text, currency text, limit_minor bigint, reserved bigint, spent bigint, seq bigint,
               vouchers bigint)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
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

    -- 2. The Idempotency-Keys claimed (a key another transaction holds is waited for).
    WITH ins AS (
        INSERT INTO idempotency_keys AS ik (api_key_id, key, request_hash)
        SELECT p_api_key[o], p_key[o], p_hash[o] FROM generate_subscripts(p_voucher, 1) AS o
         WHERE decided[o] IS NULL ORDER BY p_api_key[o], p_key[o]
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
    --    until the commit, and serialises the campaign): voucher, redemption, the key's answer.
    UPDATE vouchers v SET status = 'redeemed', reserved = 0, closed_at = p_at[o]
      FROM generate_subscripts(p_voucher, 1) AS o WHERE decided[o] = 'candidate' AND v.id = p_voucher[o];
    INSERT INTO redemptions (id, voucher_id, campaign_id, customer_id, order_id, discount, reserved_used,
                             order_amount, currency, status, redeemed_at)
    SELECT p_redemption[o], p_voucher[o], p_campaign, p_customer[o], p_order[o], p_discount[o], p_reserved[o],
           p_order_amount[o], p_currency[o], 'redeemed', p_at[o]
      FROM generate_subscripts(p_voucher, 1) AS o WHERE decided[o] = 'candidate';
    UPDATE idempotency_keys ik SET status_code = 201, response = p_response[o]
      FROM generate_subscripts(p_voucher, 1) AS o
     WHERE decided[o] = 'candidate' AND ik.api_key_id = p_api_key[o] AND ik.key = p_key[o];

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
    IF refused THEN  -- step 3 undone for what the ledger refused; the caller answers those keys
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
