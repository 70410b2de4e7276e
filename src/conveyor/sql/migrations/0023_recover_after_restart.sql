-- conveyor: non-breaking
-- A PostgreSQL restart no longer makes recovery take back the jobs of every live worker.
--
-- No worker can send a heartbeat while the server is down, so after a restart that lasted
-- longer than stale_after every worker's last heartbeat looked stale: the first recovery pass
-- deleted their rows and failed their running attempts (WorkerLost), and the jobs ran again
-- while the first attempts were still running (fenced, but run twice). A worker's silence is now
-- counted from its last heartbeat or from the server's start, whichever is later: after a
-- restart every worker has stale_after to beat again, and one that died meanwhile is still
-- recovered, that much later. The function is 0005's but for that condition.

CREATE OR REPLACE FUNCTION {schema}.recover_jobs(
    p_stale_before timestamptz, p_grace double precision, p_now timestamptz
) RETURNS TABLE (id uuid, queue text, state text)
LANGUAGE plpgsql SET jit = off AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    v_unstarted text[];
    v_id uuid[];
    v_worker uuid[];
    v_attempt integer[];
    v_outcome text[];
    v_error jsonb[];
BEGIN
    WITH gone AS (
        DELETE FROM {schema}.worker w
        WHERE greatest(w.heartbeat_at, pg_postmaster_start_time()) < p_stale_before
        RETURNING w.id, w.metadata
    )
    SELECT coalesce(array_agg(g.id::text || '|' || u.claim), '{}') INTO v_unstarted
    FROM gone g
    CROSS JOIN LATERAL jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(g.metadata -> 'unstarted') = 'array'
             THEN g.metadata -> 'unstarted' ELSE '[]'::jsonb END) AS u(claim);

    WITH lost AS (
        SELECT j.id, j.worker_id, j.attempt, j.retry_limit, w.id AS alive,
               (j.worker_id::text || '|' || j.id::text || '/' || j.attempt) = ANY (v_unstarted)
               AND j.retry_limit < 10000
               AND 2 * (SELECT count(*) FROM jsonb_array_elements(j.errors) e
                        WHERE e ->> 'type' = 'ClaimReleased') < j.retry_limit + 1 AS unstarted
        FROM {schema}.job j
        LEFT JOIN {schema}.worker w ON w.id = j.worker_id
        WHERE j.state = 'active'
          AND (w.id IS NULL
               OR j.started_at + make_interval(secs => j.expire_in + p_grace) < t_now)
        FOR UPDATE OF j
    ), given_back AS (
        UPDATE {schema}.job j SET retry_limit = j.retry_limit + 1
        FROM lost l
        WHERE j.id = l.id AND l.unstarted
    )
    SELECT array_agg(l.id), array_agg(l.worker_id), array_agg(l.attempt),
           array_agg(CASE WHEN l.unstarted OR l.attempt <= l.retry_limit THEN 'retry'
                          ELSE 'failed' END),
           array_agg(jsonb_build_object(
               'attempt', l.attempt,
               'type', CASE WHEN l.unstarted THEN 'ClaimReleased'
                            WHEN l.alive IS NULL THEN 'WorkerLost'
                            ELSE 'Expired' END,
               'message', CASE WHEN l.unstarted
                               THEN 'the worker that claimed this job stopped before starting '
                                    || 'it; the attempt does not count (retry_limit + 1)'
                               WHEN l.alive IS NULL
                               THEN 'the worker running this attempt stopped sending heartbeats'
                               ELSE 'the attempt ran past expire_in and its worker did not stop it'
                          END,
               'traceback', NULL, 'worker', l.worker_id, 'at', t_now))
    INTO v_id, v_worker, v_attempt, v_outcome, v_error
    FROM lost l;
    IF v_id IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM {schema}.ack_jobs(
        v_id, v_worker, v_attempt, v_outcome, NULL, v_error, NULL, p_now);
END
$fn$;
