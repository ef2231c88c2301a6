-- redeem_single_use_batch reaches every row it touches by key (vouchers by id, the Idempotency-
-- Keys by primary key, the ledger by campaign), so it is planned without sequential scans.
-- Migration 009 assumed a primary-key probe is planned as one whatever the table's size is
-- believed to be; it is not. PL/pgSQL keeps a generic plan per statement after five calls,
-- costed with the statistics of that moment: analysed while idempotency_keys held a page or two,
-- a sequential scan is the cheaper plan, and the session keeps it as the table grows to tens of
-- thousands of keys, until the table is analysed again — one scan per redemption, inside the
-- campaign's serialised write (docs/benchmarks.md, "Beside the stack, the probe again";
-- tests/integration/issuance/test_redemption_writer.py).
-- A later CREATE OR REPLACE of the function must keep this setting.
ALTER FUNCTION redeem_single_use_batch(text, text, text[], bigint[], bigint[], text[], text[], text[], bigint[],
                                       text[], timestamptz[], text[], text[], bytea[], jsonb[], text[], text[])
    SET enable_seqscan = off;
