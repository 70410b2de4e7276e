-- conveyor: no-transaction, non-breaking
-- Grouped jobs off the fetch path of ungrouped ones (issue 14, "the fetch index").
--
-- job_fetch_idx held every queued job, grouped (group_key) or not. claim_jobs takes only
-- ungrouped jobs, so with many grouped jobs ahead of them in the index it walked past every one
-- (each checked in the heap) before it found its first job: 10,000 grouped jobs queued ahead
-- made a claim of 100 jobs cost 10-17 ms instead of about one. And claim_group_heads read every
-- grouped job of its queues, sorted them to find each group's head, then read each candidate
-- group whole again: 76-90 ms a claim with 10,000 grouped jobs, whatever their groups.
--
-- Now the queued jobs sit in two partial indexes of the same shape, job_fetch_free_idx (no
-- group_key: claim_jobs walks it and meets only jobs it can take) and job_fetch_group_idx
-- (grouped). claim_group_heads walks the grouped one in the same order and keeps the rows that
-- are their group's head (the group's first queued job by priority then id, with no job of the
-- group running, due now): one probe of job_group_idx and one of job_group_active_idx per row.
-- When a short walk finds too few heads (the jobs ahead belong to groups that are running or
-- wait for a later head), it reads the queue group by group instead (a loose scan of
-- job_group_idx: one probe per group). So a claim costs about its own size, or the number of
-- groups when they are held, never the number of grouped jobs.
--
-- The indexes are built CONCURRENTLY (this file runs statement by statement, outside a
-- transaction): writes to the job table never wait for them, and workers of the previous
-- release go on running meanwhile (their functions read the old indexes, then whichever are
-- there: the claims below keep their signatures, and their group locks are the same). Every
-- statement may run again after a failure part-way through: an index is dropped (it may have
-- been left invalid) before it is built.

DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_fetch_free_idx;
CREATE INDEX CONCURRENTLY job_fetch_free_idx ON {schema}.job (queue, priority DESC, run_at, id)
    WHERE state IN ('created', 'retry') AND group_key IS NULL;

DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_fetch_group_idx;
CREATE INDEX CONCURRENTLY job_fetch_group_idx ON {schema}.job (queue, priority DESC, run_at, id)
    WHERE state IN ('created', 'retry') AND group_key IS NOT NULL;

-- The live jobs of each group in head order: a group's head is its first queued job here; the
-- distinct groups of a queue are read along it. Replaces job_group_key_idx (queue, group_key),
-- which it serves as well (the previous release's claim_group_heads reads it by that prefix).
DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_group_idx;
CREATE INDEX CONCURRENTLY job_group_idx ON {schema}.job (queue, group_key, priority DESC, id)
    WHERE group_key IS NOT NULL;

-- The running jobs of each queue (counted by fetch_jobs for queues with a concurrency limit, as
-- job_active_idx was) and of each group (at most one: a group with one is no candidate), in one
-- index: it replaces job_active_idx (queue), which it serves as well, so a claim writes as many
-- index entries as before.
DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_active_group_idx;
CREATE INDEX CONCURRENTLY job_active_group_idx ON {schema}.job (queue, group_key)
    WHERE state = 'active';

-- As in 0004, with the heads found along the indexes above. The head of a group is its running
-- job, else its first queued job by (priority, id) (a job waiting for dependencies is no head);
-- the group moves on only when its head is due and not running, so a job waiting to retry holds
-- its group until it completes or dies. Eligible heads are taken highest priority first, then
-- oldest run_at (as claim_jobs orders jobs), across the queues. Each group is taken under a
-- transaction-level advisory lock (others skip it; the key is the one 0001 chose, so fetchers of
-- the previous release and of this one exclude each other), and its head is read again after
-- the lock, with a fresh snapshot, so two fetchers never start two of its jobs.
CREATE OR REPLACE FUNCTION {schema}.claim_group_heads(
    p_queues text[], p_worker uuid, p_limit integer, p_now timestamptz
) RETURNS SETOF {schema}.job_fetched
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
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
        -- since the snapshot is taken only if it still may run.
        SELECT j.id, head.n
        FROM {schema}.job j
        JOIN head ON head.id = j.id
        WHERE j.state IN ('created', 'retry') AND j.run_at <= t_now
        FOR UPDATE OF j SKIP LOCKED
    ), claimed AS (
        UPDATE {schema}.job j
        SET state = 'active', attempt = j.attempt + 1, worker_id = p_worker, started_at = t_now
        FROM picked
        WHERE j.id = picked.id
        RETURNING picked.n, j.id, j.queue, j.state, j.data, j.priority, j.attempt,
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
    FROM claimed c ORDER BY c.n;
END
$fn$;

DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_fetch_idx;
DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_group_key_idx;
DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_active_idx;
