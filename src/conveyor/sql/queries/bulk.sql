-- Bulk actions on the jobs a filter matches (conveyor.bulk). Each statement changes at most
-- `limit` rows, the next ones by id after `after` (a keyset walk: a row changed once is never
-- visited again, and a batch never rereads what earlier ones passed over), locking them with
-- SKIP LOCKED so it never waits for, nor blocks for long, a worker's claim or acknowledgement.
-- Every statement returns how many rows it changed and the last id it picked (NULL: done).
-- The filter: queue, created before `before`, `search` (an ILIKE pattern escaped by
-- conveyor.options, matched against the payload's JSON text and the id), group_key.

-- How many jobs the action would change, and the cutoff of `older_than` the batches then use.
-- name: job_bulk_count :one
WITH t AS (
    SELECT coalesce(%(now)s::timestamptz, now())
           - make_interval(secs => %(older_than)s::double precision) AS before
)
SELECT t.before,
       (SELECT count(*) FROM {schema}.job j
        WHERE j.state = ANY (%(live_states)s::text[])
          AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
          AND (t.before IS NULL OR j.created_at < t.before)
          AND (%(search)s::text IS NULL OR j.data::text ILIKE %(search)s::text
               OR j.id::text ILIKE %(search)s::text)
          AND (%(group_key)s::text IS NULL OR j.group_key = %(group_key)s::text))
       + (SELECT count(*) FROM {schema}.job_history h
          WHERE h.state = ANY (%(history_states)s::text[])
            AND (%(queue)s::text IS NULL OR h.queue = %(queue)s::text)
            AND (t.before IS NULL OR h.created_at < t.before)
            AND (%(search)s::text IS NULL OR h.data::text ILIKE %(search)s::text
                 OR h.id::text ILIKE %(search)s::text)
            AND (%(group_key)s::text IS NULL OR h.group_key = %(group_key)s::text)) AS matched
FROM t;

-- Cancel live jobs, as job_cancel does one: to the history as 'cancelled'; a worker running one
-- is told on the cancel channel (and its guarded ack matches nothing), waiters on the done one.
-- name: job_bulk_cancel :one
WITH picked AS (
    SELECT j.id FROM {schema}.job j
    WHERE j.id > %(after)s::uuid AND j.state = ANY (%(states)s::text[])
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
      AND (%(before)s::timestamptz IS NULL OR j.created_at < %(before)s::timestamptz)
      AND (%(search)s::text IS NULL OR j.data::text ILIKE %(search)s::text
           OR j.id::text ILIKE %(search)s::text)
      AND (%(group_key)s::text IS NULL OR j.group_key = %(group_key)s::text)
    ORDER BY j.id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM {schema}.job j USING picked p WHERE j.id = p.id RETURNING j.*
), t AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now,
           coalesce(%(now)s::timestamptz, clock_timestamp()) AS floor
), archived AS (
    INSERT INTO {schema}.job_archive (
        id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
        retry_backoff, retry_delay_max, expire_in, retention, singleton_key, singleton_seconds,
        unique_key, dead_letter, group_key, depends_on, worker_id, created_at, started_at,
        finished_at, result, errors, progress, meta, fair_key, drop_at)
    SELECT m.id, m.queue, 'cancelled', m.data, m.priority, m.run_at, m.attempt, m.retry_limit,
           m.retry_delay, m.retry_backoff, m.retry_delay_max, m.expire_in, m.retention,
           m.singleton_key, m.singleton_seconds, m.unique_key, m.dead_letter, m.group_key,
           m.depends_on, m.worker_id, m.created_at, m.started_at, t.now, m.result, m.errors,
           m.progress, m.meta, m.fair_key,
           {schema}.archive_drop_at(t.now + make_interval(secs => m.retention), t.floor)
    FROM moved m, t
    RETURNING id
), told AS (
    SELECT pg_notify(%(cancel_channel)s::text, m.id::text) FROM moved m WHERE m.state = 'active'
    UNION ALL
    -- One notification per 200 finished ids, and only while a wait_for is registered (as
    -- acks do, see 0006): a notifying commit holds a cluster-wide lock through its flush.
    SELECT pg_notify(%(done_channel)s::text, string_agg(d.id::text, ','))
    FROM (SELECT x.id, (row_number() OVER () - 1) / 200 AS chunk FROM moved x) d
    WHERE EXISTS (SELECT FROM {schema}.waiter)
    GROUP BY d.chunk
)
SELECT (SELECT count(*) FROM archived) AS affected, (SELECT p.id FROM picked p ORDER BY p.id DESC LIMIT 1) AS last,
       (SELECT count(*) FROM told) AS told;

-- Bring queued jobs forward: due now; their queues' workers are woken.
-- name: job_bulk_retry_live :one
WITH picked AS (
    SELECT j.id FROM {schema}.job j
    WHERE j.id > %(after)s::uuid AND j.state = ANY (%(states)s::text[])
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
      AND (%(before)s::timestamptz IS NULL OR j.created_at < %(before)s::timestamptz)
      AND (%(search)s::text IS NULL OR j.data::text ILIKE %(search)s::text
           OR j.id::text ILIKE %(search)s::text)
      AND (%(group_key)s::text IS NULL OR j.group_key = %(group_key)s::text)
    ORDER BY j.id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE {schema}.job j SET run_at = coalesce(%(now)s::timestamptz, now())
    FROM picked p WHERE j.id = p.id
    RETURNING j.queue
), woken AS (
    SELECT pg_notify(%(channel)s::text, x.queue) FROM (SELECT DISTINCT queue FROM moved) x
)
SELECT (SELECT count(*) FROM moved) AS affected, (SELECT p.id FROM picked p ORDER BY p.id DESC LIMIT 1) AS last, (SELECT count(*) FROM woken) AS told;

-- Queue failed or cancelled jobs again with a fresh attempt count, as job_retry does one. A job
-- whose unique key another live job holds now stays where it is (ON CONFLICT), not the batch.
-- name: job_bulk_retry_history :one
WITH picked_archived AS (
    SELECT h.id FROM {schema}.job_archive h
    WHERE h.id > %(after)s::uuid AND h.state = ANY (%(states)s::text[])
      AND (%(queue)s::text IS NULL OR h.queue = %(queue)s::text)
      AND (%(before)s::timestamptz IS NULL OR h.created_at < %(before)s::timestamptz)
      AND (%(search)s::text IS NULL OR h.data::text ILIKE %(search)s::text
           OR h.id::text ILIKE %(search)s::text)
      AND (%(group_key)s::text IS NULL OR h.group_key = %(group_key)s::text)
    ORDER BY h.id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), picked_dead AS (
    SELECT h.id FROM {schema}.job_dead h
    WHERE h.id > %(after)s::uuid AND 'failed' = ANY (%(states)s::text[])
      AND (%(queue)s::text IS NULL OR h.queue = %(queue)s::text)
      AND (%(before)s::timestamptz IS NULL OR h.created_at < %(before)s::timestamptz)
      AND (%(search)s::text IS NULL OR h.data::text ILIKE %(search)s::text
           OR h.id::text ILIKE %(search)s::text)
      AND (%(group_key)s::text IS NULL OR h.group_key = %(group_key)s::text)
    ORDER BY h.id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), picked AS (
    -- The next batch of both tables: a row locked above but not picked has a higher id than
    -- the last one picked, so the next batch visits it.
    SELECT x.id FROM (SELECT id FROM picked_archived UNION ALL SELECT id FROM picked_dead) x
    ORDER BY x.id
    LIMIT %(limit)s::integer
), requeued AS (
    INSERT INTO {schema}.job
    SELECT r.id, r.queue, 'created', r.data, r.priority, coalesce(%(now)s::timestamptz, now()),
           0, r.retry_limit, r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in,
           r.retention, r.singleton_key, r.singleton_seconds, r.unique_key, r.dead_letter,
           r.group_key, r.depends_on, NULL, r.created_at, NULL, NULL, NULL, r.errors, NULL,
           NULL, r.meta, r.fair_key
    FROM {schema}.job_history r JOIN picked p ON p.id = r.id
    ON CONFLICT DO NOTHING
    RETURNING id, queue
), revived AS (
    DELETE FROM {schema}.job_archive h USING requeued q WHERE h.id = q.id RETURNING h.id
), revived_dead AS (
    DELETE FROM {schema}.job_dead h USING requeued q WHERE h.id = q.id RETURNING h.id
), woken AS (
    SELECT pg_notify(%(channel)s::text, x.queue) FROM (SELECT DISTINCT queue FROM requeued) x
)
SELECT (SELECT count(*) FROM revived) + (SELECT count(*) FROM revived_dead) AS affected, (SELECT p.id FROM picked p ORDER BY p.id DESC LIMIT 1) AS last, (SELECT count(*) FROM woken) AS told;

-- Delete live jobs that are not running; anyone waiting for one is told.
-- name: job_bulk_delete_live :one
WITH picked AS (
    SELECT j.id FROM {schema}.job j
    WHERE j.id > %(after)s::uuid AND j.state = ANY (%(states)s::text[])
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
      AND (%(before)s::timestamptz IS NULL OR j.created_at < %(before)s::timestamptz)
      AND (%(search)s::text IS NULL OR j.data::text ILIKE %(search)s::text
           OR j.id::text ILIKE %(search)s::text)
      AND (%(group_key)s::text IS NULL OR j.group_key = %(group_key)s::text)
    ORDER BY j.id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {schema}.job j USING picked p
    WHERE j.id = p.id AND j.state <> 'active'
    RETURNING j.id
), told AS (
    -- One notification per 200 finished ids, and only while a wait_for is registered (as
    -- acks do, see 0006): a notifying commit holds a cluster-wide lock through its flush.
    SELECT pg_notify(%(done_channel)s::text, string_agg(d.id::text, ','))
    FROM (SELECT x.id, (row_number() OVER () - 1) / 200 AS chunk FROM gone x) d
    WHERE EXISTS (SELECT FROM {schema}.waiter)
    GROUP BY d.chunk
)
SELECT (SELECT count(*) FROM gone) AS affected, (SELECT p.id FROM picked p ORDER BY p.id DESC LIMIT 1) AS last, (SELECT count(*) FROM told) AS told;

-- Delete finished jobs (completed, cancelled, dead letters) for good.
-- name: job_bulk_delete_history :one
WITH picked_archived AS (
    SELECT h.id FROM {schema}.job_archive h
    WHERE h.id > %(after)s::uuid AND h.state = ANY (%(states)s::text[])
      AND (%(queue)s::text IS NULL OR h.queue = %(queue)s::text)
      AND (%(before)s::timestamptz IS NULL OR h.created_at < %(before)s::timestamptz)
      AND (%(search)s::text IS NULL OR h.data::text ILIKE %(search)s::text
           OR h.id::text ILIKE %(search)s::text)
      AND (%(group_key)s::text IS NULL OR h.group_key = %(group_key)s::text)
    ORDER BY h.id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), picked_dead AS (
    SELECT h.id FROM {schema}.job_dead h
    WHERE h.id > %(after)s::uuid AND 'failed' = ANY (%(states)s::text[])
      AND (%(queue)s::text IS NULL OR h.queue = %(queue)s::text)
      AND (%(before)s::timestamptz IS NULL OR h.created_at < %(before)s::timestamptz)
      AND (%(search)s::text IS NULL OR h.data::text ILIKE %(search)s::text
           OR h.id::text ILIKE %(search)s::text)
      AND (%(group_key)s::text IS NULL OR h.group_key = %(group_key)s::text)
    ORDER BY h.id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), picked AS (
    -- The next batch of both tables: a row locked above but not picked has a higher id than
    -- the last one picked, so the next batch visits it.
    SELECT x.id FROM (SELECT id FROM picked_archived UNION ALL SELECT id FROM picked_dead) x
    ORDER BY x.id
    LIMIT %(limit)s::integer
), gone_archived AS (
    DELETE FROM {schema}.job_archive h USING picked p WHERE h.id = p.id RETURNING h.id
), gone_dead AS (
    DELETE FROM {schema}.job_dead h USING picked p WHERE h.id = p.id RETURNING h.id
), gone AS (
    SELECT id FROM gone_archived UNION ALL SELECT id FROM gone_dead
), told AS (
    -- One notification per 200 finished ids, and only while a wait_for is registered (as
    -- acks do, see 0006): a notifying commit holds a cluster-wide lock through its flush.
    SELECT pg_notify(%(done_channel)s::text, string_agg(d.id::text, ','))
    FROM (SELECT x.id, (row_number() OVER () - 1) / 200 AS chunk FROM gone x) d
    WHERE EXISTS (SELECT FROM {schema}.waiter)
    GROUP BY d.chunk
)
SELECT (SELECT count(*) FROM gone) AS affected, (SELECT p.id FROM picked p ORDER BY p.id DESC LIMIT 1) AS last, (SELECT count(*) FROM told) AS told;

-- Give queued jobs a new priority (a running job's priority no longer matters).
-- name: job_bulk_reprioritize :one
WITH picked AS (
    SELECT j.id FROM {schema}.job j
    WHERE j.id > %(after)s::uuid AND j.state = ANY (%(states)s::text[])
      AND (%(queue)s::text IS NULL OR j.queue = %(queue)s::text)
      AND (%(before)s::timestamptz IS NULL OR j.created_at < %(before)s::timestamptz)
      AND (%(search)s::text IS NULL OR j.data::text ILIKE %(search)s::text
           OR j.id::text ILIKE %(search)s::text)
      AND (%(group_key)s::text IS NULL OR j.group_key = %(group_key)s::text)
    ORDER BY j.id
    LIMIT %(limit)s::integer
    FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE {schema}.job j SET priority = %(priority)s::integer
    FROM picked p WHERE j.id = p.id AND j.state <> 'active'
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) AS affected, (SELECT p.id FROM picked p ORDER BY p.id DESC LIMIT 1) AS last, 0::bigint AS told;
