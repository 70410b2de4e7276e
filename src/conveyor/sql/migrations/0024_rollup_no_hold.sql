-- conveyor: non-breaking
-- The counters' rollup no longer lags by p_hold when no other transaction is open.
--
-- The watermark is the earliest of now - lag, the start of the oldest transaction still open
-- (held back at most p_hold), and the chunk's end. With no transaction open the oldest start is
-- NULL, and greatest(now - p_hold, NULL) is now - p_hold: the rollup then stayed p_hold (60 s)
-- behind, and every stats read summed that minute of history itself. No open transaction now
-- counts as none holding the watermark back. The function is 0017's but for that coalesce.

CREATE OR REPLACE FUNCTION {schema}.stats_rollup(
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
            coalesce(
                (SELECT min(a.xact_start) - interval '1 microsecond' FROM pg_stat_activity a
                 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
                   AND a.backend_type = 'client backend'),
                t_now)),
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
    DELETE FROM {schema}.stats_unkept u WHERE u.finished_at <= v_upto;
    RETURN QUERY SELECT v_counted, v_upto;
END
$fn$;
