-- conveyor: non-breaking
-- The counters read the rows finished since their watermark along the finished_at indexes,
-- whatever the planner knows of the newest partitions.
--
-- Those partitions are written for a minute and never analyzed while they matter (autovacuum
-- analyzes a table once its changes reach a share of it; a partitioned parent, never). With no
-- statistics the planner guesses that "finished after X" holds a third of a partition, so the
-- rollup's search for its chunk's end (at most p_chunk rows after the watermark) sorted the
-- newest partitions whole, with two parallel workers: at 6,250 jobs/s on two cores it ran
-- 0.3-0.65 s about once a second on both cores, and the stats reads (queue_stats, the series,
-- every 2 s per open dashboard) sorted them too. Bounded on both sides, the guess is a range's
-- (half a percent), so each partition is read along its index; once analyzed, the planner
-- finds the newest values at the index's end either way. The rollup never runs parallel
-- workers: it is background work beside the hot path, which needs those cores.
--
-- Only functions replaced with their signatures: workers of the previous release keep running.

CREATE OR REPLACE FUNCTION {schema}.finished_counts(
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
        -- Each part limited on its own: one ORDER BY over both would sort the history instead
        -- of reading it along its finished_at indexes.
        (SELECT x.queue, x.state, x.attempt, x.run_at, x.started_at, x.finished_at
         FROM {schema}.job_history x
         WHERE x.finished_at > p_after AND x.finished_at <= coalesce(p_upto, 'infinity')
         ORDER BY x.finished_at
         LIMIT p_limit)
        UNION ALL
        (SELECT u.queue, 'completed', u.attempt, u.run_at, u.started_at, s.finished_at
         FROM {schema}.stats_unkept s
         CROSS JOIN LATERAL unnest(s.queue, s.run_at, s.started_at, s.attempt)
              AS u(queue, run_at, started_at, attempt)
         WHERE s.finished_at > p_after AND s.finished_at <= coalesce(p_upto, 'infinity')
         ORDER BY s.finished_at
         LIMIT p_limit)
    ) h
    GROUP BY 1, 2, 3
$fn$;

-- As in 0024, with its search for the chunk's end bounded by now.
CREATE OR REPLACE FUNCTION {schema}.stats_rollup(
    p_now timestamptz, p_lag double precision, p_hold double precision, p_chunk bigint,
    p_bounds double precision[]
) RETURNS TABLE (counted bigint, rolled_to timestamptz)
LANGUAGE plpgsql SET jit = off SET max_parallel_workers_per_gather = 0 AS $fn$
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
            coalesce(
                (SELECT min(a.xact_start) - interval '1 microsecond' FROM pg_stat_activity a
                 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                   AND a.backend_type = 'client backend'),
                t_now)),
        -- Bounded by now as well: a row after it could only end the chunk later than the
        -- first bound above.
        (SELECT x.finished_at FROM {schema}.job_history x
         WHERE x.finished_at > v_after AND x.finished_at <= t_now
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
    DELETE FROM {schema}.stats_unkept u WHERE u.finished_at <= v_upto;
    RETURN QUERY SELECT v_counted, v_upto;
END
$fn$;
