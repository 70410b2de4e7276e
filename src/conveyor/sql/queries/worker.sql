-- The worker's hot path (fetch, ack) and its liveness: heartbeats, the leader lease, recovery.

-- Claim up to %(limit)s runnable jobs of the given queues, highest priority first, then oldest
-- run_at. Each queue is read through its own ordered index scan (LATERAL), so the cost does not
-- depend on how many jobs wait in other queues or in the future. The columns come back in the
-- order of conveyor.models.Job's fields, so the worker builds each Job from a plain tuple.
-- name: job_fetch :many
WITH picked AS (
    SELECT c.id
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at
        FROM {schema}.job j
        WHERE j.queue = q.name AND j.state IN ('created', 'retry')
          AND j.run_at <= coalesce(%(now)s::timestamptz, now())
        ORDER BY j.priority DESC, j.run_at, j.id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) c
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT %(limit)s
)
UPDATE {schema}.job j
SET state = 'active', attempt = j.attempt + 1, worker_id = %(worker)s::uuid,
    started_at = coalesce(%(now)s::timestamptz, now())
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.queue, j.state, j.data, j.priority, j.attempt, j.retry_limit, j.retry_delay,
          j.retry_backoff, j.retry_delay_max, j.expire_in, j.retention, j.run_at, j.created_at,
          j.started_at, j.finished_at, j.result, j.errors, j.progress, j.singleton_key,
          j.singleton_seconds, j.unique_key, j.dead_letter, j.group_key, j.depends_on,
          j.worker_id;

-- name: job_ack_many :many
SELECT id, queue, state
FROM {schema}.ack_jobs(
    %(id)b::uuid[], %(worker)b::uuid[], %(attempt)b::integer[], %(outcome)b::text[],
    %(result)b::text[]::jsonb[], %(error)b::text[]::jsonb[], %(delay)b::double precision[],
    %(now)b::timestamptz);

-- Progress reported by running handlers; only the attempt that holds the job may write it.
-- name: job_progress_many :exec
UPDATE {schema}.job j
SET progress = p.progress
FROM unnest(%(id)b::uuid[], %(attempt)b::integer[], %(progress)b::text[]::jsonb[])
     AS p(id, attempt, progress)
WHERE j.id = p.id AND j.attempt = p.attempt AND j.state = 'active'
  AND j.worker_id = %(worker)s::uuid;

-- name: worker_register :exec
INSERT INTO {schema}.worker (id, hostname, pid, queues, concurrency, metadata)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(metadata)s::jsonb)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- True while the row exists; false once recovery deleted it as stale (register again).
-- name: worker_heartbeat :scalar
WITH beat AS (
    UPDATE {schema}.worker SET heartbeat_at = now() WHERE id = %(id)s RETURNING 1
)
SELECT EXISTS (SELECT FROM beat);

-- name: worker_deregister :exec
DELETE FROM {schema}.worker WHERE id = %(id)s;

-- Take or renew the lease of a role; true if this holder has it until now + ttl.
-- name: leader_acquire :scalar
WITH lease AS (
    INSERT INTO {schema}.leader AS l (role, holder, expires_at)
    VALUES (%(role)s, %(holder)s, now() + make_interval(secs => %(ttl)s))
    ON CONFLICT (role) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
    WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
    RETURNING holder
)
SELECT EXISTS (SELECT FROM lease);

-- name: leader_release :exec
DELETE FROM {schema}.leader WHERE role = %(role)s AND holder = %(holder)s;

-- name: job_recover :many
SELECT id, queue, state
FROM {schema}.recover_jobs(
    now() - make_interval(secs => %(stale_after)s), %(grace)s, %(now)s::timestamptz);

-- Which of the attempts this worker runs still hold their job; the others were cancelled,
-- recovered or expired while a notification was missed, and should stop.
-- name: job_held :many
SELECT j.id
FROM {schema}.job j
JOIN unnest(%(id)s::uuid[], %(attempt)s::integer[]) AS h(id, attempt) ON h.id = j.id
WHERE j.attempt = h.attempt AND j.state = 'active' AND j.worker_id = %(worker)s::uuid;
