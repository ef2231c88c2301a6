-- NOTIFY serialises the commits of every notifying transaction on one queue lock (PostgreSQL
-- holds it through the commit's WAL flush), which capped writers at one commit per flush. The
-- relay polls instead (adaptive: every few milliseconds while there is traffic).
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
