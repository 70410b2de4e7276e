-- Reads and operator actions on jobs. A job is live (job), archived (job_archive: completed or
-- cancelled) or a dead letter (job_dead: failed); job_history is the view of the last two, with
-- the columns of job, so a job is read with SELECT * from whichever holds it. The archive is
-- insert-only on every path but these operator actions (retry of a cancelled job, delete).

-- name: job_insert_many :many
SELECT ord, id, inserted
FROM {schema}.insert_jobs(
    {schema}.job_inputs(
        %(id)b::uuid[], %(queue)b::text[], %(data)b::text[]::jsonb[], %(priority)b::integer[],
        %(run_at)b::timestamptz[], %(delay)b::double precision[], %(retry_limit)b::integer[],
        %(retry_delay)b::double precision[], %(retry_backoff)b::text[],
        %(retry_delay_max)b::double precision[], %(expire_in)b::double precision[],
        %(retention)b::double precision[], %(singleton_key)b::text[],
        %(singleton_seconds)b::integer[], %(unique_key)b::text[], %(unique_replace)b::boolean[],
        %(dead_letter)b::text[], %(group_key)b::text[], %(depends_on)b::text[]::jsonb[],
        %(fair_key)b::text[], %(on_dependency_failure)b::text[], %(on_complete)b::text[]),
    %(defaults)b::jsonb, %(now)b::timestamptz);

-- One job: the same function, its job_input built from scalar parameters, which are cheaper to
-- send than arrays.
-- name: job_insert_one :many
SELECT ord, id, inserted
FROM {schema}.insert_jobs(
    ARRAY[ROW(
        %(id)s::uuid, %(queue)s::text, %(data)s::jsonb, %(priority)s::integer,
        %(run_at)s::timestamptz, %(delay)s::double precision, %(retry_limit)s::integer,
        %(retry_delay)s::double precision, %(retry_backoff)s::text,
        %(retry_delay_max)s::double precision, %(expire_in)s::double precision,
        %(retention)s::double precision, %(singleton_key)s::text, %(singleton_seconds)s::integer,
        %(unique_key)s::text, %(unique_replace)s::boolean, %(dead_letter)s::text,
        %(group_key)s::text, %(depends_on)s::jsonb, %(fair_key)s::text,
        %(on_dependency_failure)s::text, %(on_complete)s::text)::{schema}.job_input],
    %(defaults)s::jsonb, %(now)s::timestamptz);

-- Waking the workers (job_insert_plain, job_insert_plain_many). A notifying commit holds a
-- cluster-wide lock through its WAL flush, so senders that all notify commit one at a time
-- (eight concurrent senders: about half the commits per second). A worker with nothing to do
-- holds each of its queues' idle marks: an exclusive session advisory lock (the channel's hash,
-- the queue's) on its LISTEN connection (worker_mark_idle). A quiet send notifies the queue only
-- when it cannot take that lock shared, because a worker holds the mark; otherwise it holds the
-- lock shared until it commits, so no worker takes the mark meanwhile, and a worker that takes
-- it fetches once more before it waits, after this commit. Quiet: sent on a pooled connection,
-- committed by the statement itself. A send on the caller's connection commits when the caller
-- does, maybe much later, and a job with a fair key (every job of a fair queue has one) may be
-- wanted by a busy worker (its express fetch): both always notify.
--
-- The fast path of a send (the client takes it for jobs with no unique or throttle key, no
-- dependencies and no completion hook): one plain statement, where insert_jobs runs plpgsql.
-- It stores exactly the row insert_jobs would (resolve_jobs' rules: the job's option, else its
-- queue's default, read from the queue row in this statement, else the app's, else the built-in
-- one; a fair queue's key ''), meta included, and notifies the queue at commit when a worker may
-- be waiting for it (see above). The job's
-- options come as one JSON object (o: NULL when it sets none) with resolve_jobs' names and
-- units. A queue it names for the first time is created here; this statement's snapshot does
-- not see that row, which holds no defaults yet anyway. (Only a queue it does not find: an
-- INSERT that ON CONFLICT turns away still builds the row and checks the queue's constraints,
-- its name's pattern among them: 13% of this statement's time, measured alone.) It inserts nothing
-- (and returns 0) when the queue keeps a queued key (short and stately): the client then sends
-- the job through insert_jobs, which settles that key. It returns, beside that count, what it
-- read of the queue with the queue's version (0032): the client's copy for job_insert_resolved.
-- No version (no copy) for a queue it created, which its snapshot does not see, nor for one
-- this transaction changed: a caller's transaction that changes the queue again keeps the same
-- version (its own id) with other values, and may still roll back. What other transactions
-- wrote is committed, whatever connection this runs on.
-- name: job_insert_plain :one
WITH created AS (
    INSERT INTO {schema}.queue (name)
    SELECT %(queue)s::text
    WHERE NOT EXISTS (SELECT FROM {schema}.queue x WHERE x.name = %(queue)s::text)
    ON CONFLICT (name) DO NOTHING
),
ins AS (
    INSERT INTO {schema}.job (
        id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
        retry_backoff, retry_delay_max, expire_in, retention, dead_letter, group_key,
        created_at, fair_key, meta)
    SELECT %(id)s::uuid, %(queue)s::text, 'created', %(data)s::jsonb,
           coalesce((p.o->>'priority')::integer, q.priority, (p.d->>'priority')::integer, 0),
           coalesce((p.o->>'run_at')::timestamptz,
                    p.t + make_interval(secs => coalesce((p.o->>'delay')::double precision, 0))),
           0,
           coalesce((p.o->>'retry_limit')::integer, q.retry_limit,
                    (p.d->>'retry_limit')::integer, 2),
           coalesce((p.o->>'retry_delay')::double precision, q.retry_delay,
                    (p.d->>'retry_delay')::double precision, 5),
           coalesce(p.o->>'retry_backoff', q.retry_backoff, p.d->>'retry_backoff', 'exponential'),
           coalesce((p.o->>'retry_delay_max')::double precision, q.retry_delay_max,
                    (p.d->>'retry_delay_max')::double precision, 3600),
           coalesce((p.o->>'expire_in')::double precision, q.expire_in,
                    (p.d->>'expire_in')::double precision, 900),
           coalesce((p.o->>'retention')::double precision, q.retention,
                    (p.d->>'retention')::double precision, 604800),
           coalesce(p.o->>'dead_letter', q.dead_letter),
           p.o->>'group_key',
           p.t,
           coalesce(p.o->>'fair_key',
                    CASE WHEN EXISTS (SELECT FROM {schema}.queue_fair f
                                      WHERE f.queue = %(queue)s::text) THEN '' END),
           %(meta)s::jsonb
    FROM (SELECT %(options)s::jsonb AS o, %(defaults)s::jsonb AS d,
                 coalesce(%(now)s::timestamptz, now()) AS t) p
    LEFT JOIN {schema}.queue q ON q.name = %(queue)s::text
    WHERE q.policy IS NULL OR q.policy NOT IN ('short', 'stately')
    RETURNING fair_key IS NOT NULL AS fair
)
SELECT n.inserted, nullif(v.version, pg_current_xact_id_if_assigned()::text::bigint) AS version,
       q.policy, q.priority, q.retry_limit, q.retry_delay, q.retry_backoff, q.retry_delay_max,
       q.expire_in, q.retention, q.dead_letter,
       EXISTS (SELECT FROM {schema}.queue_fair f WHERE f.queue = q.name) AS fair, n.notified
FROM (SELECT count(*) AS inserted,
             count(pg_notify(%(channel)s::text, %(queue)s::text)) FILTER (
                 WHERE NOT %(quiet)s::boolean OR i.fair
                    OR NOT pg_try_advisory_xact_lock_shared(hashtext(%(channel)s::text),
                                                            hashtext(%(queue)s::text))
             ) AS notified
      FROM ins i) n
LEFT JOIN {schema}.queue q ON q.name = %(queue)s::text
LEFT JOIN {schema}.queue_version v ON v.queue = q.name;

-- A send of one job whose options the client resolved from its copy of the queue's row
-- (job_insert_plain's rules: the job's option, else the copy's, else the app's, else the
-- built-in one), read at the given version of the queue (0032). It inserts the job only while
-- the queue still has that version, so it stores exactly the row job_insert_plain would; it
-- returns 0 otherwise (the queue was changed or deleted since: the client drops its copy and
-- sends by job_insert_plain). No other read of the queue: a queue that keeps a queued key
-- (short, stately) never gets a copy. It wakes the workers as job_insert_plain does.
-- name: job_insert_resolved :scalar
WITH ins AS (
    INSERT INTO {schema}.job (
        id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
        retry_backoff, retry_delay_max, expire_in, retention, dead_letter, group_key,
        created_at, fair_key, meta)
    SELECT %(id)s::uuid, v.queue, 'created', %(data)s::jsonb, %(priority)s::integer,
           coalesce(%(run_at)s::timestamptz,
                    p.t + make_interval(secs => %(delay)s::double precision)),
           0, %(retry_limit)s::integer, %(retry_delay)s::double precision,
           %(retry_backoff)s::text, %(retry_delay_max)s::double precision,
           %(expire_in)s::double precision, %(retention)s::double precision,
           %(dead_letter)s::text, %(group_key)s::text, p.t, %(fair_key)s::text, %(meta)s::jsonb
    FROM (SELECT coalesce(%(now)s::timestamptz, now()) AS t) p
    JOIN {schema}.queue_version v
      ON v.queue = %(queue)s::text AND v.version = %(version)s::bigint
    RETURNING fair_key IS NOT NULL AS fair
)
SELECT count(*) AS inserted,
       count(pg_notify(%(channel)s::text, %(queue)s::text)) FILTER (
           WHERE NOT %(quiet)s::boolean OR i.fair
              OR NOT pg_try_advisory_xact_lock_shared(hashtext(%(channel)s::text),
                                                      hashtext(%(queue)s::text))
       ) AS notified
FROM ins i;

-- The fast path of send_batch: job_insert_plain for many jobs, one array per column (NULL: no
-- job sets it), the distinct queues in queues. All or nothing: it inserts no job (and returns
-- 0) when one of the queues keeps a queued key, and the client sends the batch through
-- insert_jobs. Each queue is notified once, at commit, by the rules above.
-- name: job_insert_plain_many :scalar
WITH created AS (
    INSERT INTO {schema}.queue (name)
    SELECT n FROM unnest(%(queues)s::text[]) AS n
    WHERE NOT EXISTS (SELECT FROM {schema}.queue x WHERE x.name = n)
    ON CONFLICT (name) DO NOTHING
),
ins AS (
    INSERT INTO {schema}.job (
        id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
        retry_backoff, retry_delay_max, expire_in, retention, dead_letter, group_key,
        created_at, fair_key, meta)
    SELECT i.id, i.queue, 'created', i.data,
           coalesce(i.priority, q.priority, p.priority, 0),
           coalesce(i.run_at, p.t + make_interval(secs => coalesce(i.delay, 0))),
           0,
           coalesce(i.retry_limit, q.retry_limit, p.retry_limit, 2),
           coalesce(i.retry_delay, q.retry_delay, p.retry_delay, 5),
           coalesce(i.retry_backoff, q.retry_backoff, p.retry_backoff, 'exponential'),
           coalesce(i.retry_delay_max, q.retry_delay_max, p.retry_delay_max, 3600),
           coalesce(i.expire_in, q.expire_in, p.expire_in, 900),
           coalesce(i.retention, q.retention, p.retention, 604800),
           coalesce(i.dead_letter, q.dead_letter),
           i.group_key,
           p.t,
           coalesce(i.fair_key, CASE WHEN f.queue IS NOT NULL THEN '' END),
           p.meta
    -- The app's defaults, read from their JSON once rather than once a job.
    FROM (SELECT (d->>'priority')::integer AS priority,
                 (d->>'retry_limit')::integer AS retry_limit,
                 (d->>'retry_delay')::double precision AS retry_delay,
                 d->>'retry_backoff' AS retry_backoff,
                 (d->>'retry_delay_max')::double precision AS retry_delay_max,
                 (d->>'expire_in')::double precision AS expire_in,
                 (d->>'retention')::double precision AS retention,
                 coalesce(%(now)s::timestamptz, now()) AS t, %(meta)s::jsonb AS meta
          FROM (SELECT %(defaults)s::jsonb AS d) app
          OFFSET 0) p
    CROSS JOIN unnest(
        %(id)b::uuid[], %(queue)b::text[], %(data)b::text[]::jsonb[], %(priority)b::integer[],
        %(run_at)b::timestamptz[], %(delay)b::double precision[], %(retry_limit)b::integer[],
        %(retry_delay)b::double precision[], %(retry_backoff)b::text[],
        %(retry_delay_max)b::double precision[], %(expire_in)b::double precision[],
        %(retention)b::double precision[], %(dead_letter)b::text[], %(group_key)b::text[],
        %(fair_key)b::text[])
        AS i(id, queue, data, priority, run_at, delay, retry_limit, retry_delay,
             retry_backoff, retry_delay_max, expire_in, retention, dead_letter, group_key,
             fair_key)
    LEFT JOIN {schema}.queue q ON q.name = i.queue
    LEFT JOIN {schema}.queue_fair f ON f.queue = i.queue
    WHERE NOT EXISTS (SELECT FROM {schema}.queue x
                      WHERE x.name = ANY (%(queues)s::text[])
                        AND x.policy IN ('short', 'stately'))
    RETURNING queue, fair_key IS NOT NULL AS fair
)
SELECT count(*) AS queues,
       count(pg_notify(%(channel)s::text, w.queue)) FILTER (
           WHERE NOT %(quiet)s::boolean OR w.fair
              OR NOT pg_try_advisory_xact_lock_shared(hashtext(%(channel)s::text),
                                                      hashtext(w.queue))
       ) AS notified
FROM (SELECT x.queue, bool_or(x.fair) AS fair FROM ins x GROUP BY x.queue) w;

-- The fast path of a large send_batch of jobs that set no option: the client COPYs the rows in
-- (job_copy_in) after this statement, in its transaction. It creates the queues named for the
-- first time, returns each queue's options resolved by job_insert_plain_many's rules (the
-- queue's default, else the app's, else the built-in one; a fair queue's key ''), with the time
-- the jobs are created at, and notifies each queue once, at commit. It returns no row and
-- notifies nothing when one of the queues keeps a queued key (short, stately): the client then
-- sends the batch through insert_jobs.
-- name: job_copy_resolve :many
WITH created AS (
    INSERT INTO {schema}.queue (name)
    SELECT n FROM unnest(%(queues)s::text[]) AS n
    WHERE NOT EXISTS (SELECT FROM {schema}.queue x WHERE x.name = n)
    ON CONFLICT (name) DO NOTHING
)
SELECT n.name AS queue,
       coalesce(q.priority, (p.d->>'priority')::integer, 0) AS priority,
       coalesce(q.retry_limit, (p.d->>'retry_limit')::integer, 2) AS retry_limit,
       coalesce(q.retry_delay, (p.d->>'retry_delay')::double precision, 5) AS retry_delay,
       coalesce(q.retry_backoff, p.d->>'retry_backoff', 'exponential') AS retry_backoff,
       coalesce(q.retry_delay_max, (p.d->>'retry_delay_max')::double precision, 3600)
           AS retry_delay_max,
       coalesce(q.expire_in, (p.d->>'expire_in')::double precision, 900) AS expire_in,
       coalesce(q.retention, (p.d->>'retention')::double precision, 604800) AS retention,
       q.dead_letter,
       CASE WHEN f.queue IS NOT NULL THEN '' END AS fair_key,
       p.t AS created_at,
       pg_notify(%(channel)s::text, n.name) AS notified
FROM unnest(%(queues)s::text[]) AS n(name)
CROSS JOIN (SELECT %(defaults)s::jsonb AS d, coalesce(%(now)s::timestamptz, now()) AS t) p
LEFT JOIN {schema}.queue q ON q.name = n.name
LEFT JOIN {schema}.queue_fair f ON f.queue = n.name
WHERE NOT EXISTS (SELECT FROM {schema}.queue x
                  WHERE x.name = ANY (%(queues)s::text[]) AND x.policy IN ('short', 'stately'));

-- The rows of job_copy_resolve's jobs, in the binary COPY format (run_at is created_at; the
-- columns not named take their defaults, as in job_insert_plain_many).
-- name: job_copy_in :exec
COPY {schema}.job (id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                   retry_backoff, retry_delay_max, expire_in, retention, dead_letter,
                   created_at, fair_key)
FROM STDIN (FORMAT BINARY);

-- The meta of jobs a send just inserted (the trace context of that send), in its transaction.
-- name: job_set_meta :exec
UPDATE {schema}.job SET meta = %(meta)s::jsonb WHERE id = ANY (%(ids)s::uuid[]);

-- name: job_get :one
SELECT * FROM {schema}.job WHERE id = %(id)s
UNION ALL
SELECT * FROM {schema}.job_history WHERE id = %(id)s
LIMIT 1;

-- Where a page of jobs, newest first, may start reading the history: the finish time of the
-- skip+1-th newest finished job of the queue and states (before the cursor, within window
-- seconds of it, else since), among the scan newest finished jobs, read along the finished_at
-- indexes; none when fewer match. Rows finished earlier were created earlier still, so the page
-- is exact when it holds its limit of jobs created at or after this: a window by count, which a
-- busy history fills within seconds and a quiet one within days, and costs at most scan rows.
-- name: job_list_floor :scalar
SELECT n.finished_at FROM (
    SELECT h.finished_at, h.queue, h.state FROM {schema}.job_history h
    WHERE h.finished_at < coalesce(%(after_at)s::timestamptz, 'infinity')
      AND h.finished_at >= coalesce(
          coalesce(%(after_at)s::timestamptz, %(now)s::timestamptz, now())
          - make_interval(secs => %(window)s::double precision),
          %(since_at)s::timestamptz,
          coalesce(%(now)s::timestamptz, now())
          - make_interval(secs => %(since_seconds)s::double precision),
          '-infinity')
    ORDER BY h.finished_at DESC
    LIMIT %(scan)s::integer
) n
WHERE (%(queue)s::text IS NULL OR n.queue = %(queue)s::text)
  AND (%(states)b::text[] IS NULL OR n.state = ANY (%(states)b::text[]))
ORDER BY n.finished_at DESC
OFFSET %(skip)s::integer LIMIT 1;

-- since: created at or after since_at, or since_seconds before now. search: an ILIKE pattern
-- (escaped by conveyor.options) matched against the payload's JSON text and the id. after_at and
-- after_id: the last job of the previous page (keyset pagination, in the listing's order).
-- The history is read only from listed_from on, by the finished_at indexes: a job finishes after
-- it was created, so every finished job created since then finished since then. listed_from is
-- since, or window seconds before the page's start (the cursor, else now), whichever is later;
-- a NULL window reaches back to since (to the first job without it). The live table is small
-- and read whole. The caller widens the window until the page is complete: it holds its limit
-- of jobs created at or after listed_from (every row carries it).
-- The bounds are written out where they are used, not read from a CTE: the planner then
-- estimates the history's range from their values and walks the index. floor, when given,
-- raises listed_from further (see job_list_floor).
-- name: job_list :many
SELECT j.*,
       coalesce(greatest(
           coalesce(%(since_at)s::timestamptz, coalesce(%(now)s::timestamptz, now())
                    - make_interval(secs => %(since_seconds)s::double precision)),
           coalesce(%(after_at)s::timestamptz, %(now)s::timestamptz, now())
           - make_interval(secs => %(window)s::double precision),
           %(floor)s::timestamptz), '-infinity') AS listed_from
FROM (
    SELECT * FROM {schema}.job
    WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
      AND (%(states)b::text[] IS NULL OR state = ANY (%(states)b::text[]))
      AND created_at >= coalesce(
          %(since_at)s::timestamptz, coalesce(%(now)s::timestamptz, now())
          - make_interval(secs => %(since_seconds)s::double precision), '-infinity')
      AND (%(search)s::text IS NULL OR data::text ILIKE %(search)s::text
           OR id::text ILIKE %(search)s::text)
    UNION ALL
    SELECT * FROM {schema}.job_history
    WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
      AND (%(states)b::text[] IS NULL OR state = ANY (%(states)b::text[]))
      AND finished_at >= coalesce(greatest(
          coalesce(%(since_at)s::timestamptz, coalesce(%(now)s::timestamptz, now())
                   - make_interval(secs => %(since_seconds)s::double precision)),
          coalesce(%(after_at)s::timestamptz, %(now)s::timestamptz, now())
          - make_interval(secs => %(window)s::double precision),
          %(floor)s::timestamptz), '-infinity')
      AND created_at >= coalesce(greatest(
          coalesce(%(since_at)s::timestamptz, coalesce(%(now)s::timestamptz, now())
                   - make_interval(secs => %(since_seconds)s::double precision)),
          coalesce(%(after_at)s::timestamptz, %(now)s::timestamptz, now())
          - make_interval(secs => %(window)s::double precision),
          %(floor)s::timestamptz), '-infinity')
      AND (%(search)s::text IS NULL OR data::text ILIKE %(search)s::text
           OR id::text ILIKE %(search)s::text)
) j
WHERE %(after_at)s::timestamptz IS NULL
   OR CASE WHEN %(descending)s::boolean
           THEN (j.created_at, j.id) < (%(after_at)s::timestamptz, %(after_id)s::uuid)
           ELSE (j.created_at, j.id) > (%(after_at)s::timestamptz, %(after_id)s::uuid) END
ORDER BY
    CASE WHEN %(descending)s::boolean THEN j.created_at END DESC,
    CASE WHEN %(descending)s::boolean THEN j.id END DESC,
    CASE WHEN NOT %(descending)s::boolean THEN j.created_at END ASC,
    CASE WHEN NOT %(descending)s::boolean THEN j.id END ASC
LIMIT %(limit)s::integer OFFSET %(offset)s::integer;

-- Cancel a queued or running job: it leaves the live table for the archive as 'cancelled'
-- (kept for its retention, which may be 0). A worker still running it is told on the cancel
-- channel, and its guarded ack will match no row.
-- name: job_cancel :one
WITH t AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now,
           coalesce(%(now)s::timestamptz, clock_timestamp()) AS floor
), moved AS (
    DELETE FROM {schema}.job WHERE id = %(id)s RETURNING *
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
    RETURNING id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
              retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
              singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
              created_at, started_at, finished_at, result, errors, progress, queued_key,
              meta, fair_key
), told AS (
    SELECT pg_notify(%(cancel_channel)s::text, m.id::text) FROM moved m WHERE m.state = 'active'
    UNION ALL
    SELECT pg_notify(%(done_channel)s::text, m.id::text) FROM moved m
)
-- The count forces the notifications: a CTE nobody reads is never run.
SELECT a.* FROM archived a CROSS JOIN (SELECT count(*) FROM told) t;

-- Make a job runnable now: a queued job is brought forward; a failed or cancelled one comes back
-- from the history with a fresh attempt count and its error history kept. With dead_only, only a
-- failed job (a dead letter) qualifies.
-- name: job_retry :one
WITH t AS (
    SELECT coalesce(%(now)s::timestamptz, now()) AS now
), queued AS (
    UPDATE {schema}.job j SET run_at = t.now
    FROM t
    WHERE j.id = %(id)s AND j.state IN ('created', 'retry') AND NOT %(dead_only)s::boolean
    RETURNING j.*
), revived AS (
    DELETE FROM {schema}.job_dead WHERE id = %(id)s RETURNING *
), revived_cancelled AS (
    DELETE FROM {schema}.job_archive
    WHERE id = %(id)s AND state = 'cancelled' AND NOT %(dead_only)s::boolean
    RETURNING id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
              retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
              singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
              created_at, started_at, finished_at, result, errors, progress, queued_key,
              meta, fair_key
), requeued AS (
    INSERT INTO {schema}.job
    SELECT r.id, r.queue, 'created', r.data, r.priority, t.now, 0, r.retry_limit, r.retry_delay,
           r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention, r.singleton_key,
           r.singleton_seconds, r.unique_key, r.dead_letter, r.group_key, r.depends_on, NULL,
           r.created_at, NULL, NULL, NULL, r.errors, NULL, NULL, r.meta, r.fair_key
    FROM (SELECT * FROM revived UNION ALL SELECT * FROM revived_cancelled) r, t
    RETURNING *
), woken AS (
    SELECT pg_notify(%(channel)s::text, x.queue)
    FROM (SELECT queue FROM queued UNION SELECT queue FROM requeued) x
)
SELECT q.* FROM (SELECT * FROM queued UNION ALL SELECT * FROM requeued) q
CROSS JOIN (SELECT count(*) FROM woken) w;

-- Queue every dead letter of a queue again, with a fresh attempt count; how many.
-- name: job_retry_dead_all :scalar
WITH revived AS (
    DELETE FROM {schema}.job_dead WHERE queue = %(queue)s RETURNING *
), requeued AS (
    INSERT INTO {schema}.job
    SELECT r.id, r.queue, 'created', r.data, r.priority, coalesce(%(now)s::timestamptz, now()),
           0, r.retry_limit, r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in,
           r.retention, r.singleton_key, r.singleton_seconds, r.unique_key, r.dead_letter,
           r.group_key, r.depends_on, NULL, r.created_at, NULL, NULL, NULL, r.errors, NULL,
           NULL, r.meta, r.fair_key
    FROM revived r
    RETURNING queue
)
SELECT count(*) FROM (SELECT pg_notify(%(channel)s::text, x.queue) FROM requeued x) n;

-- Delete a job that is not running, from whichever table holds it; anyone waiting for it is told.
-- name: job_delete :scalar
WITH live AS (
    DELETE FROM {schema}.job WHERE id = %(id)s AND state <> 'active' RETURNING id
), archived AS (
    DELETE FROM {schema}.job_archive WHERE id = %(id)s RETURNING id
), dead AS (
    DELETE FROM {schema}.job_dead WHERE id = %(id)s RETURNING id
), told AS (
    SELECT pg_notify(%(done_channel)s::text, g.id::text)
    FROM (SELECT id FROM live UNION ALL SELECT id FROM archived UNION ALL SELECT id FROM dead) g
)
SELECT count(*) FROM told;

-- The dead letters (failed jobs), newest first: through the view, which also reads those the
-- maintenance leader has yet to move out of the history before 0012 (see 0016).
-- name: job_list_dead :many
SELECT * FROM {schema}.dead_letter
WHERE %(queue)s::text IS NULL OR queue = %(queue)s::text
ORDER BY finished_at DESC, id
LIMIT %(limit)s::integer OFFSET %(offset)s::integer;

-- Delete dead letters, with older_than only those that failed longer ago than that; how many.
-- name: job_purge_dead :scalar
WITH gone AS (
    DELETE FROM {schema}.job_dead
    WHERE (%(queue)s::text IS NULL OR queue = %(queue)s::text)
      AND (%(older_than)s::double precision IS NULL
           OR finished_at < coalesce(%(now)s::timestamptz, now())
                            - make_interval(secs => %(older_than)s::double precision))
    RETURNING 1
)
SELECT count(*) FROM gone;

-- Jobs with dependencies or a completion hook: insert_jobs, then link_jobs, in one statement.
-- name: job_insert_linked :many
SELECT ord, id, inserted
FROM {schema}.insert_linked_jobs(
    {schema}.job_inputs(
        %(id)b::uuid[], %(queue)b::text[], %(data)b::text[]::jsonb[], %(priority)b::integer[],
        %(run_at)b::timestamptz[], %(delay)b::double precision[], %(retry_limit)b::integer[],
        %(retry_delay)b::double precision[], %(retry_backoff)b::text[],
        %(retry_delay_max)b::double precision[], %(expire_in)b::double precision[],
        %(retention)b::double precision[], %(singleton_key)b::text[],
        %(singleton_seconds)b::integer[], %(unique_key)b::text[], %(unique_replace)b::boolean[],
        %(dead_letter)b::text[], %(group_key)b::text[], %(depends_on)b::text[]::jsonb[],
        %(fair_key)b::text[], %(on_dependency_failure)b::text[], %(on_complete)b::text[]),
    %(defaults)b::jsonb, %(now)b::timestamptz);

-- The results of completed jobs (a dependant reads those of its dependencies).
-- name: job_results :many
SELECT id, result FROM {schema}.job_archive WHERE id = ANY (%(ids)s::uuid[]) AND state = 'completed';

-- A wait_for registers itself before it reads its job, so acks notify ':done' while it waits
-- (migration 0006). No lock on the job's row: a claim (FOR UPDATE SKIP LOCKED) would skip a job
-- locked at that moment and leave it to the next poll. Rows of waits whose process died expire
-- here.
-- name: waiter_register :exec
WITH expired AS (
    DELETE FROM {schema}.waiter WHERE expires_at < now()
)
INSERT INTO {schema}.waiter (id, expires_at)
VALUES (%(id)s::uuid, now() + make_interval(secs => %(ttl)s::double precision));

-- name: waiter_remove :exec
DELETE FROM {schema}.waiter WHERE id = %(id)s::uuid;
