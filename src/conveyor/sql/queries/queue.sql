-- Queues and their policies. A policy arrives as one jsonb object of the fields to set, so one
-- static statement serves any subset of them; keys are whitelisted by conveyor.options first.

-- Set the given fields of a queue's policy; with create, make the queue first if it is missing.
-- name: queue_upsert :one
WITH up AS (
INSERT INTO {schema}.queue AS q (
    name, policy, priority, retry_limit, retry_delay, retry_backoff, retry_delay_max, expire_in,
    retention, dead_letter, concurrency, rate_limit, rate_interval)
SELECT %(name)s::text, coalesce(p->>'policy', 'standard'), (p->>'priority')::integer,
       (p->>'retry_limit')::integer, (p->>'retry_delay')::double precision, p->>'retry_backoff',
       (p->>'retry_delay_max')::double precision, (p->>'expire_in')::double precision,
       (p->>'retention')::double precision, p->>'dead_letter', (p->>'concurrency')::integer,
       (p->>'rate_limit')::integer, (p->>'rate_interval')::double precision
FROM (SELECT %(policy)s::jsonb AS p) i
WHERE %(create)s::boolean OR EXISTS (SELECT FROM {schema}.queue WHERE name = %(name)s::text)
ON CONFLICT (name) DO UPDATE SET
    policy = CASE WHEN %(policy)s::jsonb ? 'policy' THEN EXCLUDED.policy ELSE q.policy END,
    priority = CASE WHEN %(policy)s::jsonb ? 'priority' THEN EXCLUDED.priority ELSE q.priority END,
    retry_limit = CASE WHEN %(policy)s::jsonb ? 'retry_limit' THEN EXCLUDED.retry_limit ELSE q.retry_limit END,
    retry_delay = CASE WHEN %(policy)s::jsonb ? 'retry_delay' THEN EXCLUDED.retry_delay ELSE q.retry_delay END,
    retry_backoff = CASE WHEN %(policy)s::jsonb ? 'retry_backoff' THEN EXCLUDED.retry_backoff
                         ELSE q.retry_backoff END,
    retry_delay_max = CASE WHEN %(policy)s::jsonb ? 'retry_delay_max' THEN EXCLUDED.retry_delay_max
                           ELSE q.retry_delay_max END,
    expire_in = CASE WHEN %(policy)s::jsonb ? 'expire_in' THEN EXCLUDED.expire_in ELSE q.expire_in END,
    retention = CASE WHEN %(policy)s::jsonb ? 'retention' THEN EXCLUDED.retention ELSE q.retention END,
    dead_letter = CASE WHEN %(policy)s::jsonb ? 'dead_letter' THEN EXCLUDED.dead_letter ELSE q.dead_letter END,
    concurrency = CASE WHEN %(policy)s::jsonb ? 'concurrency' THEN EXCLUDED.concurrency ELSE q.concurrency END,
    rate_limit = CASE WHEN %(policy)s::jsonb ? 'rate_limit' THEN EXCLUDED.rate_limit ELSE q.rate_limit END,
    rate_interval = CASE WHEN %(policy)s::jsonb ? 'rate_interval' THEN EXCLUDED.rate_interval
                         ELSE q.rate_interval END,
    updated_at = now()
RETURNING *
),
-- fair (0015): a row of queue_fair. Jobs the queue holds without a key get the key '', so the
-- fair claim, which walks only keyed jobs, finds them.
fair_on AS (
    INSERT INTO {schema}.queue_fair (queue)
    SELECT up.name FROM up WHERE coalesce((%(policy)s::jsonb ->> 'fair')::boolean, false)
    ON CONFLICT (queue) DO NOTHING
    RETURNING queue
), keyed AS (
    UPDATE {schema}.job j SET fair_key = ''
    FROM up
    WHERE j.queue = up.name AND j.fair_key IS NULL
      AND coalesce((%(policy)s::jsonb ->> 'fair')::boolean, false)
), fair_off AS (
    DELETE FROM {schema}.queue_fair f USING up
    WHERE f.queue = up.name AND %(policy)s::jsonb ? 'fair'
      AND NOT coalesce((%(policy)s::jsonb ->> 'fair')::boolean, false)
)
SELECT up.*, EXISTS (SELECT FROM {schema}.queue_pause p WHERE p.queue = up.name) AS paused,
       CASE WHEN %(policy)s::jsonb ? 'fair'
            THEN coalesce((%(policy)s::jsonb ->> 'fair')::boolean, false)
            ELSE EXISTS (SELECT FROM {schema}.queue_fair f WHERE f.queue = up.name) END AS fair
FROM up CROSS JOIN (SELECT count(*) FROM fair_on) n;

-- A queue's row, whether it is paused (queue_pause, 0007) and whether it is fair (queue_fair,
-- 0015).
-- name: queue_get :one
SELECT q.*, EXISTS (SELECT FROM {schema}.queue_pause p WHERE p.queue = q.name) AS paused,
       EXISTS (SELECT FROM {schema}.queue_fair f WHERE f.queue = q.name) AS fair
FROM {schema}.queue q WHERE q.name = %(name)s;

-- name: queue_list :many
SELECT q.*, EXISTS (SELECT FROM {schema}.queue_pause p WHERE p.queue = q.name) AS paused,
       EXISTS (SELECT FROM {schema}.queue_fair f WHERE f.queue = q.name) AS fair
FROM {schema}.queue q ORDER BY q.name;

-- Pause a queue: fetch_jobs claims none of its jobs from now on, and workers holding claims
-- of it they have not started yet hand them back (told on the cancel channel, "paused:NAME").
-- True if the queue exists (pausing a paused queue changes nothing).
-- name: queue_pause :scalar
WITH q AS (
    SELECT name FROM {schema}.queue WHERE name = %(name)s::text
), paused AS (
    INSERT INTO {schema}.queue_pause (queue) SELECT name FROM q
    ON CONFLICT (queue) DO NOTHING
    RETURNING 1
), told AS (
    SELECT pg_notify(%(cancel_channel)s::text, 'paused:' || q.name) FROM q
)
SELECT EXISTS (SELECT FROM q) FROM (SELECT count(*) FROM paused) n, (SELECT count(*) FROM told) t;

-- Resume a queue, and wake the workers that serve it (its jobs waited meanwhile). True if the
-- queue exists.
-- name: queue_resume :scalar
WITH q AS (
    SELECT name FROM {schema}.queue WHERE name = %(name)s::text
), resumed AS (
    DELETE FROM {schema}.queue_pause p USING q WHERE p.queue = q.name RETURNING p.queue
), woken AS (
    SELECT pg_notify(%(channel)s::text, r.queue) FROM resumed r
)
SELECT EXISTS (SELECT FROM q) FROM (SELECT count(*) FROM woken) n;

-- Delete a queue with every job it holds, live or finished, its throttle windows and counters.
-- name: queue_delete :one
WITH gone AS (
    DELETE FROM {schema}.queue WHERE name = %(name)s RETURNING name
), live AS (
    DELETE FROM {schema}.job WHERE queue IN (SELECT name FROM gone) RETURNING 1
), archived AS (
    DELETE FROM {schema}.job_archive WHERE queue IN (SELECT name FROM gone) RETURNING 1
), dead AS (
    DELETE FROM {schema}.job_dead WHERE queue IN (SELECT name FROM gone) RETURNING 1
), windows AS (
    DELETE FROM {schema}.throttle WHERE queue IN (SELECT name FROM gone) RETURNING 1
), totals AS (
    -- A queue created again under this name starts its counts from zero.
    DELETE FROM {schema}.stats_total WHERE queue IN (SELECT name FROM gone)
), minutes AS (
    DELETE FROM {schema}.stats_minute WHERE queue IN (SELECT name FROM gone)
), backlogs AS (
    DELETE FROM {schema}.stats_backlog WHERE queue IN (SELECT name FROM gone)
), unkept AS (
    -- Jobs that kept no history, finished but not yet counted: an ack batch's row may hold
    -- other queues' jobs too, so the queue's are taken out of its arrays (a row left empty
    -- counts nothing, and the rollup deletes it in its turn).
    UPDATE {schema}.stats_unkept s
    SET (queue, run_at, started_at, attempt) = (
        SELECT coalesce(array_agg(u.queue ORDER BY u.n), '{}'),
               coalesce(array_agg(u.run_at ORDER BY u.n), '{}'),
               coalesce(array_agg(u.started_at ORDER BY u.n), '{}'),
               coalesce(array_agg(u.attempt ORDER BY u.n), '{}')
        FROM unnest(s.queue, s.run_at, s.started_at, s.attempt) WITH ORDINALITY
             AS u(queue, run_at, started_at, attempt, n)
        WHERE u.queue NOT IN (SELECT name FROM gone))
    WHERE s.queue && ARRAY(SELECT name FROM gone)
)
SELECT (SELECT count(*) FROM gone) AS queues,
       (SELECT count(*) FROM live) + (SELECT count(*) FROM archived)
           + (SELECT count(*) FROM dead) AS jobs,
       (SELECT count(*) FROM windows) AS windows;

-- Whether job_history_legacy (a schema migrated from the first layout, 0016) still holds a
-- row: while it does, queue_delete_legacy runs too. NULL once the table is gone.
-- name: history_legacy_exists :scalar
SELECT {schema}.history_legacy_left(1) AS present;

-- name: queue_delete_legacy :scalar
WITH gone AS (
    DELETE FROM {schema}.job_history_legacy WHERE queue = %(name)s RETURNING 1
)
SELECT count(*) FROM gone;

-- Delete the queued (not running, not finished) jobs of a queue: the ungrouped and the grouped
-- ones apart, each along its fetch index (0021).
-- name: queue_purge :scalar
WITH free AS (
    DELETE FROM {schema}.job
    WHERE queue = %(name)s AND state IN ('created', 'retry') AND group_key IS NULL
    RETURNING 1
), grouped AS (
    DELETE FROM {schema}.job
    WHERE queue = %(name)s AND state IN ('created', 'retry') AND group_key IS NOT NULL
    RETURNING 1
)
SELECT (SELECT count(*) FROM free) + (SELECT count(*) FROM grouped) AS count;

-- Counts by state; oldest_waiting_seconds is how long the oldest runnable job has waited past
-- its run_at (NULL when none is runnable). Live states are counted in the (small) live table;
-- completed and cancelled are the rolled-up totals plus the rows finished since the rollup's
-- watermark (at most %(tail)s of them, by the finished_at indexes); failed is the dead letters
-- held, each read once from job_dead (which holds nothing else). Never a scan of the archive.
-- name: queue_stats :many
WITH t AS (SELECT coalesce(%(now)s::timestamptz, now()) AS now),
w AS (SELECT coalesce((SELECT rolled_to FROM {schema}.stats_rollup), '-infinity') AS after),
finished AS (
    SELECT s.queue, s.completed, s.cancelled
    FROM {schema}.stats_total s
    WHERE %(name)s::text IS NULL OR s.queue = %(name)s::text
    UNION ALL
    SELECT c.queue, c.completed, c.cancelled
    FROM w,
         {schema}.finished_counts(w.after, NULL, %(tail)s::bigint, %(bounds)s::double precision[]) c
    WHERE %(name)s::text IS NULL OR c.queue = %(name)s::text
),
counted AS (
    SELECT queue, state, count(*) AS n,
           min(run_at) FILTER (WHERE state IN ('created', 'retry') AND run_at <= t.now) AS oldest
    FROM {schema}.job, t
    WHERE %(name)s::text IS NULL OR queue = %(name)s::text
    GROUP BY queue, state
    UNION ALL
    SELECT f.queue, x.state, x.n, NULL
    FROM finished f
    CROSS JOIN LATERAL (VALUES ('completed', f.completed), ('cancelled', f.cancelled)) x(state, n)
    UNION ALL
    SELECT d.queue, 'failed', count(*), NULL
    FROM {schema}.job_dead d
    WHERE %(name)s::text IS NULL OR d.queue = %(name)s::text
    GROUP BY d.queue
)
SELECT q.name AS queue, c.state, coalesce(c.n, 0)::bigint AS n,
       extract(epoch FROM t.now - c.oldest)::double precision AS oldest_waiting_seconds,
       EXISTS (SELECT FROM {schema}.queue_pause p WHERE p.queue = q.name) AS paused
FROM {schema}.queue q
CROSS JOIN t
LEFT JOIN counted c ON c.queue = q.name
WHERE %(name)s::text IS NULL OR q.name = %(name)s::text
ORDER BY q.name, c.state;

-- The cheap counts a metrics scrape takes: live jobs by state from the small live table, and
-- the dead letters of each queue, each read once from job_dead; never a scan of the archive.
-- name: queue_live_counts :many
WITH t AS (SELECT coalesce(%(now)s::timestamptz, now()) AS now),
live AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'created') AS created,
           count(*) FILTER (WHERE state = 'retry') AS retry,
           count(*) FILTER (WHERE state = 'active') AS active,
           min(run_at) FILTER (WHERE state IN ('created', 'retry') AND run_at <= t.now) AS oldest
    FROM {schema}.job, t
    GROUP BY queue
),
dead AS (
    SELECT queue, count(*) AS failed FROM {schema}.job_dead GROUP BY queue
)
SELECT q.name AS queue,
       coalesce(l.created, 0)::bigint AS created,
       coalesce(l.retry, 0)::bigint AS retry,
       coalesce(l.active, 0)::bigint AS active,
       coalesce(d.failed, 0)::bigint AS failed,
       greatest(extract(epoch FROM t.now - l.oldest), 0)::double precision
           AS oldest_waiting_seconds,
       EXISTS (SELECT FROM {schema}.queue_pause p WHERE p.queue = q.name) AS paused
FROM {schema}.queue q
CROSS JOIN t
LEFT JOIN live l ON l.queue = q.name
LEFT JOIN dead d ON d.queue = q.name
ORDER BY q.name;
