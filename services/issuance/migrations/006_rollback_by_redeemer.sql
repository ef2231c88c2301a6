-- A redemption is rolled back only with the API key that redeemed it: the key is found through
-- the answer it was given (every redemption's Idempotency-Key holds its redemption id).
CREATE INDEX idempotency_keys_redemption ON idempotency_keys ((response ->> 'redemption_id'))
    WHERE status_code = 201;
