-- conveyor: non-breaking
-- The fair claim's walk over a queue's keys keeps to the keys' index. Each step asked for
-- min(fair_key) above the last key; with statistics that call the live table tiny (a VACUUM
-- that found it empty records 0 rows, see 0030) the planner answered it by reading every
-- waiting job of the queue along the fetch index, at each step. Over 50,000 jobs of 50 keys a
-- claim of 100 took 1.1 s (1.6-2.7 s with 1,000 keys, 40-50 ms with one key); the backlog
-- that makes it slow is the one it has to clear. Each step is now the first key above the last
-- in job_fair_idx's order, with sorts disabled so that only that index gives the order: 3.6-12
-- ms for the same claims. With sound statistics the plans are those of before (the same
-- claims, 3-11 ms either way). Otherwise 0020's claim_fair.

CREATE OR REPLACE FUNCTION {schema}.claim_fair(
    p_queue text, p_worker uuid, p_limit integer, p_now timestamptz
) RETURNS SETOF {schema}.job_fetched
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_mergejoin = off
SET enable_hashjoin = off SET enable_sort = off SET jit = off
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    v_after text;
    v_cur text;
    v_next text;
    v_wrapped boolean;
    v_keys text[] := '{}';
    v_round text[];
    v_more text[];
    v_ids uuid[];
    v_per integer;
    v_left integer := p_limit;
    v_got integer;
BEGIN
    SELECT f.after_key INTO v_after FROM {schema}.queue_fair f WHERE f.queue = p_queue;
    v_cur := v_after;
    v_wrapped := v_after IS NULL;
    LOOP
        EXIT WHEN cardinality(v_keys) >= p_limit;
        IF v_cur IS NULL THEN
            SELECT j.fair_key INTO v_next FROM {schema}.job j
            WHERE j.queue = p_queue AND j.state IN ('created', 'retry')
              AND j.fair_key IS NOT NULL AND j.group_key IS NULL
            ORDER BY j.fair_key LIMIT 1;
        ELSE
            SELECT j.fair_key INTO v_next FROM {schema}.job j
            WHERE j.queue = p_queue AND j.state IN ('created', 'retry')
              AND j.fair_key IS NOT NULL AND j.group_key IS NULL AND j.fair_key > v_cur
            ORDER BY j.fair_key LIMIT 1;
        END IF;
        IF v_next IS NULL THEN
            EXIT WHEN v_wrapped;
            v_wrapped := true;
            v_cur := NULL;
            CONTINUE;
        END IF;
        EXIT WHEN v_wrapped AND v_next > v_after;
        v_keys := v_keys || v_next;
        v_cur := v_next;
    END LOOP;

    v_round := v_keys;
    -- One key with due jobs (a flood from one tenant, or a quiet queue): its jobs are claimed as
    -- claim_jobs claims a queue's, in one statement, along job_fair_idx. The rounds below would
    -- take the same jobs in the same order (one round, since the one key fills the room or runs
    -- out), through a picked set, two arrays and a second statement.
    IF cardinality(v_keys) = 1 THEN
        RETURN QUERY
        WITH picked AS (
            SELECT j.id
            FROM {schema}.job j
            WHERE j.queue = p_queue AND j.fair_key >= v_keys[1] AND j.fair_key <= v_keys[1]
              AND j.state IN ('created', 'retry') AND j.group_key IS NULL
              AND j.run_at <= t_now
            ORDER BY j.fair_key, j.priority DESC, j.run_at, j.id
            LIMIT v_left
            FOR UPDATE SKIP LOCKED
        )
        UPDATE {schema}.job j
        SET state = 'active', attempt = j.attempt + 1, worker_id = p_worker, started_at = t_now
        FROM picked
        WHERE j.id = picked.id
        RETURNING j.id, j.queue, j.state, j.data, j.priority, j.attempt, j.retry_limit,
                  j.retry_delay, j.retry_backoff, j.retry_delay_max, j.expire_in, j.retention,
                  j.run_at, j.created_at, j.started_at, j.finished_at,
                  CASE WHEN j.meta IS NULL THEN jsonb_build_object('fair_key', j.fair_key)
                       ELSE j.meta || jsonb_build_object('fair_key', j.fair_key) END,
                  nullif(j.errors, '[]'), j.progress, j.singleton_key, j.singleton_seconds,
                  j.unique_key, j.dead_letter, j.group_key, j.depends_on, j.worker_id;
        GET DIAGNOSTICS v_got = ROW_COUNT;
        v_left := v_left - v_got;
        v_round := '{}';
    END IF;
    WHILE v_left > 0 AND cardinality(v_round) > 0 LOOP
        v_per := (v_left + cardinality(v_round) - 1) / cardinality(v_round);
        WITH picked AS MATERIALIZED (
            SELECT c.id, u.ord,
                   row_number() OVER (PARTITION BY u.ord
                                      ORDER BY c.priority DESC, c.run_at, c.id) AS rn
            FROM unnest(v_round) WITH ORDINALITY AS u(key, ord)
            CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.run_at
                FROM {schema}.job j
                -- The key's jobs in job_fair_idx's order, which only that index gives: the
                -- key is bounded on both sides rather than compared equal, so the planner
                -- keeps fair_key in the order, where an equality would drop it and leave the
                -- fetch index (whose walk to a key's jobs may pass every job of the queue) as
                -- good a plan in its eyes when the queue has few keys.
                WHERE j.queue = p_queue AND j.fair_key >= u.key AND j.fair_key <= u.key
                  AND j.state IN ('created', 'retry') AND j.group_key IS NULL
                  AND j.run_at <= t_now
                ORDER BY j.fair_key, j.priority DESC, j.run_at, j.id
                LIMIT v_per
                FOR UPDATE SKIP LOCKED
            ) c
        )
        SELECT (SELECT array_agg(k.id ORDER BY k.rn, k.ord)
                FROM (SELECT p.id, p.rn, p.ord FROM picked p
                      ORDER BY p.rn, p.ord LIMIT v_left) k),
               (SELECT array_agg(v_round[g.ord::integer] ORDER BY g.ord)
                FROM (SELECT p.ord FROM picked p GROUP BY p.ord HAVING count(*) = v_per) g)
        INTO v_ids, v_more;
        -- Column by column, as claim_jobs does since 0014 (not through as_fetched: a row built
        -- and a function run per job); the key rides in meta, as as_fetched puts it.
        RETURN QUERY
        WITH claimed AS (
            UPDATE {schema}.job j
            SET state = 'active', attempt = j.attempt + 1, worker_id = p_worker,
                started_at = t_now
            FROM unnest(v_ids) WITH ORDINALITY AS x(id, n)
            WHERE j.id = x.id
            RETURNING x.n, j.id, j.queue, j.state, j.data, j.priority, j.attempt,
                      j.retry_limit, j.retry_delay, j.retry_backoff, j.retry_delay_max,
                      j.expire_in, j.retention, j.run_at, j.created_at, j.started_at,
                      j.finished_at,
                      CASE WHEN j.meta IS NULL THEN jsonb_build_object('fair_key', j.fair_key)
                           ELSE j.meta || jsonb_build_object('fair_key', j.fair_key) END AS meta,
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
        GET DIAGNOSTICS v_got = ROW_COUNT;
        v_left := v_left - v_got;
        EXIT WHEN v_got = 0;
        v_round := coalesce(v_more, '{}');
    END LOOP;

    IF cardinality(v_keys) >= p_limit
       AND v_keys[cardinality(v_keys)] IS DISTINCT FROM v_after THEN
        PERFORM FROM {schema}.queue_fair f WHERE f.queue = p_queue FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE {schema}.queue_fair f SET after_key = v_keys[cardinality(v_keys)]
            WHERE f.queue = p_queue;
        END IF;
    END IF;
    IF v_left > 0 THEN
        RETURN QUERY SELECT * FROM {schema}.claim_jobs(ARRAY[p_queue], p_worker, v_left, p_now);
    END IF;
END
$fn$;
