-- Upkeep of the tables that grow: finished jobs past their retention, old dead letters, expired
-- throttle windows, old schedule ticks. Each statement deletes at most %(limit)s rows and skips
-- rows another transaction holds, so the leader loops over short statements that never wait on a
-- worker nor hold many locks for long.

-- The distinct retentions of finished jobs (dead letters aside), by a loose scan of
-- job_history_expiry_idx: one index probe per value, however many rows share it.
-- name: maintain_retentions :many
WITH RECURSIVE retentions AS (
    SELECT min(h.retention) AS r FROM {schema}.job_history h WHERE h.state <> 'failed'
    UNION ALL
    SELECT (SELECT min(h.retention) FROM {schema}.job_history h
            WHERE h.state <> 'failed' AND h.retention > x.r)
    FROM retentions x
    WHERE x.r IS NOT NULL
)
SELECT r AS retention FROM retentions WHERE r IS NOT NULL;

-- Finished jobs (not dead letters) of one retention that ran out, oldest first, along
-- job_history_expiry_idx: each chunk reads only expired rows, however many long-kept rows or
-- dead letters finished before them. The range is written as bounds on (retention, finished_at)
-- and ordered that way, which only this index answers: given "retention = x AND finished_at <
-- y", the planner may walk job_history_finished_idx instead and filter out every older row of
-- another retention (measured on 1M dead letters: 1.5 s a chunk instead of under 30 ms).
-- name: maintain_history :scalar
WITH picked AS (
    SELECT h.id FROM {schema}.job_history h
    WHERE h.state <> 'failed' AND h.retention >= %(retention)s::double precision
      AND (h.retention, h.finished_at)
          < (%(retention)s::double precision,
             coalesce(%(now)s::timestamptz, now())
             - make_interval(secs => %(retention)s::double precision))
    ORDER BY h.retention, h.finished_at
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {schema}.job_history h USING picked p WHERE h.id = p.id RETURNING h.id
), hooks AS (
    DELETE FROM {schema}.job_hook k USING gone g WHERE k.job_id = g.id RETURNING 1
)
SELECT count(*) FROM gone CROSS JOIN (SELECT count(*) FROM hooks) k;

-- Dead letters older than the dead-letter retention, found queue by queue along the history's
-- (queue, state, finished_at) index.
-- name: maintain_dead :scalar
WITH t AS (
    SELECT coalesce(%(now)s::timestamptz, now())
           - make_interval(secs => %(dead_retention)s::double precision) AS cutoff
), picked AS (
    SELECT e.id
    FROM {schema}.queue q
    CROSS JOIN t
    CROSS JOIN LATERAL (
        SELECT h.id FROM {schema}.job_history h
        WHERE h.queue = q.name AND h.state = 'failed' AND h.finished_at < t.cutoff
        ORDER BY h.finished_at
        LIMIT %(limit)s::integer
        FOR UPDATE SKIP LOCKED
    ) e
    LIMIT %(limit)s::integer
), gone AS (
    DELETE FROM {schema}.job_history h USING picked p WHERE h.id = p.id RETURNING h.id
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

-- Live and dead tuples of the two tables that churn: maintenance vacuums them itself when dead
-- tuples pile up (autovacuum off, or visiting only once a naptime while thousands of jobs a
-- second each leave dead row versions behind).
-- name: maintain_dead_tuples :many
SELECT relname AS table, n_live_tup AS live, n_dead_tup AS dead
FROM pg_stat_user_tables
WHERE schemaname = {schema_literal} AND relname IN ('job', 'job_history')
ORDER BY relname;

-- name: maintain_vacuum_job :exec
VACUUM (ANALYZE) {schema}.job;

-- name: maintain_vacuum_job_history :exec
VACUUM (ANALYZE) {schema}.job_history;
