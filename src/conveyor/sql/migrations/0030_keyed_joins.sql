-- conveyor: non-breaking
-- The hot path's joins back to the live table by key say so to the index too. A VACUUM that
-- finds the live table empty (a worker keeping up leaves it so for moments, many times a
-- minute) records 0 rows, and the plans cached afterwards take the table for one row: the
-- ack's DELETE and the claim's UPDATE then put the live table on the outer side of their
-- nested loop and walk all of job_pkey, comparing every job with every id of the batch. A
-- backlog then makes each claim and ack cost in proportion to it, which grows the backlog:
-- at 23,500 jobs/s (bench.load) a worker's claim-and-ack went from 22 ms to 2.7 s within 7 s,
-- just after such a VACUUM (the plans that test_query_plans reproduces, most likely).
-- Now the ack's statements also give the ids as "id = ANY (the batch's ids)", so the live
-- table is read by key on whichever side the planner puts it. The claim's UPDATE joins each
-- picked job by the tuple it locked (ctid): a probe the planner prices below a walk of the
-- table when it expects few picked rows, as it does here (one queue or four, measured). Over
-- 50,000 waiting jobs, a claim-and-ack of 100 takes 4-10 ms instead of 1.0-1.7 s. With sound
-- statistics the claim's plan is that of before, and the ack's (a hash join on the key)
-- drains as fast (bench.ab, 1.00x). A job updated by another transaction after the claim's
-- snapshot and before its lock is locked but not claimed, and waits for the next claim.
-- claim_group_heads, for grouped queues, was worse: planned on a few thousand jobs, its walk
-- over the groups sorted every grouped job at each step (17 s for 100 heads over 50,000 jobs
-- in 1,000 groups), and its UPDATE could walk the table (0.6 s) where the ctid join does not
-- help (the planner expects ten picked rows). It now runs with sorts disabled, so the walk
-- keeps to the group index's order (12-19 ms), locks each head by id from the head's side
-- and takes the locked tuples by ctid with no join. ack_jobs is 0025's, claim_jobs 0022's
-- and claim_group_heads 0021's but for these. (claim_fair, for fair queues, keeps the trap.)

CREATE OR REPLACE FUNCTION {schema}.ack_jobs(
    p_id uuid[], p_worker uuid[], p_attempt integer[], p_outcome text[], p_result jsonb[],
    p_error jsonb[], p_delay double precision[], p_now timestamptz
) RETURNS TABLE (id uuid, queue text, state text)
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $fn$
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
        SELECT c.id, c.tid
        FROM unnest(p_queues) AS q(name)
        CROSS JOIN LATERAL (
            SELECT j.id, j.ctid AS tid, j.priority, j.run_at
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
    WHERE j.ctid = picked.tid AND j.id = picked.id
    RETURNING j.id, j.queue, j.state, j.data, j.priority, j.attempt, j.retry_limit,
              j.retry_delay, j.retry_backoff, j.retry_delay_max, j.expire_in, j.retention,
              j.run_at, j.created_at, j.started_at, j.finished_at, j.meta,
              nullif(j.errors, '[]'), j.progress, j.singleton_key, j.singleton_seconds,
              j.unique_key, j.dead_letter, j.group_key, j.depends_on, j.worker_id;
END
$fn$;

CREATE OR REPLACE FUNCTION {schema}.claim_group_heads(
    p_queues text[], p_worker uuid, p_limit integer, p_now timestamptz
) RETURNS SETOF {schema}.job_fetched
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    -- How many groups the first loose scan reads, and how many grouped jobs the walk reads,
    -- before each gives way to the next step.
    v_budget integer := p_limit + 32;
    v_queue text;
    v_cap integer;
    v_complete boolean;
    c record;
    walked integer;
    found integer;
    q_queue text[] := '{}';
    q_group text[] := '{}';
    q_priority integer[] := '{}';
    q_run_at timestamptz[] := '{}';
    q_id uuid[] := '{}';
    l_queue text[];
    l_group text[];
BEGIN
    FOREACH v_queue IN ARRAY p_queues LOOP
        -- Most queues have no grouped job: one probe says so, cheaper than the scan below.
        CONTINUE WHEN NOT EXISTS (
            SELECT FROM {schema}.job j
            WHERE j.queue = v_queue AND j.state IN ('created', 'retry')
              AND j.group_key IS NOT NULL);
        -- 1. A queue of few groups is read group by group, all of them: a loose scan of
        -- job_group_idx, one probe for the next group's head, one for its running job.
        -- 3. So is a queue whose walk (2.) met too few heads, however many groups it has.
        v_cap := v_budget;
        LOOP
            found := 0;
            v_complete := false;
            FOR c IN
                WITH RECURSIVE g AS (
                    -- The queue's first group with a queued job, and that job: its head unless
                    -- the group runs one. One row, NULL when there is none: the scan ends on a
                    -- NULL row when it read every group.
                    SELECT h.group_key, h.id, h.priority, h.run_at, 1 AS d
                    FROM (SELECT) x
                    LEFT JOIN LATERAL (
                        SELECT j.group_key, j.id, j.priority, j.run_at FROM {schema}.job j
                        WHERE j.queue = v_queue AND j.group_key IS NOT NULL
                          AND j.state IN ('created', 'retry')
                        ORDER BY j.group_key, j.priority DESC, j.id LIMIT 1
                    ) h ON true
                    UNION ALL
                    SELECT h.group_key, h.id, h.priority, h.run_at, g.d + 1
                    FROM g
                    LEFT JOIN LATERAL (
                        SELECT j.group_key, j.id, j.priority, j.run_at FROM {schema}.job j
                        WHERE j.queue = v_queue AND j.group_key > g.group_key
                          AND j.state IN ('created', 'retry')
                        ORDER BY j.group_key, j.priority DESC, j.id LIMIT 1
                    ) h ON true
                    WHERE g.group_key IS NOT NULL AND (v_cap IS NULL OR g.d < v_cap)
                )
                SELECT g.group_key, g.id, g.priority, g.run_at,
                       g.run_at <= t_now
                       AND NOT EXISTS (SELECT FROM {schema}.job a
                                       WHERE a.queue = v_queue AND a.group_key = g.group_key
                                         AND a.state = 'active') AS head
                FROM g
            LOOP
                IF c.group_key IS NULL THEN
                    v_complete := true;
                ELSIF c.head THEN
                    q_queue := q_queue || v_queue;
                    q_group := q_group || c.group_key;
                    q_priority := q_priority || c.priority;
                    q_run_at := q_run_at || c.run_at;
                    q_id := q_id || c.id;
                    found := found + 1;
                END IF;
            END LOOP;
            EXIT WHEN v_complete OR v_cap IS NULL;
            -- More groups than the cap: drop what this scan found, and walk instead.
            q_queue := q_queue[1 : cardinality(q_queue) - found];
            q_group := q_group[1 : cardinality(q_group) - found];
            q_priority := q_priority[1 : cardinality(q_priority) - found];
            q_run_at := q_run_at[1 : cardinality(q_run_at) - found];
            q_id := q_id[1 : cardinality(q_id) - found];
            -- 2. Many groups: walk the queue's grouped jobs in claim order (job_fetch_group_idx)
            -- and keep the heads, up to p_limit of them (each job walked costs a probe of its
            -- group's head and of its running job).
            walked := 0;
            found := 0;
            FOR c IN
                SELECT j.id, j.group_key, j.priority, j.run_at,
                       j.run_at <= t_now
                       AND j.id = (SELECT k.id FROM {schema}.job k
                                   WHERE k.queue = v_queue AND k.group_key = j.group_key
                                     AND k.state IN ('created', 'retry')
                                   ORDER BY k.priority DESC, k.id
                                   LIMIT 1)
                       AND NOT EXISTS (SELECT FROM {schema}.job a
                                       WHERE a.queue = v_queue AND a.group_key = j.group_key
                                         AND a.state = 'active')
                           AS head
                FROM {schema}.job j
                WHERE j.queue = v_queue AND j.state IN ('created', 'retry')
                  AND j.group_key IS NOT NULL
                ORDER BY j.priority DESC, j.run_at, j.id
            LOOP
                walked := walked + 1;
                IF c.head THEN
                    q_queue := q_queue || v_queue;
                    q_group := q_group || c.group_key;
                    q_priority := q_priority || c.priority;
                    q_run_at := q_run_at || c.run_at;
                    q_id := q_id || c.id;
                    found := found + 1;
                    EXIT WHEN found >= p_limit;
                END IF;
                EXIT WHEN walked >= v_budget;
            END LOOP;
            EXIT WHEN found >= p_limit OR walked < v_budget;
            q_queue := q_queue[1 : cardinality(q_queue) - found];
            q_group := q_group[1 : cardinality(q_group) - found];
            q_priority := q_priority[1 : cardinality(q_priority) - found];
            q_run_at := q_run_at[1 : cardinality(q_run_at) - found];
            q_id := q_id[1 : cardinality(q_id) - found];
            v_cap := NULL;
        END LOOP;
    END LOOP;

    IF cardinality(q_queue) = 0 THEN
        RETURN;
    END IF;
    -- The candidates' groups, locked in claim order (a group another fetcher holds is skipped);
    -- then, in a statement of its own (a fresh snapshot, taken once the locks are ours), the
    -- head of each locked group is read again and claimed if it still may run: one statement
    -- for the whole batch, its rows returned column by column (as claim_jobs does since 0014).
    SELECT coalesce(array_agg(l.queue ORDER BY l.n), '{}'),
           coalesce(array_agg(l.group_key ORDER BY l.n), '{}')
    INTO l_queue, l_group
    FROM (
        SELECT u.queue, u.group_key, u.n
        FROM (
            SELECT u.queue, u.group_key,
                   row_number() OVER (ORDER BY u.priority DESC, u.run_at, u.id) AS n
            FROM unnest(q_queue, q_group, q_priority, q_run_at, q_id)
                 AS u(queue, group_key, priority, run_at, id)
        ) u
        WHERE u.n <= p_limit
        ORDER BY u.n
        OFFSET 0
    ) l
    WHERE pg_try_advisory_xact_lock(hashtextextended(
        'conveyor:group:' || {schema_literal} || ':' || l.queue || ':' || l.group_key, 0));
    IF cardinality(l_queue) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH head AS MATERIALIZED (
        SELECT h.id, g.n
        FROM unnest(l_queue, l_group) WITH ORDINALITY AS g(queue, group_key, n)
        CROSS JOIN LATERAL (
            SELECT j.id, j.run_at
            FROM {schema}.job j
            WHERE j.queue = g.queue AND j.group_key = g.group_key
              AND j.state IN ('created', 'retry')
            ORDER BY j.priority DESC, j.id
            LIMIT 1
        ) h
        WHERE h.run_at <= t_now
          AND NOT EXISTS (SELECT FROM {schema}.job a
                          WHERE a.queue = g.queue AND a.group_key = g.group_key
                            AND a.state = 'active')
    ), picked AS (
        -- A row another transaction holds (a cancel, an update) is passed by, and one changed
        -- since the snapshot is locked only if it still may run, and then waits for the next
        -- claim: the UPDATE below takes the versions this statement sees. Each head is locked
        -- by its id from the head's side (a subquery with a lock is never flattened), and the
        -- UPDATE takes the locked tuples by ctid, with no join the planner could turn into a
        -- walk of the table.
        SELECT x.id, x.tid, head.n
        FROM head
        CROSS JOIN LATERAL (
            SELECT j.id, j.ctid AS tid
            FROM {schema}.job j
            WHERE j.id = head.id AND j.state IN ('created', 'retry') AND j.run_at <= t_now
            FOR UPDATE SKIP LOCKED
        ) x
    ), claimed AS (
        UPDATE {schema}.job j
        SET state = 'active', attempt = j.attempt + 1, worker_id = p_worker, started_at = t_now
        WHERE j.ctid = ANY (ARRAY(SELECT p.tid FROM picked p))
        RETURNING j.id, j.queue, j.state, j.data, j.priority, j.attempt,
                  j.retry_limit, j.retry_delay, j.retry_backoff, j.retry_delay_max,
                  j.expire_in, j.retention, j.run_at, j.created_at, j.started_at,
                  j.finished_at,
                  -- as as_fetched (0015) puts it: the key rides in meta
                  CASE WHEN j.fair_key IS NULL THEN j.meta
                       ELSE coalesce(j.meta, '{}') || jsonb_build_object('fair_key', j.fair_key)
                  END AS meta,
                  nullif(j.errors, '[]') AS errors, j.progress, j.singleton_key,
                  j.singleton_seconds, j.unique_key, j.dead_letter, j.group_key,
                  j.depends_on, j.worker_id
    )
    SELECT c.id, c.queue, c.state, c.data, c.priority, c.attempt, c.retry_limit,
           c.retry_delay, c.retry_backoff, c.retry_delay_max, c.expire_in, c.retention,
           c.run_at, c.created_at, c.started_at, c.finished_at, c.meta, c.errors,
           c.progress, c.singleton_key, c.singleton_seconds, c.unique_key, c.dead_letter,
           c.group_key, c.depends_on, c.worker_id
    FROM claimed c JOIN picked p ON p.id = c.id ORDER BY p.n;
END
$fn$;
