-- The migrator's own bookkeeping (daemon/db/migrate.py).

-- name: migration_bootstrap
-- The schema and the table of applied versions, before the first migration.
CREATE SCHEMA IF NOT EXISTS datesync;
CREATE TABLE IF NOT EXISTS datesync.schema_migration (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migration_table_exists
-- Whether any migration ever ran here.
SELECT to_regclass('datesync.schema_migration') IS NOT NULL;

-- name: migration_applied
-- Applied versions and their checksums.
SELECT version, checksum FROM datesync.schema_migration;

-- name: migration_record
-- Record an applied version.
INSERT INTO datesync.schema_migration (version, name, checksum) VALUES ($1, $2, $3);

-- name: repeatable_bootstrap
-- The table of applied function files (their checksums say when one changed).
CREATE TABLE IF NOT EXISTS datesync.schema_repeatable (
    name       text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: repeatable_table_exists
-- Whether function files were ever applied here.
SELECT to_regclass('datesync.schema_repeatable') IS NOT NULL;

-- name: repeatable_applied
-- Applied function files and their checksums.
SELECT name, checksum FROM datesync.schema_repeatable;

-- name: repeatable_record
-- Record an applied function file.
INSERT INTO datesync.schema_repeatable (name, checksum) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now();
