-- The trace context of the event that brought a campaign's newest ledger snapshot: the
-- budget-counters and thresholds it leads to continue that trace (shared/tracing.py).
ALTER TABLE ledgers ADD COLUMN traceparent text;
