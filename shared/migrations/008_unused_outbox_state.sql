-- processed_events was never used (every handler is idempotent on its own business keys).
-- outbox.sent_at was never set: the relay deletes a row once the broker has it. No code reads it
-- any more; the column goes in a later release, once no running version of a service names it.
DROP TABLE processed_events;
DROP INDEX outbox_unsent;
