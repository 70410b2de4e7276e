-- Upkeep of the tables that grow: the history's partitions, old dead letters, expired throttle
-- windows, old schedule ticks. Each DELETE removes at most %(limit)s rows and skips rows another
-- transaction holds, so the leader loops over short statements that never wait on a worker nor
-- hold many locks for long.

-- The history leaves by partitions (see 0012_history.sql): the leader creates them ahead as far
-- as the longest retention in use, and detaches and drops those that ended. A partition is
-- dropped a minute after it ended, never the newest (rows beyond the runway go there), and every
-- acknowledgement routes its rows by its own clock to partitions that end after it: so no
-- writer ever meets a partition while it detaches.

-- How far ahead the partitions must reach: the longest retention of a queue, or the app's, or
-- as far as a job kept beyond the partitions needs (see 0018).
-- name: archive_horizon :scalar
SELECT greatest(%(default_retention)s::double precision,
                (SELECT max(q.retention) FROM {schema}.queue q),
                {schema}.archive_beyond_reach(%(now)s::timestamptz));

-- name: archive_rehome :scalar
SELECT {schema}.archive_rehome(%(now)s::timestamptz);

-- name: archive_extend :scalar
SELECT {schema}.archive_extend(%(horizon)s::double precision, %(now)s::timestamptz);

-- name: archive_expired :many
SELECT p.name FROM {schema}.archive_partition p
WHERE p.hi < coalesce(%(now)s::timestamptz, now()) - interval '1 minute'
  AND p.hi < (SELECT max(x.hi) FROM {schema}.archive_partition x)
ORDER BY p.hi;

-- Whether this session's role owns job_archive: only the owner detaches concurrently;
-- another role drops through archive_drop_partition.
-- name: archive_owned :scalar
SELECT pg_has_role(current_user, c.relowner, 'USAGE')
FROM pg_class c
WHERE c.oid = to_regclass({schema_literal} || '.job_archive');

-- name: archive_drop_partition :scalar
SELECT {schema}.archive_drop_partition(%(name)s::text, %(now)s::timestamptz);

-- Where a partition stands: attached, pending (a concurrent detach was interrupted: finalize
-- it), detached (drop it) or gone.
-- name: archive_partition_state :scalar
SELECT CASE WHEN c.oid IS NULL THEN 'gone'
            WHEN i.inhrelid IS NULL THEN 'detached'
            WHEN i.inhdetachpending THEN 'pending'
            ELSE 'attached' END AS state
FROM (SELECT 1) one
LEFT JOIN pg_class c
  ON c.relname = %(name)s::text AND c.relnamespace = {schema_literal}::regnamespace
LEFT JOIN pg_inherits i ON i.inhrelid = c.oid;

-- Partition DDL runs on a connection of its own (DETACH ... CONCURRENTLY cannot run in a
-- transaction block), which waits at most this long for a lock.
-- name: archive_lock_timeout :exec
SELECT set_config('lock_timeout', %(ms)s::text, false);

-- {partition} is the partition's name from archive_partition, quoted by the store.
-- name: archive_detach :exec
ALTER TABLE {schema}.job_archive DETACH PARTITION {schema}.{partition} CONCURRENTLY;

-- Without a direct connection (behind a transaction pooler): a plain detach, which takes an
-- ACCESS EXCLUSIVE lock on job_archive for a moment (acks wait for it, at most lock_timeout).
-- name: archive_detach_now :exec
ALTER TABLE {schema}.job_archive DETACH PARTITION {schema}.{partition};

-- name: archive_finalize :exec
ALTER TABLE {schema}.job_archive DETACH PARTITION {schema}.{partition} FINALIZE;

-- The completion hooks of the jobs in a partition about to be dropped: a hook is kept while
-- its job is. The few hooks are looked up in the partition's id index: joined the other way
-- round, one pending hook anywhere made this read the whole partition.
-- name: archive_drop_hooks :exec
DELETE FROM {schema}.job_hook k
WHERE EXISTS (SELECT FROM {schema}.{partition} p WHERE p.id = k.job_id);

-- name: archive_drop :exec
DROP TABLE IF EXISTS {schema}.{partition};

-- name: archive_forget :exec
DELETE FROM {schema}.archive_partition WHERE name = %(name)s::text;

-- Autovacuum analyzes partitions but never a partitioned parent: the planner's estimates for
-- job_archive come from this. An ANALYZE of the parent analyzes every partition too (PostgreSQL
-- 15 has no ANALYZE ONLY), so it runs with a sample of 3,000 rows a table
-- (archive_analyze_sample), on the columns the statements filter, join or sort by: over 2
-- million rows in 37 partitions, 79-117 ms instead of 1.3-1.6 s (bench/RESULTS.md): a core's
-- second taken from the workers every analyze_interval, and the parent's sample read under
-- one snapshot, in whose time no claimed row's dead version in the live table can be pruned.
-- name: archive_analyze_sample :exec
SET default_statistics_target = 10;

-- name: archive_analyze :exec
ANALYZE {schema}.job_archive (id, queue, state, priority, run_at, attempt, worker_id,
    created_at, started_at, finished_at, drop_at, group_key, fair_key, dead_letter, unique_key,
    singleton_key, depends_on);

-- name: archive_analyze_done :exec
RESET default_statistics_target;

-- What the leader did, for `conveyor doctor`: the time of the last extension, drop, analyze
-- and failure, and how many partitions were dropped in all. The failure's message stays until
-- a whole pass succeeds (passed).
-- name: archive_note :exec
INSERT INTO {schema}.archive_status AS s (
    one, extended_at, dropped_at, dropped, analyzed_at, failed_at, failure)
SELECT true, CASE WHEN %(extended)s::boolean THEN t.now END,
       CASE WHEN %(dropped)s::bigint > 0 THEN t.now END, %(dropped)s::bigint,
       CASE WHEN %(analyzed)s::boolean THEN t.now END,
       CASE WHEN %(failure)s::text IS NOT NULL THEN t.now END, %(failure)s::text
FROM (SELECT coalesce(%(now)s::timestamptz, now()) AS now) t
ON CONFLICT (one) DO UPDATE SET
    extended_at = coalesce(EXCLUDED.extended_at, s.extended_at),
    dropped_at = coalesce(EXCLUDED.dropped_at, s.dropped_at),
    dropped = s.dropped + EXCLUDED.dropped,
    analyzed_at = coalesce(EXCLUDED.analyzed_at, s.analyzed_at),
    failed_at = coalesce(EXCLUDED.failed_at, s.failed_at),
    failure = CASE WHEN %(passed)s::boolean THEN NULL
                   ELSE coalesce(EXCLUDED.failure, s.failure) END;

-- Rows of the history table before 0012, moved to job_archive and job_dead (see 0016).
-- name: history_legacy_move :scalar
SELECT {schema}.history_legacy_move(%(limit)s::integer, %(now)s::timestamptz);

-- Dead letters older than the dead-letter retention, oldest first.
-- name: maintain_dead :scalar
WITH picked AS (
    SELECT d.id FROM {schema}.job_dead d
    WHERE d.finished_at < coalesce(%(now)s::timestamptz, now())
                          - make_interval(secs => %(dead_retention)s::double precision)
    ORDER BY d.finished_at
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {schema}.job_dead d USING picked p WHERE d.id = p.id RETURNING d.id
), hooks AS (
    DELETE FROM {schema}.job_hook k USING gone g WHERE k.job_id = g.id RETURNING 1
)
SELECT count(*) FROM gone CROSS JOIN (SELECT count(*) FROM hooks) k;

-- Throttle windows that closed: a send in a later window starts a new one.
-- name: maintain_throttle :scalar
WITH gone AS (
    DELETE FROM {schema}.throttle
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {schema}.throttle
        WHERE window_end < coalesce(%(now)s::timestamptz, now())
        LIMIT %(limit)s::integer
        FOR UPDATE SKIP LOCKED))
    RETURNING 1
)
SELECT count(*) FROM gone;

-- Tick rows exist so that two schedulers overlapping during a handover fire a tick once. Both
-- work from the schedule's last_tick, read at most a loop earlier, so a tick before last_tick
-- and more than %(tick_keep)s seconds old can never be fired again: its row is not needed.
-- name: maintain_ticks :scalar
WITH gone AS (
    DELETE FROM {schema}.schedule_tick
    WHERE ctid = ANY (ARRAY(
        SELECT k.ctid FROM {schema}.schedule_tick k
        JOIN {schema}.schedule s ON s.name = k.schedule
        WHERE k.tick_at < s.last_tick
          AND k.tick_at < coalesce(%(now)s::timestamptz, now())
                          - make_interval(secs => %(tick_keep)s::double precision)
        LIMIT %(limit)s::integer
        FOR UPDATE OF k SKIP LOCKED))
    RETURNING 1
)
SELECT count(*) FROM gone;

-- Live and dead tuples of the tables rows are deleted from: maintenance vacuums them itself when
-- dead tuples pile up (autovacuum off, or visiting only once a naptime while thousands of jobs a
-- second each leave dead row versions behind in the live table). The archive is insert-only.
-- Beside them, the rows the planner believes each holds (reltuples, as the last VACUUM or
-- ANALYZE left it; 0 if never), which tells when the live table outgrew its cached plans.
-- name: maintain_dead_tuples :many
SELECT s.relname AS table, s.n_live_tup AS live, s.n_dead_tup AS dead,
       greatest(c.reltuples, 0)::bigint AS planned
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = {schema_literal} AND s.relname IN ('job', 'job_dead')
ORDER BY s.relname;

-- A plain VACUUM, which other backends' pruning does not wait for: an ANALYZE holds a snapshot,
-- and while it runs no claimed row's dead version can be pruned, so every claim walks more of
-- them; at thousands of jobs a second this vacuum runs every few seconds. The planner's
-- statistics of these tables come from maintain_analyze_live, every analyze_interval.
-- name: maintain_vacuum_job :exec
VACUUM {schema}.job;

-- name: maintain_vacuum_job_dead :exec
VACUUM {schema}.job_dead;

-- name: maintain_analyze_live :exec
ANALYZE {schema}.job, {schema}.job_dead;
