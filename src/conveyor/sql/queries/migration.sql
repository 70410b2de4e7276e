-- Bookkeeping of migrations: the version table, and the advisory lock that serialises migrators.

-- breaking: whether code of older releases stops working once the migration is applied (see
-- conveyor._store.migrations); added after the first release, hence the ALTER. Rows recorded
-- before it count as breaking.
-- name: migration_bootstrap :exec
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.migration (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    breaking   boolean NOT NULL DEFAULT true
);
DO $$
BEGIN
    -- Checked first: ALTER TABLE would lock the table even when the column exists.
    IF NOT EXISTS (
        SELECT FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = {schema_literal} AND c.relname = 'migration' AND a.attname = 'breaking'
    ) THEN
        ALTER TABLE {schema}.migration ADD COLUMN breaking boolean NOT NULL DEFAULT true;
    END IF;
END
$$;

-- Read through to_jsonb so it also works on a table that has no breaking column yet (a worker
-- of this release starting on a schema no migrator of it has touched).
-- name: migration_applied :many
SELECT m.version, m.checksum, coalesce((to_jsonb(m) ->> 'breaking')::boolean, true) AS breaking
FROM {schema}.migration m
ORDER BY m.version;

-- name: migration_table_exists :scalar
SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = {schema_literal} AND tablename = 'migration');

-- name: migration_record :exec
INSERT INTO {schema}.migration (version, name, checksum, breaking)
VALUES (%(version)s, %(name)s, %(checksum)s, %(breaking)s);

-- name: migration_xact_lock :exec
SELECT pg_advisory_xact_lock(hashtext('conveyor:migrate:' || {schema_literal}));

-- name: migration_session_lock :exec
SELECT pg_advisory_lock(hashtext('conveyor:migrate:' || {schema_literal}));

-- How long a migration waits for a table lock, in milliseconds (see migrate_async.py).
-- name: migration_lock_timeout_local :exec
SELECT set_config('lock_timeout', %(ms)s::text, true);

-- name: migration_lock_timeout :exec
SELECT set_config('lock_timeout', %(ms)s::text, false);

-- name: migration_lock_timeout_reset :exec
RESET lock_timeout;

-- name: migration_session_unlock :exec
SELECT pg_advisory_unlock(hashtext('conveyor:migrate:' || {schema_literal}));

-- Empty every table of the schema (the migration bookkeeping stays): test isolation between tests
-- that share a migrated schema.
-- Every table but the migrations' and the list of the history's partitions (which stay), so
-- tables that later migrations add are emptied too. Most tests leave most of the schema's
-- sixty-odd tables (partitions included) empty and the rest nearly so: a table with no row is
-- left alone, one with a few rows is emptied by DELETE, and only a large one is truncated
-- (TRUNCATE gives a table and each of its indexes new files, which costs tens of milliseconds a
-- table). Large by its rows or by its pages: the dead rows that DELETEs leave stay in the pages
-- (and in the statistics that maintenance and doctor read) until a vacuum, so a table of more
-- than 8 pages is truncated, which bounds what one test inherits to a few hundred dead rows.
-- Tables that others reference come last, and TRUNCATE's CASCADE takes along the tables that
-- reference a truncated one.
-- name: schema_truncate :exec
DO $$
DECLARE
    relation text;
    held bigint;
    large text[] := '{}';
BEGIN
    FOR relation IN
        SELECT format('%I.%I', n.nspname, c.relname)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN (SELECT DISTINCT confrelid FROM pg_constraint WHERE contype = 'f') r
            ON r.confrelid = c.oid
        WHERE n.nspname = {schema_literal} AND c.relkind = 'r'
          AND c.relname NOT IN ('migration', 'archive_partition')
        ORDER BY r.confrelid IS NOT NULL
    LOOP
        EXECUTE format('SELECT count(*) FROM (SELECT FROM %s LIMIT 1000) x', relation) INTO held;
        IF held >= 1000 OR pg_relation_size(relation::regclass) > 65536 THEN
            large := large || relation;
        ELSIF held > 0 THEN
            EXECUTE format('DELETE FROM %s', relation);
        END IF;
    END LOOP;
    IF large <> '{}' THEN
        EXECUTE 'TRUNCATE ' || array_to_string(large, ', ') || ' CASCADE';
    END IF;
END
$$;

-- name: schema_drop :exec
DROP SCHEMA IF EXISTS {schema} CASCADE;
