-- Failure limits of the checkout API (services/issuance/ratelimit.py): one token bucket per
-- subject — an API key with a customer id, or with the shopper the shop names — shared by every
-- worker and instance. A request takes a token from each of its subjects before it is answered
-- and gives them back if it did not fail, so concurrent guesses cannot overdraw a bucket.
-- A row exists only while its bucket is not full.
CREATE UNLOGGED TABLE failure_buckets (
    subject     text             PRIMARY KEY,
    tokens      double precision NOT NULL CHECK (tokens >= 0),
    updated_at  timestamptz      NOT NULL
);

-- The bucket rule, once: refilled at p_rate tokens a second up to p_burst.
CREATE FUNCTION refilled(p_tokens double precision, p_since timestamptz, p_rate double precision,
                         p_burst double precision) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT least(p_burst, p_tokens + greatest(0, extract(epoch FROM statement_timestamp() - p_since)) * p_rate)
$$;

-- Takes a token from each bucket of p_take (a subject may repeat) and gives one back to each of
-- p_return. Answers, for each take, 0 if it got a token, else the seconds until one is. Rows are
-- visited in one sorted pass (give-backs first within a subject), so concurrent calls never
-- deadlock. An honest request writes two row versions: its take inserts the bucket, its give-back
-- deletes it (a full bucket is no row). The buckets are counters whose last changes may be lost in
-- a database crash (a guesser gets a few attempts back), so the transaction's commit does not wait
-- for the WAL flush: otherwise every checkout request would wait for one more.
CREATE FUNCTION settle_attempts(p_take text[], p_return text[], p_rate double precision,
                                p_burst double precision)
RETURNS integer[] LANGUAGE plpgsql AS $$
DECLARE
    waits integer[] := array_fill(0, ARRAY[coalesce(array_length(p_take, 1), 0)]);
    item record;
    left_ double precision;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOR item IN SELECT subject, o, taking FROM (
            SELECT subject, o, true AS taking FROM unnest(p_take) WITH ORDINALITY AS t(subject, o)
            UNION ALL SELECT subject, o, false FROM unnest(p_return) WITH ORDINALITY AS r(subject, o)) u
        ORDER BY subject, taking, o LOOP
        IF NOT item.taking THEN
            DELETE FROM failure_buckets b
             WHERE b.subject = item.subject AND refilled(b.tokens, b.updated_at, p_rate, p_burst) + 1 >= p_burst;
            IF NOT FOUND THEN
                UPDATE failure_buckets b SET tokens = refilled(b.tokens, b.updated_at, p_rate, p_burst) + 1,
                                             updated_at = statement_timestamp()
                 WHERE b.subject = item.subject;
            END IF;
            CONTINUE;
        END IF;
        LOOP
            INSERT INTO failure_buckets (subject, tokens, updated_at)  -- usually: no bucket, no recent failure
            VALUES (item.subject, p_burst - 1, statement_timestamp()) ON CONFLICT (subject) DO NOTHING;
            EXIT WHEN FOUND;
            UPDATE failure_buckets b SET tokens = refilled(b.tokens, b.updated_at, p_rate, p_burst) - 1,
                                         updated_at = statement_timestamp()
             WHERE b.subject = item.subject AND refilled(b.tokens, b.updated_at, p_rate, p_burst) >= 1;
            EXIT WHEN FOUND;
            SELECT refilled(b.tokens, b.updated_at, p_rate, p_burst) INTO left_ FROM failure_buckets b
             WHERE b.subject = item.subject FOR UPDATE;
            IF FOUND AND left_ < 1 THEN
                waits[item.o] := greatest(1, ceil((1 - left_) / p_rate))::integer;
                EXIT;
            END IF;  -- else the bucket was refilled or removed meanwhile: try again
        END LOOP;
    END LOOP;
    RETURN waits;
END $$;

-- Buckets (of subjects starting with p_prefix) that refilled on their own since they were last taken from.
CREATE FUNCTION forget_full_buckets(p_prefix text, p_rate double precision, p_burst double precision)
RETURNS integer LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM failure_buckets b
                   WHERE left(b.subject, length(p_prefix)) = p_prefix
                     AND refilled(b.tokens, b.updated_at, p_rate, p_burst) >= p_burst
                  RETURNING 1)
    SELECT count(*)::integer FROM gone
$$;
