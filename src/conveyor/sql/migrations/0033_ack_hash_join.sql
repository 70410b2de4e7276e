-- conveyor: non-breaking
-- The ack matches its batch to the live table's rows by a hash of the batch, never by comparing
-- every row with every ack.
--
-- 0030 made the ack read the live table by the batch's ids whatever the statistics say. But
-- after a VACUUM that found the table nearly empty (a worker keeping up leaves it so many
-- times a minute), the generic plan takes those ids for one row and puts them on the outer side
-- of a nested loop whose inner side is the whole batch, unnested again for each row: n x n
-- comparisons. A batch of 200 cost twice what a hash join costs (16 ms against 7.6 ms), 1,000
-- cost 8x, 5,000 took 6 s; and a slow ack lets the next batch grow, so under load (bench.load
-- at 80% of the peak) one slow moment grew into acks of several thousand jobs taking 15-60 s,
-- while the worker's claims went on and its finished jobs stood still. Nested loops are now
-- off inside ack_jobs, whose joins are all of a batch to the rows it names (a hash join on the
-- key), except for the dead letters it sends through insert_jobs, which is planned as anywhere
-- else. ack_jobs is 0030's but for these.
--
-- Only a function replaced with its signature: workers of the previous release keep running.

CREATE OR REPLACE FUNCTION {schema}.ack_jobs(
    p_id uuid[], p_worker uuid[], p_attempt integer[], p_outcome text[], p_result jsonb[],
    p_error jsonb[], p_delay double precision[], p_now timestamptz
) RETURNS TABLE (id uuid, queue text, state text)
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan
SET enable_nestloop = off AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    t_floor timestamptz := coalesce(p_now, clock_timestamp());
    v_id uuid[];
    v_queue text[];
    v_state text[];
    v_due text[];
    v_done uuid[];
    v_zero {schema}.job_archive[];
    v_told integer;
    v_waiting boolean;
    dl_queue text[];
    dl_data jsonb[];
BEGIN
    -- The common batch: completions only, and no wait_for registered to read their outcomes.
    -- One statement: the rows leave the live table, and those that keep history go to the
    -- archive. A job of retention 0 that a completion hook or a dependant needs after all (they
    -- are rare; looked up in a statement after the DELETE, so that an edge whose sender held
    -- the row until it committed is seen) sends the batch back to the general path below: the
    -- block's subtransaction undoes what it wrote.
    IF 'completed' = ALL (p_outcome) AND NOT EXISTS (SELECT FROM {schema}.waiter) THEN
        BEGIN
            WITH a AS (
                SELECT *
                FROM unnest(p_id, p_worker, p_attempt, p_result) AS a(id, worker, attempt, result)
            ),
            finished AS (
                DELETE FROM {schema}.job j
                USING a
                WHERE j.id = a.id AND j.worker_id = a.worker AND j.attempt = a.attempt
                  AND j.id = ANY (p_id)
                RETURNING j.*, a.result AS new_result
            ),
            routes AS (
                SELECT r.retention,
                       {schema}.archive_drop_at(t_now + make_interval(secs => r.retention), t_floor)
                           AS drop_at
                FROM (SELECT DISTINCT f.retention FROM finished f WHERE f.retention > 0) r
            ),
            archived AS (
                INSERT INTO {schema}.job_archive (
                    id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                    retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
                    singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
                    created_at, started_at, finished_at, result, errors, progress, meta, fair_key,
                    drop_at)
                SELECT f.id, f.queue, 'completed', f.data, f.priority, f.run_at, f.attempt,
                       f.retry_limit, f.retry_delay, f.retry_backoff, f.retry_delay_max,
                       f.expire_in, f.retention, f.singleton_key, f.singleton_seconds,
                       f.unique_key, f.dead_letter, f.group_key, f.depends_on, f.worker_id,
                       f.created_at, f.started_at, t_now, f.new_result, f.errors, f.progress,
                       f.meta, f.fair_key, r.drop_at
                FROM finished f JOIN routes r ON r.retention = f.retention
            ),
            unkept AS (
                -- What the counters need of the jobs that leave no row: one row for the batch.
                INSERT INTO {schema}.stats_unkept (finished_at, queue, run_at, started_at, attempt)
                SELECT t_now, array_agg(f.queue), array_agg(f.run_at), array_agg(f.started_at),
                       array_agg(f.attempt)
                FROM finished f WHERE f.retention <= 0
                HAVING count(*) > 0
            )
            SELECT array_agg(f.id), array_agg(f.queue),
                   array_agg(f.id) FILTER (WHERE f.retention <= 0)
            INTO v_id, v_queue, v_done
            FROM finished f;
            IF EXISTS (SELECT FROM {schema}.job_hook k WHERE k.job_id = ANY (v_done))
               OR EXISTS (SELECT FROM {schema}.job_dependency d WHERE d.depends_on = ANY (v_done))
            THEN
                RAISE SQLSTATE 'CVACK';
            END IF;
        EXCEPTION WHEN SQLSTATE 'CVACK' THEN
            v_id := NULL;
            v_done := NULL;
        END;
        IF v_id IS NOT NULL THEN
            PERFORM pg_notify('conveyor:' || {schema_literal}, x.name)
            FROM {schema}.queue x
            WHERE x.name IN (SELECT DISTINCT u FROM unnest(v_queue) AS u)
              AND (x.concurrency IS NOT NULL OR x.policy IN ('singleton', 'stately'));
            RETURN QUERY SELECT u.id, u.queue, 'completed'::text
                         FROM unnest(v_id, v_queue) AS u(id, queue);
            RETURN;
        END IF;
    END IF;
    WITH a AS (
        SELECT *
        FROM unnest(p_id, p_worker, p_attempt, p_outcome, p_result, p_error, p_delay)
             AS a(id, worker, attempt, outcome, result, error, delay)
    ),
    finished AS (
        DELETE FROM {schema}.job j
        USING a
        WHERE j.id = a.id AND j.worker_id = a.worker AND j.attempt = a.attempt
          AND j.id = ANY (p_id)
          AND a.outcome IN ('completed', 'failed')
        RETURNING j.*, a.outcome, a.result AS new_result, a.error AS new_error
    ),
    closed AS MATERIALIZED (
        SELECT f.id, f.queue, f.outcome AS state, f.data, f.priority, f.run_at, f.attempt,
               f.retry_limit, f.retry_delay, f.retry_backoff, f.retry_delay_max, f.expire_in,
               f.retention, f.singleton_key, f.singleton_seconds, f.unique_key, f.dead_letter,
               f.group_key, f.depends_on, f.worker_id, f.created_at, f.started_at,
               t_now AS finished_at, f.new_result AS result,
               CASE WHEN f.new_error IS NULL THEN f.errors ELSE f.errors || f.new_error END
                   AS errors,
               f.progress, f.meta, f.fair_key
        FROM finished f
    ),
    -- Routed once per distinct retention: a batch shares its finish time.
    routes AS (
        SELECT r.retention,
               {schema}.archive_drop_at(t_now + make_interval(secs => r.retention), t_floor)
                   AS drop_at
        FROM (SELECT DISTINCT c.retention FROM closed c
              WHERE c.state = 'completed' AND c.retention > 0) r
    ),
    archived AS (
        INSERT INTO {schema}.job_archive (
            id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
            retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
            singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
            created_at, started_at, finished_at, result, errors, progress, meta, fair_key,
            drop_at)
        SELECT c.*, r.drop_at
        FROM closed c JOIN routes r ON r.retention = c.retention
        WHERE c.state = 'completed'
        RETURNING {schema}.job_archive.id, {schema}.job_archive.queue,
                  {schema}.job_archive.state
    ),
    dead AS (
        INSERT INTO {schema}.job_dead (
            id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
            retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
            singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
            created_at, started_at, finished_at, result, errors, progress, meta, fair_key)
        SELECT c.* FROM closed c WHERE c.state = 'failed'
        RETURNING {schema}.job_dead.id, {schema}.job_dead.queue, {schema}.job_dead.state,
                  {schema}.job_dead.dead_letter, {schema}.job_dead.data
    ),
    requeued AS (
        UPDATE {schema}.job j
        -- A job of a short or stately queue comes back as 'retry', so it never collides with
        -- the one job allowed to wait in 'created'.
        SET state = CASE WHEN a.outcome = 'retry' OR j.queued_key IS NOT NULL THEN 'retry'
                         ELSE 'created' END,
            attempt = CASE WHEN a.outcome = 'retry' THEN j.attempt ELSE j.attempt - 1 END,
            run_at = t_now + make_interval(secs => coalesce(a.delay, 0)),
            worker_id = NULL,
            errors = CASE WHEN a.error IS NULL THEN j.errors ELSE j.errors || a.error END
        FROM a
        WHERE j.id = a.id AND j.worker_id = a.worker AND j.attempt = a.attempt
          AND j.id = ANY (p_id)
          AND a.outcome IN ('retry', 'snooze', 'release')
        RETURNING j.id, j.queue, j.state, coalesce(a.delay, 0) <= 0 AS due
    ),
    changed AS (
        SELECT x.id, x.queue, x.state, NULL::text AS dead_letter, NULL::jsonb AS data,
               false AS due, true AS done
        FROM archived x
        UNION ALL
        SELECT d.id, d.queue, d.state, d.dead_letter, d.data, false, true FROM dead d
        UNION ALL
        SELECT z.id, z.queue, z.state, NULL, NULL, false, false
        FROM closed z WHERE z.state = 'completed' AND z.retention <= 0
        UNION ALL
        SELECT y.id, y.queue, y.state, NULL, NULL, y.due, false FROM requeued y
    )
    SELECT array_agg(c.id), array_agg(c.queue), array_agg(c.state),
           array_agg(DISTINCT c.queue) FILTER (WHERE c.due),
           array_agg(c.id) FILTER (WHERE c.done),
           array_agg(c.dead_letter) FILTER (WHERE c.state = 'failed' AND c.dead_letter IS NOT NULL),
           array_agg(c.data) FILTER (WHERE c.state = 'failed' AND c.dead_letter IS NOT NULL),
           (SELECT array_agg(ROW(z.id, z.queue, z.state, z.data, z.priority, z.run_at, z.attempt,
                       z.retry_limit, z.retry_delay, z.retry_backoff, z.retry_delay_max,
                       z.expire_in, z.retention, z.singleton_key, z.singleton_seconds,
                       z.unique_key, z.dead_letter, z.group_key, z.depends_on, z.worker_id,
                       z.created_at, z.started_at, z.finished_at, z.result, z.errors,
                       z.progress, NULL, z.meta, NULL, z.fair_key)::{schema}.job_archive)
            FROM closed z
            WHERE z.state = 'completed' AND z.retention <= 0)
    INTO v_id, v_queue, v_state, v_due, v_done, dl_queue, dl_data, v_zero
    FROM changed c;

    IF v_id IS NULL THEN
        RETURN;
    END IF;
    -- Outcomes and finished ids reach wait_for only while one is registered (see 0006).
    v_waiting := EXISTS (SELECT FROM {schema}.waiter);
    -- A job of retention 0 is archived after all when a hook or a dependant needs its row, or,
    -- while someone waits, when its outcome is too large for a notification; the others'
    -- outcomes are notified only while someone waits.
    IF v_zero IS NOT NULL THEN
        WITH kept AS (
            INSERT INTO {schema}.job_archive (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
                singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
                created_at, started_at, finished_at, result, errors, progress, queued_key, meta,
                fair_key, drop_at)
            SELECT z.id, z.queue, z.state, z.data, z.priority, z.run_at, z.attempt,
                   z.retry_limit, z.retry_delay, z.retry_backoff, z.retry_delay_max,
                   z.expire_in, z.retention, z.singleton_key, z.singleton_seconds, z.unique_key,
                   z.dead_letter, z.group_key, z.depends_on, z.worker_id, z.created_at,
                   z.started_at, z.finished_at, z.result, z.errors, z.progress, NULL, z.meta,
                   z.fair_key, {schema}.archive_drop_at(t_now, t_floor)
            FROM unnest(v_zero) AS z
            WHERE CASE WHEN v_waiting THEN octet_length(
                      (to_jsonb(z) - 'data' - 'queued_key' - 'meta' - 'drop_at')::text) > 3800
                  ELSE false END
               OR EXISTS (SELECT FROM {schema}.job_hook k WHERE k.job_id = z.id)
               OR EXISTS (SELECT FROM {schema}.job_dependency d WHERE d.depends_on = z.id)
            RETURNING {schema}.job_archive.id
        ), told AS (
            SELECT o.body, sum(octet_length(o.body) + 1) OVER (ORDER BY o.n) AS upto
            FROM (SELECT (to_jsonb(z) - 'data' - 'queued_key' - 'meta' - 'drop_at')::text AS body,
                         row_number() OVER () AS n
                  FROM unnest(v_zero) AS z
                  WHERE v_waiting AND z.id NOT IN (SELECT k.id FROM kept k)) o
        )
        -- Each outcome is at most 3800 bytes, so a group of those ending in one 3800-byte
        -- stretch stays under the 8000-byte limit.
        SELECT array_cat(v_done, (SELECT array_agg(k.id) FROM kept k)),
               (SELECT count(pg_notify('conveyor:' || {schema_literal} || ':done',
                                       '[' || g.bodies || ']'))
                FROM (SELECT string_agg(t.body, ',') AS bodies
                      FROM told t GROUP BY (t.upto - 1) / 3800) g)::integer
        INTO v_done, v_told;
    END IF;
    IF v_zero IS NOT NULL THEN
        -- The counters' row for the batch's jobs that leave none (those kept are in v_done).
        INSERT INTO {schema}.stats_unkept (finished_at, queue, run_at, started_at, attempt)
        SELECT t_now, array_agg(z.queue), array_agg(z.run_at), array_agg(z.started_at),
               array_agg(z.attempt)
        FROM unnest(v_zero) AS z
        WHERE v_done IS NULL OR z.id <> ALL (v_done)
        HAVING count(*) > 0;
    END IF;
    IF dl_queue IS NOT NULL THEN
        -- insert_jobs finds unique keys by nested loops over the live table, and a plan it
        -- made here would be kept for every later call of this connection.
        PERFORM set_config('enable_nestloop', 'on', true);
        PERFORM {schema}.insert_jobs(
            ARRAY(SELECT {schema}.new_job(u.q, u.d) FROM unnest(dl_queue, dl_data) AS u(q, d)),
            '{}', p_now);
    END IF;
    -- Wake workers for jobs queued again now, and producers waiting for outcomes (wait_for):
    -- finished ids go out 200 to a notification, well under NOTIFY's 8000-byte payload limit.
    PERFORM pg_notify('conveyor:' || {schema_literal}, q) FROM unnest(v_due) AS q;
    -- A finished job frees a slot of a limited queue: wake the workers waiting on it.
    PERFORM pg_notify('conveyor:' || {schema_literal}, x.name)
    FROM {schema}.queue x
    WHERE x.name IN (SELECT DISTINCT u FROM unnest(v_queue) AS u)
      AND (x.concurrency IS NOT NULL OR x.policy IN ('singleton', 'stately'));
    -- Only while some wait_for is registered: a notifying commit holds a cluster-wide lock
    -- through its WAL flush, so notifying every batch would serialise the acks of all workers.
    IF v_waiting THEN
        PERFORM pg_notify('conveyor:' || {schema_literal} || ':done',
                          string_agg(d.id::text, ','))
        FROM (SELECT u.id, (row_number() OVER () - 1) / 200 AS chunk
              FROM unnest(v_done) AS u(id)) d
        GROUP BY d.chunk;
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_id, v_queue, v_state);
END
$fn$;
