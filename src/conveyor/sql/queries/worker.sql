-- The worker's hot path (fetch, ack) and its liveness: heartbeats, the leader lease, recovery.

-- name: job_fetch :many
SELECT *
FROM {schema}.fetch_jobs(
    %(queues)s::text[], %(worker)s::uuid, %(limit)s::integer, %(now)s::timestamptz);

-- name: job_ack_many :many
SELECT id, queue, state
FROM {schema}.ack_jobs(
    %(id)b::uuid[], %(worker)b::uuid[], %(attempt)b::integer[], %(outcome)b::text[],
    %(result)b::text[]::jsonb[], %(error)b::text[]::jsonb[], %(delay)b::double precision[],
    %(now)b::timestamptz);

-- The outcomes of one batch and the next claim, in one statement: one round trip and one commit
-- where job_ack_many and job_fetch take two. The claimed jobs come as job_fetch returns them (no
-- claim: one row whose id is NULL), followed by the row's ordinal; the jobs the acks changed ride
-- on the first row only, as arrays. The acks run first (the outer side of the join), so a slot
-- they free in a limited queue can be claimed at once.
-- name: job_ack_fetch :many
WITH acked AS MATERIALIZED (
    SELECT array_agg(a.id) AS id, array_agg(a.queue) AS queue, array_agg(a.state) AS state
    FROM {schema}.ack_jobs(
        %(id)b::uuid[], %(worker)b::uuid[], %(attempt)b::integer[], %(outcome)b::text[],
        %(result)b::text[]::jsonb[], %(error)b::text[]::jsonb[], %(delay)b::double precision[],
        %(now)b::timestamptz) a
)
SELECT f.*,
       CASE WHEN coalesce(f.n, 1) = 1 THEN x.id END,
       CASE WHEN coalesce(f.n, 1) = 1 THEN x.queue END,
       CASE WHEN coalesce(f.n, 1) = 1 THEN x.state END
FROM acked x
LEFT JOIN LATERAL (
    SELECT c.*, row_number() OVER () AS n
    FROM {schema}.fetch_jobs(
        %(queues)s::text[], %(claimer)s::uuid, %(limit)s::integer, %(now)b::timestamptz) c
) f ON true;

-- Progress reported by running handlers; only the attempt that holds the job may write it.
-- name: job_progress_many :exec
UPDATE {schema}.job j
SET progress = p.progress
FROM unnest(%(id)b::uuid[], %(attempt)b::integer[], %(progress)b::text[]::jsonb[])
     AS p(id, attempt, progress)
WHERE j.id = p.id AND j.attempt = p.attempt AND j.worker_id = %(worker)s::uuid;

-- name: worker_register :exec
INSERT INTO {schema}.worker (id, hostname, pid, queues, concurrency, metadata)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(queues)s, %(concurrency)s, %(metadata)s::jsonb)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now();

-- True while the row exists; false once recovery deleted it as stale (register again). The
-- worker's own report (services down, stuck handler threads) rides along, for health and doctor.
-- name: worker_heartbeat :scalar
WITH beat AS (
    UPDATE {schema}.worker SET heartbeat_at = now(), metadata = metadata || %(health)s::jsonb
    WHERE id = %(id)s RETURNING 1
)
SELECT EXISTS (SELECT FROM beat);

-- name: worker_deregister :exec
DELETE FROM {schema}.worker WHERE id = %(id)s;

-- Take or renew the lease of a role; true if this holder has it until now + ttl. The lease of a
-- holder whose heartbeat went stale (or whose worker row recovery removed) is free at once, so a
-- killed leader costs no more than any killed worker.
-- name: leader_acquire :scalar
WITH lease AS (
    INSERT INTO {schema}.leader AS l (role, holder, expires_at)
    VALUES (%(role)s, %(holder)s, now() + make_interval(secs => %(ttl)s))
    ON CONFLICT (role) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
    WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
       OR NOT EXISTS (
           SELECT FROM {schema}.worker w
           WHERE w.id = l.holder
             AND w.heartbeat_at >= now() - make_interval(secs => %(stale_after)s::double precision))
    RETURNING holder
)
SELECT EXISTS (SELECT FROM lease);

-- name: leader_release :exec
DELETE FROM {schema}.leader WHERE role = %(role)s AND holder = %(holder)s;

-- Each recovered attempt is also named on the cancel channel ("id/attempt"): a worker that is
-- alive after all (frozen, cut off, or past expire_in) stops it, running or still waiting in its
-- prefetch buffer. Every CTE reads the statement's snapshot, so the live table still shows the
-- attempts as they were before recovery.
-- name: job_recover :many
WITH r AS (
    SELECT id, queue, state
    FROM {schema}.recover_jobs(
        now() - make_interval(secs => %(stale_after)s), %(grace)s, %(now)s::timestamptz)
), told AS (
    SELECT pg_notify(%(cancel_channel)s::text, j.id::text || '/' || j.attempt)
    FROM {schema}.job j JOIN r ON r.id = j.id
)
SELECT r.id, r.queue, r.state FROM r CROSS JOIN (SELECT count(*) FROM told) t;

-- Which of the attempts this worker runs still hold their job; the others were cancelled,
-- recovered or expired while a notification was missed, and should stop.
-- A set operation, not a join: a join's plan, cached while the live table looked empty, compared
-- every job with every attempt named (2 s for 5,000); INTERSECT hashes or sorts, never loops.
-- name: job_held :many
SELECT h.id
FROM (
    SELECT j.id, j.attempt
    FROM {schema}.job j
    WHERE j.id = ANY (%(id)s::uuid[]) AND j.worker_id = %(worker)s::uuid
    INTERSECT
    SELECT * FROM unnest(%(id)s::uuid[], %(attempt)s::integer[])
) h;

-- The attempts this worker holds that are not among those it knows of: claimed by a fetch whose
-- answer never reached it (the connection dropped after the commit). Along the partial index of
-- running jobs, so the cost is that of the running jobs, never of the backlog. EXCEPT rather
-- than NOT EXISTS, as job_held does (1 s for 5,000 running jobs planned on an empty table).
-- name: job_orphaned :many
SELECT j.id, j.attempt
FROM {schema}.job j
WHERE j.state = 'active' AND j.worker_id = %(worker)s::uuid
EXCEPT
SELECT * FROM unnest(%(id)s::uuid[], %(attempt)s::integer[]);

-- name: worker_list :many
SELECT * FROM {schema}.worker ORDER BY started_at, id;

-- Workers whose last heartbeat is younger than stale_after seconds.
-- name: worker_count_alive :scalar
SELECT count(*) FROM {schema}.worker
WHERE heartbeat_at > now() - make_interval(secs => %(stale_after)s::double precision);

-- Complete an attempt inside the caller's transaction (job.transaction(), job.complete_in()):
-- the same guarded ack_jobs as the completer's, so an attempt that lost its job changes nothing
-- and returns no row. The transaction's id lets the worker ask, once the handler returned,
-- whether the completion committed (pg_xact_status), whoever committed or rolled it back.
-- name: job_complete_in :many
SELECT pg_current_xact_id()::text AS xid
FROM {schema}.ack_jobs(
    ARRAY[%(id)s::uuid], ARRAY[%(worker)s::uuid], ARRAY[%(attempt)s::integer],
    ARRAY['completed'], ARRAY[%(result)s::jsonb], NULL, NULL, %(now)s::timestamptz);

-- committed, aborted or in progress.
-- name: xact_status :scalar
SELECT pg_xact_status(%(xid)s::xid8) AS status;

-- Seconds until the next job of these queues falls due (later than now), or NULL: a worker with
-- nothing to do wakes itself then, since no NOTIFY marks that moment. A loose index scan of each
-- fetch index (0021: job_fetch_free_idx, job_fetch_group_idx): per queue, one probe per priority
-- in use, however many jobs wait.
-- name: job_next_due :scalar
WITH RECURSIVE t AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), free AS (
    SELECT q.name AS queue,
           (SELECT j.priority FROM {schema}.job j
             WHERE j.queue = q.name AND j.state IN ('created', 'retry') AND j.group_key IS NULL
             ORDER BY j.priority DESC LIMIT 1) AS priority
    FROM unnest(%(queues)s::text[]) AS q(name)
    UNION ALL
    SELECT l.queue,
           (SELECT j.priority FROM {schema}.job j
             WHERE j.queue = l.queue AND j.state IN ('created', 'retry') AND j.group_key IS NULL
               AND j.priority < l.priority
             ORDER BY j.priority DESC LIMIT 1)
    FROM free l
    WHERE l.priority IS NOT NULL
), grouped AS (
    SELECT q.name AS queue,
           (SELECT j.priority FROM {schema}.job j
             WHERE j.queue = q.name AND j.state IN ('created', 'retry')
               AND j.group_key IS NOT NULL
             ORDER BY j.priority DESC LIMIT 1) AS priority
    FROM unnest(%(queues)s::text[]) AS q(name)
    UNION ALL
    SELECT l.queue,
           (SELECT j.priority FROM {schema}.job j
             WHERE j.queue = l.queue AND j.state IN ('created', 'retry')
               AND j.group_key IS NOT NULL AND j.priority < l.priority
             ORDER BY j.priority DESC LIMIT 1)
    FROM grouped l
    WHERE l.priority IS NOT NULL
)
SELECT extract(epoch FROM least(
           (SELECT min((SELECT j.run_at FROM {schema}.job j
                         WHERE j.queue = l.queue AND j.state IN ('created', 'retry')
                           AND j.group_key IS NULL AND j.priority = l.priority
                           AND j.run_at > t.now
                         ORDER BY j.run_at LIMIT 1))
            FROM free l
            WHERE l.priority IS NOT NULL),
           (SELECT min((SELECT j.run_at FROM {schema}.job j
                         WHERE j.queue = l.queue AND j.state IN ('created', 'retry')
                           AND j.group_key IS NOT NULL AND j.priority = l.priority
                           AND j.run_at > t.now
                         ORDER BY j.run_at LIMIT 1))
            FROM grouped l
            WHERE l.priority IS NOT NULL)) - t.now)::double precision
FROM t;

-- A worker's idle marks (see "Waking the workers" in job.sql), taken on its LISTEN connection for
-- the queues it does not mark yet: 'marked' (now held: fetch once more before waiting), 'sending'
-- (sends that did not notify have not committed yet: try again in a moment, fetching first) or
-- 'taken' (another worker holds the mark: the sends notify).
-- name: worker_mark_idle :many
SELECT q.name,
       CASE WHEN pg_try_advisory_lock(hashtext(%(channel)s::text), hashtext(q.name)) THEN 'marked'
            WHEN pg_try_advisory_lock_shared(hashtext(%(channel)s::text), hashtext(q.name))
                 AND pg_advisory_unlock_shared(hashtext(%(channel)s::text), hashtext(q.name))
                THEN 'sending'
            ELSE 'taken' END
FROM unnest(%(queues)s::text[]) AS q(name);

-- A busy worker gives its idle marks up, and says so to the other workers ('unmarked:' and the
-- queue): one that found the mark taken takes it now.
-- name: worker_unmark_idle :exec
SELECT pg_advisory_unlock(hashtext(%(channel)s::text), hashtext(q.name)),
       pg_notify(%(channel)s::text, 'unmarked:' || q.name)
FROM unnest(%(queues)s::text[]) AS q(name);
