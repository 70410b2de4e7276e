-- conveyor: non-breaking
-- Quiet acknowledgements (issue 14). Same signatures: workers of the previous release run
-- unchanged on this schema. A wait_for of the previous release registers no waiter, so during a
-- rolling deploy it returns at its timeout instead of at once (docs/howto/deploy.md).
--
-- PostgreSQL serialises notifying commits under one cluster-wide lock held through the WAL
-- flush, so an ack batch that notifies cannot share a flush with any other notifying commit.
-- ack_jobs notified the ':done' channel on every batch for wait_for's sake, usually with nobody
-- listening. Now a wait_for registers itself in the waiter table for as long as it waits, and an
-- ack notifies ':done' only while that table has a row.
--
-- A wait_for registers itself before it reads its job. An ack that looked for waiters just before
-- the registration and commits just after the wait's read notifies nobody: the wait reads its
-- job again at least every second, so that case costs at most that. A row left behind by a
-- process that died while waiting expires.

CREATE TABLE {schema}.waiter (
    id         uuid PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

-- As in 0001, but ':done' is notified only while a waiter is registered.
CREATE OR REPLACE FUNCTION {schema}.ack_jobs(
    p_id uuid[], p_worker uuid[], p_attempt integer[], p_outcome text[], p_result jsonb[],
    p_error jsonb[], p_delay double precision[], p_now timestamptz
) RETURNS TABLE (id uuid, queue text, state text)
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    v_id uuid[];
    v_queue text[];
    v_state text[];
    v_due text[];
    dl_queue text[];
    dl_data jsonb[];
BEGIN
    WITH a AS (
        SELECT *
        FROM unnest(p_id, p_worker, p_attempt, p_outcome, p_result, p_error, p_delay)
             AS a(id, worker, attempt, outcome, result, error, delay)
    ),
    finished AS (
        DELETE FROM {schema}.job j
        USING a
        WHERE j.id = a.id AND j.worker_id = a.worker AND j.attempt = a.attempt
          AND a.outcome IN ('completed', 'failed')
        RETURNING j.*, a.outcome, a.result AS new_result, a.error AS new_error
    ),
    archived AS (
        INSERT INTO {schema}.job_history
        SELECT f.id, f.queue, f.outcome, f.data, f.priority, f.run_at, f.attempt, f.retry_limit,
               f.retry_delay, f.retry_backoff, f.retry_delay_max, f.expire_in, f.retention,
               f.singleton_key, f.singleton_seconds, f.unique_key, f.dead_letter, f.group_key,
               f.depends_on, f.worker_id, f.created_at, f.started_at, t_now, f.new_result,
               CASE WHEN f.new_error IS NULL THEN f.errors ELSE f.errors || f.new_error END,
               f.progress
        FROM finished f
        RETURNING {schema}.job_history.id, {schema}.job_history.queue,
                  {schema}.job_history.state, {schema}.job_history.dead_letter,
                  {schema}.job_history.data
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
          AND a.outcome IN ('retry', 'snooze', 'release')
        RETURNING j.id, j.queue, j.state, coalesce(a.delay, 0) <= 0 AS due
    ),
    changed AS (
        SELECT x.id, x.queue, x.state, x.dead_letter, x.data, false AS due FROM archived x
        UNION ALL
        SELECT y.id, y.queue, y.state, NULL, NULL, y.due FROM requeued y
    )
    SELECT array_agg(c.id), array_agg(c.queue), array_agg(c.state),
           array_agg(DISTINCT c.queue) FILTER (WHERE c.due),
           array_agg(c.dead_letter) FILTER (WHERE c.state = 'failed' AND c.dead_letter IS NOT NULL),
           array_agg(c.data) FILTER (WHERE c.state = 'failed' AND c.dead_letter IS NOT NULL)
    INTO v_id, v_queue, v_state, v_due, dl_queue, dl_data
    FROM changed c;

    IF v_id IS NULL THEN
        RETURN;
    END IF;
    IF dl_queue IS NOT NULL THEN
        PERFORM {schema}.insert_jobs(
            ARRAY(SELECT gen_random_uuid() FROM generate_series(1, cardinality(dl_queue))),
            dl_queue, dl_data, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, '{}', p_now);
    END IF;
    -- Wake workers for jobs queued again now, and producers waiting for outcomes (wait_for):
    -- finished ids go out 200 to a notification, well under NOTIFY's 8000-byte payload limit.
    PERFORM pg_notify('conveyor:' || {schema_literal}, q) FROM unnest(v_due) AS q;
    -- A finished job frees a slot of a limited queue: wake the workers waiting on it.
    PERFORM pg_notify('conveyor:' || {schema_literal}, x.name)
    FROM {schema}.queue x
    WHERE x.name IN (SELECT DISTINCT u FROM unnest(v_queue) AS u)
      AND (x.concurrency IS NOT NULL OR x.policy IN ('singleton', 'stately'));
    -- Only while some wait_for is registered (see the waiter table): a notifying commit holds
    -- a cluster-wide lock through its WAL flush, so notifying every batch would serialise the
    -- acks of all workers.
    IF EXISTS (SELECT FROM {schema}.waiter) THEN
        PERFORM pg_notify('conveyor:' || {schema_literal} || ':done', string_agg(d.id::text, ','))
        FROM (SELECT u.id, (row_number() OVER () - 1) / 200 AS chunk
              FROM unnest(v_id, v_state) AS u(id, state)
              WHERE u.state IN ('completed', 'failed')) d
        GROUP BY d.chunk;
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_id, v_queue, v_state);
END
$fn$;
