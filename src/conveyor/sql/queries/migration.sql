-- Bookkeeping of migrations: the version table, and the advisory lock that serialises migrators.

-- name: migration_bootstrap :exec
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.migration (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migration_applied :many
SELECT version, checksum FROM {schema}.migration ORDER BY version;

-- name: migration_table_exists :scalar
SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = {schema_literal} AND tablename = 'migration');

-- name: migration_record :exec
INSERT INTO {schema}.migration (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: migration_xact_lock :exec
SELECT pg_advisory_xact_lock(hashtext('conveyor:migrate:' || {schema_literal}));

-- name: migration_session_lock :exec
SELECT pg_advisory_lock(hashtext('conveyor:migrate:' || {schema_literal}));

-- name: migration_session_unlock :exec
SELECT pg_advisory_unlock(hashtext('conveyor:migrate:' || {schema_literal}));

-- Empty every table of the schema (the migration bookkeeping stays): test isolation between tests
-- that share a migrated schema.
-- Every table but the migrations', so tables that later migrations add are emptied too.
-- name: schema_truncate :exec
DO $$
BEGIN
    EXECUTE (SELECT 'TRUNCATE ' || string_agg(format('%I.%I', schemaname, tablename), ', ')
             FROM pg_tables
             WHERE schemaname = {schema_literal} AND tablename <> 'migration');
END
$$;

-- name: schema_drop :exec
DROP SCHEMA IF EXISTS {schema} CASCADE;
