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

-- The running job of each group (at most one): a group with one is no candidate.
DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_group_active_idx;
CREATE INDEX CONCURRENTLY job_group_active_idx ON {schema}.job (queue, group_key)
    WHERE state = 'active' AND group_key IS NOT NULL;

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
    -- How many grouped jobs a queue's walk reads before it turns to the loose scan.
    v_budget integer := 2 * p_limit + 32;
    v_queue text;
    c record;
    walked integer;
    found integer;
    q_queue text[] := '{}';
    q_group text[] := '{}';
    q_priority integer[] := '{}';
    q_run_at timestamptz[] := '{}';
    q_id uuid[] := '{}';
    got integer := 0;
    n integer;
BEGIN
    FOREACH v_queue IN ARRAY p_queues LOOP
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
                                     AND a.state = 'active' AND a.group_key IS NOT NULL)
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
        CONTINUE WHEN found >= p_limit OR walked < v_budget;
        -- The walk met mostly jobs of held groups: read the queue group by group instead.
        q_queue := q_queue[1 : cardinality(q_queue) - found];
        q_group := q_group[1 : cardinality(q_group) - found];
        q_priority := q_priority[1 : cardinality(q_priority) - found];
        q_run_at := q_run_at[1 : cardinality(q_run_at) - found];
        q_id := q_id[1 : cardinality(q_id) - found];
        FOR c IN
            WITH RECURSIVE g AS (
                (SELECT j.group_key FROM {schema}.job j
                 WHERE j.queue = v_queue AND j.group_key IS NOT NULL
                 ORDER BY j.group_key LIMIT 1)
                UNION ALL
                SELECT (SELECT j.group_key FROM {schema}.job j
                        WHERE j.queue = v_queue AND j.group_key IS NOT NULL
                          AND j.group_key > g.group_key
                        ORDER BY j.group_key LIMIT 1)
                FROM g
                WHERE g.group_key IS NOT NULL
            )
            SELECT h.id, g.group_key, h.priority, h.run_at
            FROM g
            CROSS JOIN LATERAL (
                SELECT k.id, k.priority, k.run_at FROM {schema}.job k
                WHERE k.queue = v_queue AND k.group_key = g.group_key
                  AND k.state IN ('created', 'retry')
                ORDER BY k.priority DESC, k.id
                LIMIT 1
            ) h
            WHERE g.group_key IS NOT NULL AND h.run_at <= t_now
              AND NOT EXISTS (SELECT FROM {schema}.job a
                              WHERE a.queue = v_queue AND a.group_key = g.group_key
                                AND a.state = 'active' AND a.group_key IS NOT NULL)
            ORDER BY h.priority DESC, h.run_at, h.id
            LIMIT p_limit
        LOOP
            q_queue := q_queue || v_queue;
            q_group := q_group || c.group_key;
            q_priority := q_priority || c.priority;
            q_run_at := q_run_at || c.run_at;
            q_id := q_id || c.id;
        END LOOP;
    END LOOP;

    FOR c IN
        SELECT u.queue, u.group_key
        FROM unnest(q_queue, q_group, q_priority, q_run_at, q_id)
             AS u(queue, group_key, priority, run_at, id)
        ORDER BY u.priority DESC, u.run_at, u.id
    LOOP
        EXIT WHEN got >= p_limit;
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtextextended(
            'conveyor:group:' || {schema_literal} || ':' || c.queue || ':' || c.group_key, 0));
        RETURN QUERY
        WITH head AS (
            SELECT j.id, j.run_at
            FROM {schema}.job j
            WHERE j.queue = c.queue AND j.group_key = c.group_key
              AND j.state IN ('created', 'retry')
            ORDER BY j.priority DESC, j.id
            LIMIT 1
        ), picked AS (
            SELECT j.id
            FROM {schema}.job j
            JOIN head ON head.id = j.id
            WHERE head.run_at <= t_now
              AND NOT EXISTS (SELECT FROM {schema}.job a
                              WHERE a.queue = c.queue AND a.group_key = c.group_key
                                AND a.state = 'active' AND a.group_key IS NOT NULL)
            FOR UPDATE OF j SKIP LOCKED
        ), claimed AS (
            UPDATE {schema}.job j
            SET state = 'active', attempt = j.attempt + 1, worker_id = p_worker, started_at = t_now
            FROM picked
            WHERE j.id = picked.id AND j.state IN ('created', 'retry')
            RETURNING {schema}.as_fetched(j) AS f
        )
        SELECT (done.f).* FROM claimed done;
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
    END LOOP;
END
$fn$;

DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_fetch_idx;
DROP INDEX CONCURRENTLY IF EXISTS {schema}.job_group_key_idx;
