-- The trace context of what caused an outbox row (shared/tracing.py): the relay publishes the
-- row inside it, so the send is a span of the same trace. The event's own envelope carries it too.
ALTER TABLE outbox ADD COLUMN traceparent text;
