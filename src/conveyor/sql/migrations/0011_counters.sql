-- conveyor: non-breaking
-- Counters instead of scans (issue 15): what queue_stats, the admin API and the dashboard report
-- about finished jobs is read from small tables kept by a rollup, never from a scan of the history.
-- Only new tables and functions: nothing a worker of the previous release reads or writes changes,
-- so those workers keep running on this schema (their acks are counted like any other).
--
-- The rollup runs on the holder of the 'stats' lease, every few seconds. It reads the history rows
-- that finished since its watermark, along job_history_finished_idx, and adds them to per-minute
-- buckets and per-queue totals. Nothing on the hot path (send, fetch, ack) writes a counter. A
-- read adds the rows finished since the watermark (a few seconds' worth, read by the same index
-- and bounded), so counts are exact as soon as an ack commits.

-- Jobs that finished in one minute, by queue and by how long they waited between run_at and the
-- start of their last attempt (bucket: the index into the bounds the application passes, as
-- width_bucket numbers it; -1 for a job cancelled before it started). retried counts the attempts
-- that ended in a retry, of the jobs that finished in that minute.
CREATE TABLE {schema}.stats_minute (
    queue     text NOT NULL,
    minute    timestamptz NOT NULL,
    bucket    integer NOT NULL CHECK (bucket >= -1),
    completed bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    retried   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, minute, bucket)
);
-- Series over every queue, and pruning, walk minutes across queues.
CREATE INDEX stats_minute_minute_idx ON {schema}.stats_minute (minute);

-- Runnable jobs waiting in each queue, sampled by the rollup once a minute.
CREATE TABLE {schema}.stats_backlog (
    queue   text NOT NULL,
    minute  timestamptz NOT NULL,
    backlog bigint NOT NULL CHECK (backlog >= 0),
    PRIMARY KEY (queue, minute)
);
CREATE INDEX stats_backlog_minute_idx ON {schema}.stats_backlog (minute);

-- Jobs that reached each terminal state since the queue was created (rolled up so far).
CREATE TABLE {schema}.stats_total (
    queue     text PRIMARY KEY,
    completed bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    retried   bigint NOT NULL DEFAULT 0
);

-- The watermark: every history row that finished at or before rolled_to is counted. One row; a
-- missing row (an emptied schema) reads as -infinity.
CREATE TABLE {schema}.stats_rollup (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    rolled_to timestamptz NOT NULL
);

-- The history rows that finished after p_after (and at or before p_upto, unless NULL), at most
-- p_limit of them in finished_at order (NULL: all), counted by queue, minute and wait bucket. A
-- plain SQL function, inlined into its callers, so their plans show the index range it reads.
CREATE FUNCTION {schema}.finished_counts(
    p_after timestamptz, p_upto timestamptz, p_limit bigint, p_bounds double precision[]
) RETURNS TABLE (
    queue text, minute timestamptz, bucket integer,
    completed bigint, failed bigint, cancelled bigint, retried bigint
)
LANGUAGE sql STABLE AS $fn$
    -- date_bin and date_part work in timestamps and doubles: extract() computes in numeric,
    -- which tripled the cost of a row.
    SELECT h.queue,
           date_bin('1 minute', h.finished_at, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
           coalesce(width_bucket(
               greatest(date_part('epoch', h.started_at - h.run_at) * 1000, 0), p_bounds), -1),
           count(*) FILTER (WHERE h.state = 'completed'),
           count(*) FILTER (WHERE h.state = 'failed'),
           count(*) FILTER (WHERE h.state = 'cancelled'),
           sum(greatest(h.attempt - 1, 0))::bigint
    FROM (
        SELECT x.queue, x.state, x.attempt, x.run_at, x.started_at, x.finished_at
        FROM {schema}.job_history x
        WHERE x.finished_at > p_after AND (p_upto IS NULL OR x.finished_at <= p_upto)
        ORDER BY x.finished_at
        LIMIT p_limit
    ) h
    GROUP BY 1, 2, 3
$fn$;

-- Count what finished since the watermark, up to p_chunk rows per call, and move the watermark.
-- It stops short of anything a transaction still open may write: an ack stamps finished_at with
-- its transaction's start (or p_now), so no row at or after the oldest open transaction's start is
-- taken (for up to p_hold seconds), nor any in the last p_lag seconds. Two callers (a lease handover) take turns on the
-- watermark row; each statement after the lock sees what the other committed. Returns the rows
-- counted and the new watermark.
CREATE FUNCTION {schema}.stats_rollup(
    p_now timestamptz, p_lag double precision, p_hold double precision, p_chunk bigint,
    p_bounds double precision[]
) RETURNS TABLE (counted bigint, rolled_to timestamptz)
LANGUAGE plpgsql SET jit = off AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    v_after timestamptz;
    v_upto timestamptz;
    v_counted bigint;
BEGIN
    INSERT INTO {schema}.stats_rollup AS r (id, rolled_to) VALUES (true, '-infinity')
    ON CONFLICT (id) DO UPDATE SET rolled_to = r.rolled_to
    RETURNING r.rolled_to INTO v_after;

    SELECT least(
        t_now - make_interval(secs => p_lag),
        -- A transaction open for long (any client's, in this database) holds the counters
        -- back for at most p_hold seconds: rows it finishes after that go uncounted.
        greatest(
            t_now - make_interval(secs => p_hold),
            (SELECT min(a.xact_start) - interval '1 microsecond' FROM pg_stat_activity a
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
               AND a.backend_type = 'client backend')),
        (SELECT x.finished_at FROM {schema}.job_history x WHERE x.finished_at > v_after
         ORDER BY x.finished_at OFFSET p_chunk - 1 LIMIT 1))
    INTO v_upto;
    IF v_upto <= v_after THEN
        RETURN QUERY SELECT 0::bigint, v_after;
        RETURN;
    END IF;

    -- One statement, so the counted rows are read once and written to both tables.
    WITH counted AS MATERIALIZED (
        SELECT * FROM {schema}.finished_counts(v_after, v_upto, NULL, p_bounds)
    ), minutes AS (
        INSERT INTO {schema}.stats_minute AS s
        SELECT * FROM counted
        ON CONFLICT (queue, minute, bucket) DO UPDATE SET
            completed = s.completed + EXCLUDED.completed,
            failed = s.failed + EXCLUDED.failed,
            cancelled = s.cancelled + EXCLUDED.cancelled,
            retried = s.retried + EXCLUDED.retried
    ), totals AS (
        INSERT INTO {schema}.stats_total AS s (queue, completed, failed, cancelled, retried)
        SELECT c.queue, sum(c.completed), sum(c.failed), sum(c.cancelled), sum(c.retried)
        FROM counted c
        GROUP BY c.queue
        ON CONFLICT (queue) DO UPDATE SET
            completed = s.completed + EXCLUDED.completed,
            failed = s.failed + EXCLUDED.failed,
            cancelled = s.cancelled + EXCLUDED.cancelled,
            retried = s.retried + EXCLUDED.retried
    )
    SELECT coalesce(sum(c.completed + c.failed + c.cancelled), 0) INTO v_counted FROM counted c;

    UPDATE {schema}.stats_rollup SET rolled_to = v_upto;
    RETURN QUERY SELECT v_counted, v_upto;
END
$fn$;
