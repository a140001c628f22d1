-- Statements run once at start.

-- name: setting_upsert
-- Record a value the database's own checks need (max_range_days, timezone).
INSERT INTO datesync.setting (key, value) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value WHERE datesync.setting.value <> EXCLUDED.value;

-- name: source_register
-- Register a configured source so that batches (API or psql) may name it.
INSERT INTO datesync.source (name, handler) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET handler = EXCLUDED.handler, updated_at = now()
WHERE datesync.source.handler <> EXCLUDED.handler;

-- name: source_list
-- Known sources.
SELECT name, handler FROM datesync.source ORDER BY name;

-- name: dependency_forget
-- Forget the upstream sources of the given sources (before registering them anew, DATESYNC_<NAME>_AFTER).
DELETE FROM datesync.dependency WHERE source = ANY($1::text[]);

-- name: dependency_register
-- A date d of source $1 waits for dates d + $3 .. d + $4 of source $2.
INSERT INTO datesync.dependency (source, upstream, lo, hi) VALUES ($1, $2, $3, $4);
