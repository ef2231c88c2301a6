-- Keys expire (NULL: never); the one 'privacy' scope is split into recording consent
-- ('consent:write') and administering privacy requests ('privacy:admin'), so a key that had it
-- keeps both.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
UPDATE api_keys SET scopes = array(SELECT DISTINCT unnest(array_remove(scopes, 'privacy') ||
                                                          ARRAY['consent:write', 'privacy:admin']))
 WHERE 'privacy' = ANY(scopes);
