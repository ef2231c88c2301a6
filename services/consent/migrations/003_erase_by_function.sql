-- The ledger's one sanctioned DELETE, an erasure, goes through this function, which runs with its
-- owner's rights (the role that migrates): the service's own role is granted only SELECT and
-- INSERT on the ledger (`voucherstream db grant`), so no UPDATE, DELETE or TRUNCATE of it is
-- possible with the service's credentials — by grant, not only by the trigger.
CREATE FUNCTION erase_consent_ledger(p_customer text) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM set_config('consent.erasure', 'on', true);
    RETURN QUERY DELETE FROM consent_ledger WHERE customer_id = p_customer RETURNING event_id;
    PERFORM set_config('consent.erasure', 'off', true);
END $$;
REVOKE ALL ON FUNCTION erase_consent_ledger(text) FROM PUBLIC;
-- Read by `voucherstream db grant` (shared/db.py): the service's role may only read and append.
COMMENT ON TABLE consent_ledger IS 'append-only: every consent decision, erased only by erase_consent_ledger()';
