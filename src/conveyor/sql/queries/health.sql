-- What `conveyor doctor` inspects: the catalog, the statistics views and the live jobs. Read-only.

-- The schema as the catalog describes it, one line per table, column, constraint, index and
-- function, with the schema's own name replaced by SCHEMA: two schemas built by the same
-- migrations describe alike.
-- name: schema_describe :many
SELECT replace(replace(line, quote_ident(%(s)s::text) || '.', 'SCHEMA.'), %(s)s::text || '.',
               'SCHEMA.') AS line
FROM (
    SELECT 'table ' || c.relname || coalesce(' ' || array_to_string(c.reloptions, ','), '')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(s)s::text AND c.relkind IN ('r', 'v', 'p') AND NOT c.relispartition
    UNION ALL
    SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
           || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE n.nspname = %(s)s::text AND c.relkind IN ('r', 'v', 'p') AND NOT c.relispartition
      AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint ' || c.relname || ' ' || pg_get_constraintdef(k.oid)
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(s)s::text AND k.contype <> 'n' AND NOT c.relispartition
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(s)s::text AND NOT c.relispartition
    UNION ALL
    SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') '
           || coalesce(array_to_string(p.proconfig, ','), '')
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = %(s)s::text
    UNION ALL
    SELECT 'trigger ' || c.relname || ' ' || t.tgname
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = %(s)s::text AND NOT t.tgisinternal AND NOT c.relispartition
) d(line)
ORDER BY 1;

-- Indexes left invalid by a failed CREATE INDEX CONCURRENTLY: present, never used, still updated.
-- name: doctor_invalid_indexes :many
SELECT c.relname AS index
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = {schema_literal} AND NOT i.indisvalid
ORDER BY 1;

-- Dead and live tuples and sizes of each table, for the bloat estimate.
-- name: doctor_tables :many
SELECT s.relname AS table, s.n_live_tup AS live, s.n_dead_tup AS dead,
       pg_total_relation_size(s.relid) AS total_bytes,
       extract(epoch FROM now() - greatest(s.last_autovacuum, s.last_vacuum))::double precision
           AS vacuumed_seconds_ago
FROM pg_stat_user_tables s
WHERE s.schemaname = {schema_literal}
ORDER BY 1;

-- Each index's size beside the size its entries need: rows times the average width of its key
-- columns (from pg_stats) plus the per-entry overhead. No pgstattuple needed.
-- The schema's column statistics are read once: pg_stats is a view with a privilege check per
-- row, and looking it up again for each of the schema's ~190 indexes took seconds.
-- name: doctor_indexes :many
WITH widths AS MATERIALIZED (
    SELECT tablename, attname, avg_width FROM pg_stats WHERE schemaname = {schema_literal}
)
SELECT ci.relname AS index, pg_relation_size(i.indexrelid) AS bytes,
       greatest(ct.reltuples, 0)::bigint AS rows,
       (SELECT coalesce(sum(w.avg_width), 0)
        FROM pg_attribute a
        JOIN widths w ON w.tablename = ct.relname AND w.attname = a.attname
        WHERE a.attrelid = ct.oid AND a.attnum = ANY (i.indkey))::bigint AS key_width
FROM pg_index i
JOIN pg_class ci ON ci.oid = i.indexrelid
JOIN pg_class ct ON ct.oid = i.indrelid
JOIN pg_namespace n ON n.oid = ct.relnamespace
WHERE n.nspname = {schema_literal}
ORDER BY 1;

-- Sessions whose snapshot holds back vacuum's horizon, oldest first (this session excluded).
-- name: doctor_old_transactions :many
SELECT a.pid, coalesce(a.application_name, '') AS application, coalesce(a.state, '') AS state,
       extract(epoch FROM now() - a.xact_start)::double precision AS seconds,
       left(regexp_replace(coalesce(a.query, ''), '\s+', ' ', 'g'), 80) AS query
FROM pg_stat_activity a
WHERE a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
  AND a.datname = current_database()
  -- Autovacuum's own long runs do not hold back other vacuums: clients only.
  AND a.backend_type = 'client backend'
ORDER BY a.xact_start
LIMIT 5;

-- Active jobs whose worker is gone or silent for stale_after seconds: recovery (on the leader)
-- should have taken them back; if they stay, no worker runs maintenance.
-- name: doctor_orphaned_jobs :many
SELECT j.id, j.queue, j.worker_id,
       extract(epoch FROM now() - j.started_at)::double precision AS running_seconds,
       w.id IS NULL AS worker_gone
FROM {schema}.job j
LEFT JOIN {schema}.worker w ON w.id = j.worker_id
WHERE j.state = 'active'
  AND (w.id IS NULL
       OR w.heartbeat_at < now() - make_interval(secs => %(stale_after)s::double precision))
ORDER BY j.started_at
LIMIT 100;

-- Waiting jobs that nothing will release: no pending dependency edge left, or an edge to a job
-- that exists nowhere.
-- name: doctor_stuck_waiting :many
SELECT j.id, j.queue,
       NOT EXISTS (SELECT FROM {schema}.job_dependency d WHERE d.job_id = j.id) AS no_edges
FROM {schema}.job j
WHERE j.state = 'waiting'
  AND (NOT EXISTS (SELECT FROM {schema}.job_dependency d WHERE d.job_id = j.id)
       OR EXISTS (SELECT FROM {schema}.job_dependency d
                  WHERE d.job_id = j.id
                    AND NOT EXISTS (SELECT FROM {schema}.job x WHERE x.id = d.depends_on)
                    AND NOT EXISTS (SELECT FROM {schema}.job_history x
                                    WHERE x.id = d.depends_on)))
ORDER BY j.created_at
LIMIT 100;

-- Workers whose heartbeat is older than stale_after seconds.
-- name: doctor_stale_workers :many
SELECT id, hostname, pid,
       extract(epoch FROM now() - heartbeat_at)::double precision AS silent_seconds
FROM {schema}.worker
WHERE heartbeat_at < now() - make_interval(secs => %(stale_after)s::double precision)
ORDER BY heartbeat_at;

-- Live workers that report a background service down or handler threads stuck (their heartbeat
-- carries the report).
-- name: worker_troubles :many
SELECT id, hostname, pid,
       coalesce(metadata -> 'services_down', '{}'::jsonb) AS services_down,
       coalesce((metadata ->> 'stuck_threads')::integer, 0) AS stuck_threads
FROM {schema}.worker
WHERE heartbeat_at >= now() - make_interval(secs => %(stale_after)s::double precision)
  AND (coalesce(metadata -> 'services_down', '{}'::jsonb) <> '{}'::jsonb
       OR coalesce((metadata ->> 'stuck_threads')::integer, 0) > 0)
ORDER BY started_at, id;

-- name: doctor_notify :exec
SELECT pg_notify(%(channel)s::text, %(payload)s::text);

-- The history's partitions (see 0012_history.sql): how far the runway reaches, how many ended
-- and wait for the leader to drop them, and what the leader last did.
-- name: doctor_archive :one
SELECT (SELECT count(*) FROM {schema}.archive_partition) AS partitions,
       extract(epoch FROM (SELECT max(p.hi) FROM {schema}.archive_partition p) - now())
           ::double precision AS runway_seconds,
       (SELECT count(*) FROM {schema}.archive_partition p
        WHERE p.hi < now() - interval '1 minute'
          AND p.hi < (SELECT max(x.hi) FROM {schema}.archive_partition x)) AS ended,
       (SELECT max(q.retention) FROM {schema}.queue q) AS queue_retention,
       (SELECT count(*) FROM {schema}.job_archive_beyond) AS beyond,
       {schema}.archive_beyond_reach(now()) AS beyond_reach,
       -- The history before 0012 while the leader moves it (see 0016), counted up to a million
       -- (diagnosis.LEGACY_COUNTED).
       {schema}.history_legacy_left(1000000) AS legacy_rows,
       extract(epoch FROM now() - s.extended_at)::double precision AS extended_seconds_ago,
       extract(epoch FROM now() - s.dropped_at)::double precision AS dropped_seconds_ago,
       coalesce(s.dropped, 0) AS dropped,
       extract(epoch FROM now() - s.failed_at)::double precision AS failed_seconds_ago,
       s.failure
FROM (SELECT 1) one
LEFT JOIN {schema}.archive_status s ON true;

-- Whether autovacuum runs on this server and on each table of the schema.
-- name: doctor_autovacuum :many
SELECT c.relname AS table,
       current_setting('autovacuum')::boolean AS server,
       coalesce(NOT ('autovacuum_enabled=false' = ANY (c.reloptions)), true) AS enabled
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = {schema_literal} AND c.relkind = 'r'
ORDER BY 1;
