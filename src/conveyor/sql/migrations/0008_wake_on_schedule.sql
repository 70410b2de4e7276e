-- conveyor: non-breaking
-- Wake-ups for scheduled jobs (issue 14). Same signature: workers of the previous release run
-- unchanged on this schema (they are woken a little more often, and find nothing due).
--
-- A send notified its queue only for a job due at once, so a job sent with start_after was found
-- by a worker's next poll, up to a poll interval after it fell due. Now every send notifies its
-- queues (still once per statement and queue); a worker that finds nothing due looks up when the
-- next job of its queues falls due and wakes itself then.

-- As in 0004, but a job due later notifies its queue too.
CREATE OR REPLACE FUNCTION {schema}.insert_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
BEGIN
    INSERT INTO {schema}.queue (name)
    SELECT DISTINCT n FROM unnest(p_queue) AS n
    ON CONFLICT (name) DO NOTHING;

    IF p_unique_key IS NULL AND p_singleton_seconds IS NULL AND NOT EXISTS (
        SELECT FROM {schema}.queue x
        WHERE x.name = ANY (p_queue) AND x.policy IN ('short', 'stately')
    ) THEN
        WITH ins AS (
            INSERT INTO {schema}.job (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, dead_letter, group_key,
                depends_on, created_at)
            SELECT r.id, r.queue, 'created', r.data, r.priority, r.run_at, 0, r.retry_limit,
                   r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
                   r.dead_letter, r.group_key, r.depends_on, r.created_at
            FROM {schema}.resolve_jobs(
                p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit,
                p_retry_delay, p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention,
                NULL, NULL, NULL, NULL, p_dead_letter, p_group_key, p_depends_on,
                p_defaults, p_now) r
            RETURNING {schema}.job.queue AS q
        )
        SELECT count(pg_notify('conveyor:' || {schema_literal}, w.q)) INTO STRICT ord
        FROM (SELECT DISTINCT x.q FROM ins x) w;
        RETURN;
    END IF;

    RETURN QUERY
    WITH resolved AS MATERIALIZED (
        SELECT r.*,
               (SELECT w.id FROM {schema}.job w
                 WHERE r.unique_key IS NOT NULL AND w.queue = r.queue
                   AND w.unique_key = r.unique_key AND w.state = 'waiting') AS waiting_id
        FROM {schema}.resolve_jobs(
            p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit, p_retry_delay,
            p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention, p_singleton_key,
            p_singleton_seconds, p_unique_key, p_unique_replace, p_dead_letter, p_group_key,
            p_depends_on, p_defaults, p_now) r
    ),
    replaced AS (
        UPDATE {schema}.job j
        SET data = r.data, priority = r.priority, run_at = r.run_at,
            retry_limit = r.retry_limit, retry_delay = r.retry_delay,
            retry_backoff = r.retry_backoff, retry_delay_max = r.retry_delay_max,
            expire_in = r.expire_in, retention = r.retention, dead_letter = r.dead_letter,
            group_key = r.group_key,
            -- A waiting job keeps the dependencies it waits for.
            depends_on = CASE WHEN j.state = 'waiting' THEN j.depends_on ELSE r.depends_on END
        FROM resolved r
        WHERE r.unique_replace AND j.queue = r.queue AND j.unique_key = r.unique_key
          AND (j.id = r.waiting_id
               OR (r.waiting_id IS NULL AND j.state IN ('created', 'retry')))
        RETURNING j.id, j.queue, j.run_at, j.state, r.ord, r.created_at
    ),
    -- The running holders that replacing sends queue behind. The lock keeps each from leaving
    -- the live table until this transaction's dependency edges are committed, where the ack
    -- that finishes it will find them (as link_jobs does); a holder that finished or changed
    -- state meanwhile is skipped, and its send resolves to NULL or inserts a new holder.
    held AS (
        SELECT j.id AS holder, r.ord
        FROM resolved r
        JOIN {schema}.job j ON j.queue = r.queue AND j.unique_key = r.unique_key
        WHERE r.unique_replace AND r.waiting_id IS NULL AND j.state = 'active'
        FOR KEY SHARE OF j
    ),
    queued_behind AS (
        INSERT INTO {schema}.job (
            id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
            retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
            singleton_seconds, unique_key, dead_letter, group_key, depends_on, created_at,
            queued_key)
        SELECT r.id, r.queue, 'waiting', r.data, r.priority, r.run_at, 0, r.retry_limit,
               r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
               NULL, NULL, r.unique_key, r.dead_letter, r.group_key, r.depends_on,
               r.created_at, r.queued_key
        FROM resolved r
        JOIN held h ON h.ord = r.ord
        -- Another send queued the waiting job first: this one resolves to NULL and asks again.
        ON CONFLICT DO NOTHING
        RETURNING {schema}.job.id
    ),
    edges AS (
        INSERT INTO {schema}.job_dependency (depends_on, job_id, on_failure)
        SELECT h.holder, q.id, 'run'
        FROM queued_behind q
        JOIN resolved r ON r.id = q.id
        JOIN held h ON h.ord = r.ord
        RETURNING job_id
    ),
    throttled AS (
        INSERT INTO {schema}.throttle (queue, key, window_start, window_end, job_id)
        SELECT DISTINCT ON (r.queue, r.singleton_key, r.singleton_on)
               r.queue, r.singleton_key, r.singleton_on,
               r.singleton_on + make_interval(secs => r.singleton_seconds), r.id
        FROM resolved r
        WHERE r.singleton_seconds IS NOT NULL
        ORDER BY r.queue, r.singleton_key, r.singleton_on, r.ord
        ON CONFLICT DO NOTHING
        RETURNING job_id
    ),
    ins AS (
        INSERT INTO {schema}.job (
            id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
            retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
            singleton_seconds, unique_key, dead_letter, group_key, depends_on, created_at,
            queued_key)
        SELECT r.id, r.queue, 'created', r.data, r.priority, r.run_at, 0, r.retry_limit,
               r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
               r.singleton_key, r.singleton_seconds, r.unique_key, r.dead_letter, r.group_key,
               r.depends_on, r.created_at, r.queued_key
        FROM resolved r
        WHERE r.waiting_id IS NULL
          AND NOT EXISTS (SELECT FROM replaced x WHERE x.ord = r.ord)
          AND NOT EXISTS (SELECT FROM held h WHERE h.ord = r.ord)
          AND (r.singleton_seconds IS NULL OR r.id IN (SELECT t.job_id FROM throttled t))
        -- Any unique index: unique_key, or the one waiting job of a short or stately queue.
        ON CONFLICT DO NOTHING
        RETURNING {schema}.job.id, {schema}.job.queue, {schema}.job.run_at,
                  {schema}.job.created_at
    ),
    notified AS (
        SELECT count(pg_notify('conveyor:' || {schema_literal}, w.queue)) AS n
        FROM (SELECT DISTINCT s.queue FROM (
                  SELECT x.queue FROM ins x
                  UNION ALL SELECT y.queue FROM replaced y WHERE y.state <> 'waiting') s) w
    )
    SELECT r.ord,
           coalesce(
               x.id,
               y.id,
               b.id,
               -- A keeping send resolves to the job its key runs next: the waiting one, else
               -- the holder. A replacing send that wrote nothing asks again (NULL).
               (SELECT j.id FROM {schema}.job j
                 WHERE r.unique_key IS NOT NULL AND NOT r.unique_replace AND j.queue = r.queue
                   AND j.unique_key = r.unique_key
                 ORDER BY j.state = 'waiting' DESC
                 LIMIT 1),
               (SELECT t.job_id FROM {schema}.throttle t
                 WHERE r.singleton_seconds IS NOT NULL AND t.queue = r.queue
                   AND t.key = r.singleton_key AND t.window_start = r.singleton_on),
               (SELECT j.id FROM {schema}.job j
                 WHERE r.unique_key IS NULL AND r.queued_key IS NOT NULL
                   AND j.queued_key = r.queued_key AND j.state = 'created')),
           x.id IS NOT NULL OR b.id IS NOT NULL
    FROM resolved r
    CROSS JOIN notified
    CROSS JOIN (SELECT count(*) FROM edges) e
    LEFT JOIN ins x ON x.id = r.id
    LEFT JOIN replaced y ON y.ord = r.ord
    LEFT JOIN queued_behind b ON b.id = r.id
    ORDER BY r.ord;
END
$fn$;
