-- Exports never travel on Kafka readable (shared/exports.py): each request has a key pair whose
-- public half goes out with export-requested and whose private half is kept here, sealed under a
-- key from the settings, until the bundle is delivered or CONSENT_EXPORT_RETENTION_DAYS pass —
-- then it is deleted, and every copy of the parts in the log is unreadable. The parts are kept
-- sealed too (detail_sealed); the bundle is handed out once.
ALTER TABLE privacy_requests ADD COLUMN recipient_private_sealed bytea,
                             ADD COLUMN delivered_at timestamptz;
ALTER TABLE privacy_request_parts ADD COLUMN detail_sealed bytea;
