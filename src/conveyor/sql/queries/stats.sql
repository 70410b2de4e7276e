-- The counters behind queue_stats, the per-minute series and the dashboard (0011_counters.sql):
-- kept by a rollup on the 'stats' lease holder, read together with the few history rows that
-- finished since its watermark. No statement here reads more of the history than that.

-- Count the history rows finished since the watermark, at most %(chunk)s of them.
-- name: stats_rollup :one
SELECT counted, rolled_to
FROM {schema}.stats_rollup(%(now)s::timestamptz, %(lag)s::double precision,
                           %(hold)s::double precision, %(chunk)s::bigint,
                           %(bounds)s::double precision[]);

-- The runnable jobs waiting in each queue now, as the backlog of this minute. Reads the live
-- table through the two fetch indexes only (0021: ungrouped jobs, grouped jobs).
-- name: stats_sample_backlog :exec
WITH t AS (SELECT coalesce(%(now)s::timestamptz, now()) AS now)
INSERT INTO {schema}.stats_backlog AS b (queue, minute, backlog)
SELECT q.name, date_bin('1 minute', t.now, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       (SELECT count(*) FROM {schema}.job j
        WHERE j.queue = q.name AND j.state IN ('created', 'retry') AND j.group_key IS NULL
          AND j.run_at <= t.now)
       + (SELECT count(*) FROM {schema}.job j
          WHERE j.queue = q.name AND j.state IN ('created', 'retry')
            AND j.group_key IS NOT NULL AND j.run_at <= t.now)
FROM {schema}.queue q CROSS JOIN t
ON CONFLICT (queue, minute) DO UPDATE SET backlog = EXCLUDED.backlog;

-- The queue table changes too little for autovacuum to analyze it, and a table never analyzed
-- is guessed at hundreds of rows: the stats reads, which count dead letters queue by queue,
-- would then be costed high enough for JIT compilation, which takes longer than the read.
-- name: stats_analyze_queues :exec
ANALYZE {schema}.queue;

-- Per-minute rows older than %(keep)s seconds; how many were deleted.
-- name: stats_prune :scalar
WITH t AS (
    SELECT coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(keep)s::double precision)
           AS cutoff
), minutes AS (
    DELETE FROM {schema}.stats_minute s USING t WHERE s.minute < t.cutoff RETURNING 1
), backlogs AS (
    DELETE FROM {schema}.stats_backlog b USING t WHERE b.minute < t.cutoff RETURNING 1
)
SELECT (SELECT count(*) FROM minutes) + (SELECT count(*) FROM backlogs) AS count;

-- The per-minute series of one queue (or of all, summed) over the last %(minutes)s minutes, the
-- current one included, oldest first: per minute one row per wait bucket that counted jobs
-- (bucket NULL if none did), with the backlog sampled in that minute (NULL if none was; the
-- current minute has the backlog of now until it is sampled).
-- name: stats_series :many
WITH t AS (SELECT coalesce(%(now)s::timestamptz, now()) AS now),
span AS (
    SELECT date_bin('1 minute', t.now, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS current,
           date_bin('1 minute', t.now, TIMESTAMPTZ '2000-01-01 00:00:00+00')
           - make_interval(mins => %(minutes)s::integer - 1) AS start
    FROM t
),
w AS (SELECT coalesce((SELECT rolled_to FROM {schema}.stats_rollup), '-infinity') AS after),
counted AS (
    SELECT s.minute, s.bucket, s.completed, s.failed, s.cancelled, s.retried
    FROM {schema}.stats_minute s, span
    WHERE s.minute >= span.start AND (%(queue)s::text IS NULL OR s.queue = %(queue)s::text)
    UNION ALL
    SELECT c.minute, c.bucket, c.completed, c.failed, c.cancelled, c.retried
    FROM w, span,
         {schema}.finished_counts(w.after, NULL, %(tail)s::bigint, %(bounds)s::double precision[]) c
    WHERE c.minute >= span.start AND (%(queue)s::text IS NULL OR c.queue = %(queue)s::text)
),
per_bucket AS (
    SELECT minute, bucket, sum(completed) AS completed, sum(failed) AS failed,
           sum(cancelled) AS cancelled, sum(retried) AS retried
    FROM counted
    GROUP BY minute, bucket
),
backlogs AS (
    SELECT b.minute, sum(b.backlog) AS backlog
    FROM {schema}.stats_backlog b, span
    WHERE b.minute >= span.start AND (%(queue)s::text IS NULL OR b.queue = %(queue)s::text)
    GROUP BY b.minute
),
-- The current minute before its sample: the backlog now, counted in the fetch index.
waiting AS (
    SELECT count(*) AS backlog
    FROM {schema}.job j, t
    WHERE (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
      AND j.state IN ('created', 'retry') AND j.run_at <= t.now
)
SELECT m.minute, p.bucket, coalesce(p.completed, 0)::bigint AS completed,
       coalesce(p.failed, 0)::bigint AS failed, coalesce(p.cancelled, 0)::bigint AS cancelled,
       coalesce(p.retried, 0)::bigint AS retried,
       coalesce(bl.backlog,
                CASE WHEN m.minute = span.current THEN (SELECT backlog FROM waiting) END)::bigint
           AS backlog
FROM span
CROSS JOIN generate_series(span.start, span.start + make_interval(mins => %(minutes)s::integer - 1),
                           interval '1 minute') AS m(minute)
LEFT JOIN per_bucket p ON p.minute = m.minute
LEFT JOIN backlogs bl ON bl.minute = m.minute
ORDER BY m.minute, p.bucket;
