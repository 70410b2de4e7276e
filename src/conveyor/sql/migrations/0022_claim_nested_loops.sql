-- conveyor: non-breaking
-- The claim's UPDATE joins the jobs it picked back to the table by nested loops on the primary
-- key, as 0020 plans claim_fair. claim_jobs runs a cached generic plan, where LIMIT p_limit is
-- taken for a tenth of the queue's rows; for that many the planner preferred a merge join that
-- sorts the picked ids and walks job_pkey from its start. With 100,000 older jobs of another
-- queue in the table that walk read all 100,000 entries: a claim of 100 jobs took 55 ms instead
-- of about one. The function is the same as 0014's but for its two SET clauses.

CREATE OR REPLACE FUNCTION {schema}.claim_jobs(
    p_queues text[], p_worker uuid, p_limit integer, p_now timestamptz
) RETURNS SETOF {schema}.job_fetched
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
SET enable_mergejoin = off SET enable_hashjoin = off
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT c.id
        FROM unnest(p_queues) AS q(name)
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.run_at
            FROM {schema}.job j
            WHERE j.queue = q.name AND j.state IN ('created', 'retry')
              AND j.run_at <= coalesce(p_now, now()) AND j.group_key IS NULL
            ORDER BY j.priority DESC, j.run_at, j.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) c
        ORDER BY c.priority DESC, c.run_at, c.id
        LIMIT p_limit
    )
    UPDATE {schema}.job j
    SET state = 'active', attempt = j.attempt + 1, worker_id = p_worker,
        started_at = coalesce(p_now, now())
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.queue, j.state, j.data, j.priority, j.attempt, j.retry_limit,
              j.retry_delay, j.retry_backoff, j.retry_delay_max, j.expire_in, j.retention,
              j.run_at, j.created_at, j.started_at, j.finished_at, j.meta,
              nullif(j.errors, '[]'), j.progress, j.singleton_key, j.singleton_seconds,
              j.unique_key, j.dead_letter, j.group_key, j.depends_on, j.worker_id;
END
$fn$;
