-- conveyor: non-breaking
-- Fair share across tenants (issue 16), and job meta kept in the history.
--
-- A job may name a fair_key (a tenant, a customer): in a fair queue (a row of queue_fair) each
-- fetch serves the keys in turn instead of taking the queue's global head, so one key's flood
-- cannot hold back another key's job by more than one fetch (while the queue has at most as many
-- keys with runnable jobs as the fetch has room; beyond that, by the few fetches a turn takes).
-- Priority orders the jobs of one key; across keys the turn wins. Jobs sent to a fair queue
-- without a key share the key '' (so every queued job of a fair queue is found by its index).
-- Unfair queues are claimed exactly as before (claim_jobs), and their jobs never enter the new
-- index unless they carry a fair_key.
--
-- fair_key goes with a job to job_archive and job_dead, beside meta (0009), which the acks carry
-- since 0014 and which cancels, dependency failures and writes through job_history now carry
-- too, so a finished job's meta and key are read back by get_job and list_jobs.
--
-- Non-breaking: the columns are new and nullable (this release and the previous one read only
-- the columns they know), the flag lives in a table of its own, the functions older workers
-- call keep their signatures, and insert_jobs gains an overload with the keys.

ALTER TABLE {schema}.job ADD COLUMN fair_key text;
ALTER TABLE {schema}.job_archive ADD COLUMN fair_key text;
ALTER TABLE {schema}.job_dead ADD COLUMN fair_key text;

-- The runnable jobs of each key, in claim order: the fair claim walks the distinct keys of a
-- queue along it (one probe per key) and takes each key's head. Only jobs that carry a key are
-- in it; grouped jobs are claimed one head per group (claim_group_heads), as in any queue.
CREATE INDEX job_fair_idx ON {schema}.job (queue, fair_key, priority DESC, run_at, id)
    WHERE state IN ('created', 'retry') AND fair_key IS NOT NULL AND group_key IS NULL;

-- A fair queue, and where its turn stands: the last key a fetch reached when the keys
-- outnumbered the room it had (the next fetch starts after it).
CREATE TABLE {schema}.queue_fair (
    queue     text PRIMARY KEY REFERENCES {schema}.queue (name) ON DELETE CASCADE,
    after_key text,
    fair_at   timestamptz NOT NULL DEFAULT now()
);

-- As in 0012, with fair_key.
CREATE OR REPLACE VIEW {schema}.job_history AS
    SELECT id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
           retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
           singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
           created_at, started_at, finished_at, result, errors, progress, queued_key, meta,
           fair_key
    FROM {schema}.job_archive
    UNION ALL
    SELECT id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
           retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
           singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
           created_at, started_at, finished_at, result, errors, progress, queued_key, meta,
           fair_key
    FROM {schema}.job_dead;

-- As in 0012, with fair_key.
CREATE OR REPLACE FUNCTION {schema}.job_history_write() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state = 'failed' THEN
            INSERT INTO {schema}.job_dead (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
                singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
                created_at, started_at, finished_at, result, errors, progress, queued_key, meta,
                fair_key)
            SELECT NEW.*;
        ELSE
            INSERT INTO {schema}.job_archive (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
                singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
                created_at, started_at, finished_at, result, errors, progress, queued_key, meta,
                fair_key, drop_at)
            SELECT NEW.*, {schema}.archive_drop_at(
                NEW.finished_at + make_interval(secs => NEW.retention), clock_timestamp());
        END IF;
        RETURN NEW;
    END IF;
    DELETE FROM {schema}.job_archive a WHERE a.id = OLD.id;
    DELETE FROM {schema}.job_dead d WHERE d.id = OLD.id;
    RETURN OLD;
END
$fn$;

-- As in 0012, with meta and fair_key carried to the dead letters.
CREATE OR REPLACE FUNCTION {schema}.fail_waiting(p_id uuid[], p_error jsonb[], p_now timestamptz)
RETURNS void
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    dl_queue text[];
    dl_data jsonb[];
BEGIN
    DELETE FROM {schema}.job_dependency d WHERE d.job_id = ANY (p_id);
    WITH gone AS (
        DELETE FROM {schema}.job j
        USING unnest(p_id, p_error) AS e(id, error)
        WHERE j.id = e.id AND j.state = 'waiting'
        RETURNING j.*, e.error AS new_error
    ),
    archived AS (
        INSERT INTO {schema}.job_dead (
            id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
            retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
            singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
            created_at, started_at, finished_at, result, errors, progress, meta, fair_key)
        SELECT g.id, g.queue, 'failed', g.data, g.priority, g.run_at, g.attempt, g.retry_limit,
               g.retry_delay, g.retry_backoff, g.retry_delay_max, g.expire_in, g.retention,
               g.singleton_key, g.singleton_seconds, g.unique_key, g.dead_letter, g.group_key,
               g.depends_on, NULL, g.created_at, NULL, t_now, NULL, g.errors || g.new_error,
               g.progress, g.meta, g.fair_key
        FROM gone g
        RETURNING {schema}.job_dead.dead_letter, {schema}.job_dead.data
    )
    SELECT array_agg(a.dead_letter), array_agg(a.data) INTO dl_queue, dl_data
    FROM archived a WHERE a.dead_letter IS NOT NULL;
    IF dl_queue IS NOT NULL THEN
        PERFORM {schema}.insert_jobs(
            ARRAY(SELECT gen_random_uuid() FROM generate_series(1, cardinality(dl_queue))),
            dl_queue, dl_data, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, '{}', p_now);
    END IF;
END
$fn$;

-- insert_jobs (as in 0008) with each job's fair_key (p_fair_key: NULL for none); a job sent to
-- a fair queue without one gets the key ''.
CREATE FUNCTION {schema}.insert_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz, p_fair_key text[]
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    v_queued_key boolean;
    v_fair text[];
BEGIN
    INSERT INTO {schema}.queue (name)
    SELECT DISTINCT n FROM unnest(p_queue) AS n
    ON CONFLICT (name) DO NOTHING;

    -- One look at the queues, as before: whether one keeps a queued_key, and which are fair.
    SELECT coalesce(bool_or(x.policy IN ('short', 'stately')), false),
           array_agg(x.name) FILTER (
               WHERE EXISTS (SELECT FROM {schema}.queue_fair f WHERE f.queue = x.name))
    INTO v_queued_key, v_fair
    FROM {schema}.queue x
    WHERE x.name = ANY (p_queue);

    IF p_unique_key IS NULL AND p_singleton_seconds IS NULL AND NOT v_queued_key THEN
        WITH ins AS (
            INSERT INTO {schema}.job (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, dead_letter, group_key,
                depends_on, created_at, fair_key)
            SELECT r.id, r.queue, 'created', r.data, r.priority, r.run_at, 0, r.retry_limit,
                   r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
                   r.dead_letter, r.group_key, r.depends_on, r.created_at,
                   coalesce(p_fair_key[r.ord::integer],
                            CASE WHEN r.queue = ANY (v_fair) THEN '' END)
            FROM {schema}.resolve_jobs(
                p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit,
                p_retry_delay, p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention,
                NULL, NULL, NULL, NULL, p_dead_letter, p_group_key, p_depends_on,
                p_defaults, p_now) r
            RETURNING {schema}.job.queue AS q
        )
        SELECT count(pg_notify('conveyor:' || {schema_literal}, w.q)) INTO STRICT ord
        FROM (SELECT DISTINCT x.q FROM ins x) w;
        RETURN;
    END IF;

    RETURN QUERY
    WITH resolved AS MATERIALIZED (
        SELECT r.*,
               (SELECT w.id FROM {schema}.job w
                 WHERE r.unique_key IS NOT NULL AND w.queue = r.queue
                   AND w.unique_key = r.unique_key AND w.state = 'waiting') AS waiting_id,
               coalesce(p_fair_key[r.ord::integer],
                        CASE WHEN r.queue = ANY (v_fair) THEN '' END) AS fair_key
        FROM {schema}.resolve_jobs(
            p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit, p_retry_delay,
            p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention, p_singleton_key,
            p_singleton_seconds, p_unique_key, p_unique_replace, p_dead_letter, p_group_key,
            p_depends_on, p_defaults, p_now) r
    ),
    replaced AS (
        UPDATE {schema}.job j
        SET data = r.data, priority = r.priority, run_at = r.run_at,
            retry_limit = r.retry_limit, retry_delay = r.retry_delay,
            retry_backoff = r.retry_backoff, retry_delay_max = r.retry_delay_max,
            expire_in = r.expire_in, retention = r.retention, dead_letter = r.dead_letter,
            group_key = r.group_key, fair_key = r.fair_key,
            -- A waiting job keeps the dependencies it waits for.
            depends_on = CASE WHEN j.state = 'waiting' THEN j.depends_on ELSE r.depends_on END
        FROM resolved r
        WHERE r.unique_replace AND j.queue = r.queue AND j.unique_key = r.unique_key
          AND (j.id = r.waiting_id
               OR (r.waiting_id IS NULL AND j.state IN ('created', 'retry')))
        RETURNING j.id, j.queue, j.run_at, j.state, r.ord, r.created_at
    ),
    -- The running holders that replacing sends queue behind. The lock keeps each from leaving
    -- the live table until this transaction's dependency edges are committed, where the ack
    -- that finishes it will find them (as link_jobs does); a holder that finished or changed
    -- state meanwhile is skipped, and its send resolves to NULL or inserts a new holder.
    held AS (
        SELECT j.id AS holder, r.ord
        FROM resolved r
        JOIN {schema}.job j ON j.queue = r.queue AND j.unique_key = r.unique_key
        WHERE r.unique_replace AND r.waiting_id IS NULL AND j.state = 'active'
        FOR KEY SHARE OF j
    ),
    queued_behind AS (
        INSERT INTO {schema}.job (
            id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
            retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
            singleton_seconds, unique_key, dead_letter, group_key, depends_on, created_at,
            queued_key, fair_key)
        SELECT r.id, r.queue, 'waiting', r.data, r.priority, r.run_at, 0, r.retry_limit,
               r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
               NULL, NULL, r.unique_key, r.dead_letter, r.group_key, r.depends_on,
               r.created_at, r.queued_key, r.fair_key
        FROM resolved r
        JOIN held h ON h.ord = r.ord
        -- Another send queued the waiting job first: this one resolves to NULL and asks again.
        ON CONFLICT DO NOTHING
        RETURNING {schema}.job.id
    ),
    edges AS (
        INSERT INTO {schema}.job_dependency (depends_on, job_id, on_failure)
        SELECT h.holder, q.id, 'run'
        FROM queued_behind q
        JOIN resolved r ON r.id = q.id
        JOIN held h ON h.ord = r.ord
        RETURNING job_id
    ),
    throttled AS (
        INSERT INTO {schema}.throttle (queue, key, window_start, window_end, job_id)
        SELECT DISTINCT ON (r.queue, r.singleton_key, r.singleton_on)
               r.queue, r.singleton_key, r.singleton_on,
               r.singleton_on + make_interval(secs => r.singleton_seconds), r.id
        FROM resolved r
        WHERE r.singleton_seconds IS NOT NULL
        ORDER BY r.queue, r.singleton_key, r.singleton_on, r.ord
        ON CONFLICT DO NOTHING
        RETURNING job_id
    ),
    ins AS (
        INSERT INTO {schema}.job (
            id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
            retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
            singleton_seconds, unique_key, dead_letter, group_key, depends_on, created_at,
            queued_key, fair_key)
        SELECT r.id, r.queue, 'created', r.data, r.priority, r.run_at, 0, r.retry_limit,
               r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
               r.singleton_key, r.singleton_seconds, r.unique_key, r.dead_letter, r.group_key,
               r.depends_on, r.created_at, r.queued_key, r.fair_key
        FROM resolved r
        WHERE r.waiting_id IS NULL
          AND NOT EXISTS (SELECT FROM replaced x WHERE x.ord = r.ord)
          AND NOT EXISTS (SELECT FROM held h WHERE h.ord = r.ord)
          AND (r.singleton_seconds IS NULL OR r.id IN (SELECT t.job_id FROM throttled t))
        -- Any unique index: unique_key, or the one waiting job of a short or stately queue.
        ON CONFLICT DO NOTHING
        RETURNING {schema}.job.id, {schema}.job.queue, {schema}.job.run_at,
                  {schema}.job.created_at
    ),
    notified AS (
        SELECT count(pg_notify('conveyor:' || {schema_literal}, w.queue)) AS n
        FROM (SELECT DISTINCT s.queue FROM (
                  SELECT x.queue FROM ins x
                  UNION ALL SELECT y.queue FROM replaced y WHERE y.state <> 'waiting') s) w
    )
    SELECT r.ord,
           coalesce(
               x.id,
               y.id,
               b.id,
               -- A keeping send resolves to the job its key runs next: the waiting one, else
               -- the holder. A replacing send that wrote nothing asks again (NULL).
               (SELECT j.id FROM {schema}.job j
                 WHERE r.unique_key IS NOT NULL AND NOT r.unique_replace AND j.queue = r.queue
                   AND j.unique_key = r.unique_key
                 ORDER BY j.state = 'waiting' DESC
                 LIMIT 1),
               (SELECT t.job_id FROM {schema}.throttle t
                 WHERE r.singleton_seconds IS NOT NULL AND t.queue = r.queue
                   AND t.key = r.singleton_key AND t.window_start = r.singleton_on),
               (SELECT j.id FROM {schema}.job j
                 WHERE r.unique_key IS NULL AND r.queued_key IS NOT NULL
                   AND j.queued_key = r.queued_key AND j.state = 'created')),
           x.id IS NOT NULL OR b.id IS NOT NULL
    FROM resolved r
    CROSS JOIN notified
    CROSS JOIN (SELECT count(*) FROM edges) e
    LEFT JOIN ins x ON x.id = r.id
    LEFT JOIN replaced y ON y.ord = r.ord
    LEFT JOIN queued_behind b ON b.id = r.id
    ORDER BY r.ord;
END
$fn$;

-- The previous signature, for older workers and the SQL functions that call it: the same
-- insert, without keys (a job sent to a fair queue still gets the key '').
CREATE OR REPLACE FUNCTION {schema}.insert_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
LANGUAGE sql AS $fn$
    SELECT * FROM {schema}.insert_jobs(
        p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit, p_retry_delay,
        p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention, p_singleton_key,
        p_singleton_seconds, p_unique_key, p_unique_replace, p_dead_letter, p_group_key,
        p_depends_on, p_defaults, p_now, NULL::text[])
$fn$;

-- insert_linked_jobs (as in 0002) with each job's fair_key.
CREATE FUNCTION {schema}.insert_linked_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz,
    p_on_failure text[], p_on_complete text[], p_fair_key text[]
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
LANGUAGE plpgsql SET jit = off AS $fn$
DECLARE
    v_ord bigint[];
    v_id uuid[];
    v_inserted boolean[];
BEGIN
    SELECT array_agg(r.ord ORDER BY r.ord), array_agg(r.id ORDER BY r.ord),
           array_agg(r.inserted ORDER BY r.ord)
    INTO v_ord, v_id, v_inserted
    FROM {schema}.insert_jobs(
        p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit, p_retry_delay,
        p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention, p_singleton_key,
        p_singleton_seconds, p_unique_key, p_unique_replace, p_dead_letter, p_group_key,
        p_depends_on, p_defaults, p_now, p_fair_key) r;
    PERFORM {schema}.link_jobs(p_id, p_on_failure, p_on_complete, p_now);
    RETURN QUERY SELECT * FROM unnest(v_ord, v_id, v_inserted);
END
$fn$;

-- send() (as in 0009) takes the option fair_key, a string of at most 255 characters.
CREATE OR REPLACE FUNCTION {schema}.send(
    queue text, data jsonb DEFAULT NULL, options jsonb DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $fn$
DECLARE
    o jsonb := coalesce(options, '{}'::jsonb);
    job_id uuid;
BEGIN
    IF jsonb_typeof(o) <> 'object' THEN
        RETURN {schema}.send_unlinked(queue, data, o);
    END IF;
    IF o ? 'meta' AND jsonb_typeof(o->'meta') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'meta must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(o->'fair_key') NOT IN ('string', 'null')
       OR length(o->>'fair_key') NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'fair_key must be a string of 1 to 255 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF o ? 'on_dependency_failure'
       AND coalesce(o->>'on_dependency_failure', '') NOT IN ('fail', 'run') THEN
        RAISE EXCEPTION 'on_dependency_failure must be fail or run'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF o ? 'on_complete'
       AND coalesce(o->>'on_complete', '') !~ '^[A-Za-z0-9_][A-Za-z0-9_.\-/:]{0,127}$' THEN
        RAISE EXCEPTION 'invalid on_complete queue name %', coalesce(o->>'on_complete', 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    job_id := {schema}.send_unlinked(
        queue, data, o - 'on_complete' - 'on_dependency_failure' - 'meta' - 'fair_key');
    IF o ? 'depends_on' OR o ? 'on_complete' THEN
        PERFORM {schema}.link_jobs(
            ARRAY[job_id], ARRAY[o->>'on_dependency_failure'], ARRAY[o->>'on_complete'], NULL);
    END IF;
    IF o ? 'meta' THEN
        UPDATE {schema}.job j SET meta = o->'meta' WHERE j.id = job_id AND j.meta IS NULL;
    END IF;
    -- Only a job this send wrote: one it resolved to (a unique key kept) keeps its own key.
    IF o->>'fair_key' IS NOT NULL THEN
        UPDATE {schema}.job j SET fair_key = o->>'fair_key'
        WHERE j.id = job_id AND j.xmin = pg_current_xact_id()::xid;
    END IF;
    RETURN job_id;
END
$fn$;

-- Claim up to p_limit jobs of one fair queue: the keys take turns. The keys with queued jobs
-- are walked along job_fair_idx (one probe each, never a scan of a key's jobs), starting after
-- the queue's after_key and wrapping around, at most p_limit of them; each round then takes the
-- head of every key walked (priority, then run_at, as claim_jobs orders a queue), so a key with
-- one job gets it into this fetch however many jobs another key holds. Rounds go on while room
-- is left and some key may have more. Whatever room remains goes to claim_jobs, which finds the
-- queue's jobs without a key (sent before the queue was made fair, or without the column).
-- A fetch that walked as many keys as it had room for moves after_key to the last of them, if
-- no other fetch of this queue holds that row (it never waits for one).
CREATE FUNCTION {schema}.claim_fair(
    p_queue text, p_worker uuid, p_limit integer, p_now timestamptz
) RETURNS SETOF {schema}.job_fetched
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
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
            SELECT min(j.fair_key) INTO v_next FROM {schema}.job j
            WHERE j.queue = p_queue AND j.state IN ('created', 'retry')
              AND j.fair_key IS NOT NULL AND j.group_key IS NULL;
        ELSE
            SELECT min(j.fair_key) INTO v_next FROM {schema}.job j
            WHERE j.queue = p_queue AND j.state IN ('created', 'retry')
              AND j.fair_key IS NOT NULL AND j.group_key IS NULL AND j.fair_key > v_cur;
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
                      coalesce(j.meta, '{}') || jsonb_build_object('fair_key', j.fair_key)
                          AS meta,
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

-- fetch_jobs (as in 0007): a fair queue is claimed by claim_fair where claim_jobs took the
-- others, within the same limits (concurrency, policies, rate limit: under the queue row's lock)
-- and after the same pause check; its groups are claimed one head each, as before. Fetches that
-- name no fair queue run the statements they ran before, plus one probe of queue_fair per queue,
-- made by the pause check's statement.
CREATE OR REPLACE FUNCTION {schema}.fetch_jobs(
    p_queues text[], p_worker uuid, p_limit integer, p_now timestamptz
) RETURNS SETOF {schema}.job_fetched
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    left_over integer := p_limit;
    limited text[];
    fair text[];
    qname text;
    q {schema}.queue;
    allowed integer;
    running integer;
    tokens double precision;
    got integer;
    more integer;
    free text[];
BEGIN
    -- Paused queues leave the list first: no claim below sees them.
    SELECT coalesce(array_agg(u.name ORDER BY u.n), '{}'),
           coalesce(array_agg(u.name ORDER BY u.n) FILTER (
               WHERE EXISTS (SELECT FROM {schema}.queue_fair f WHERE f.queue = u.name)), '{}')
    INTO p_queues, fair
    FROM unnest(p_queues) WITH ORDINALITY AS u(name, n)
    WHERE NOT EXISTS (SELECT FROM {schema}.queue_pause x WHERE x.queue = u.name);
    SELECT coalesce(array_agg(x.name ORDER BY x.name), '{}') INTO limited
    FROM {schema}.queue x
    WHERE x.name = ANY (p_queues)
      AND (x.concurrency IS NOT NULL OR x.policy IN ('singleton', 'stately')
           OR x.rate_limit IS NOT NULL);
    FOREACH qname IN ARRAY limited LOOP
        EXIT WHEN left_over <= 0;
        SELECT * INTO q FROM {schema}.queue x WHERE x.name = qname FOR UPDATE;
        allowed := left_over;
        IF q.concurrency IS NOT NULL OR q.policy IN ('singleton', 'stately') THEN
            SELECT count(*) INTO running FROM {schema}.job j
            WHERE j.queue = qname AND j.state = 'active';
            allowed := least(allowed, coalesce(q.concurrency, 1) - running);
            IF q.policy IN ('singleton', 'stately') THEN
                allowed := least(allowed, 1 - running);
            END IF;
        END IF;
        IF q.rate_limit IS NOT NULL THEN
            tokens := least(q.rate_limit::double precision,
                            coalesce(q.rate_tokens, q.rate_limit)
                            + greatest(extract(epoch FROM t_now - coalesce(q.rate_refilled_at,
                                                                           t_now)), 0)
                              * q.rate_limit / q.rate_interval);
            allowed := least(allowed, floor(tokens)::integer);
        END IF;
        got := 0;
        IF allowed > 0 THEN
            IF qname = ANY (fair) THEN
                RETURN QUERY SELECT * FROM {schema}.claim_fair(qname, p_worker, allowed, p_now);
            ELSE
                RETURN QUERY SELECT * FROM {schema}.claim_jobs(
                    ARRAY[qname], p_worker, allowed, p_now);
            END IF;
            GET DIAGNOSTICS got = ROW_COUNT;
            IF got < allowed THEN
                RETURN QUERY SELECT * FROM {schema}.claim_group_heads(
                    ARRAY[qname], p_worker, allowed - got, p_now);
                GET DIAGNOSTICS more = ROW_COUNT;
                got := got + more;
            END IF;
            left_over := left_over - got;
        END IF;
        IF q.rate_limit IS NOT NULL THEN
            UPDATE {schema}.queue x SET rate_tokens = tokens - got, rate_refilled_at = t_now
            WHERE x.name = qname;
        END IF;
    END LOOP;
    IF left_over > 0 AND cardinality(p_queues) > cardinality(limited) THEN
        free := ARRAY(SELECT u FROM unnest(p_queues) AS u WHERE u <> ALL (limited));
        IF cardinality(fair) = 0 THEN
            RETURN QUERY SELECT * FROM {schema}.claim_jobs(free, p_worker, left_over, p_now);
            GET DIAGNOSTICS got = ROW_COUNT;
        ELSE
            FOREACH qname IN ARRAY free LOOP
                EXIT WHEN left_over <= 0;
                CONTINUE WHEN qname <> ALL (fair);
                RETURN QUERY SELECT * FROM {schema}.claim_fair(qname, p_worker, left_over, p_now);
                GET DIAGNOSTICS got = ROW_COUNT;
                left_over := left_over - got;
            END LOOP;
            got := 0;
            IF left_over > 0 AND EXISTS (SELECT FROM unnest(free) AS u WHERE u <> ALL (fair)) THEN
                RETURN QUERY SELECT * FROM {schema}.claim_jobs(
                    ARRAY(SELECT u FROM unnest(free) AS u WHERE u <> ALL (fair)),
                    p_worker, left_over, p_now);
                GET DIAGNOSTICS got = ROW_COUNT;
            END IF;
        END IF;
        IF got < left_over THEN
            RETURN QUERY SELECT * FROM {schema}.claim_group_heads(
                free, p_worker, left_over - got, p_now);
        END IF;
    END IF;
END
$fn$;

-- A claimed job carries its fair_key in meta (the claim's row type is fixed: see 0009), where
-- conveyor._store.rows.fetched_job takes it out again: claim_fair puts it there, and so does
-- as_fetched for group heads (claim_group_heads). claim_jobs, which claims the jobs of queues
-- that are not fair, is left as 0014 made it, so a job claimed there shows no key.
CREATE OR REPLACE FUNCTION {schema}.as_fetched(j {schema}.job) RETURNS {schema}.job_fetched
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT j.id, j.queue, j.state, j.data, j.priority, j.attempt, j.retry_limit, j.retry_delay,
           j.retry_backoff, j.retry_delay_max, j.expire_in, j.retention, j.run_at, j.created_at,
           j.started_at, j.finished_at,
           CASE WHEN j.fair_key IS NULL THEN j.meta
                ELSE coalesce(j.meta, '{}') || jsonb_build_object('fair_key', j.fair_key) END,
           nullif(j.errors, '[]'), j.progress, j.singleton_key,
           j.singleton_seconds, j.unique_key, j.dead_letter, j.group_key, j.depends_on,
           j.worker_id
$fn$;

-- As in 0014, with fair_key carried to job_archive and job_dead beside meta.
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
    IF v_zero IS NOT NULL AND v_waiting THEN
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
            WHERE octet_length((to_jsonb(z) - 'data' - 'queued_key' - 'meta' - 'drop_at')::text) > 3800
               OR EXISTS (SELECT FROM {schema}.job_hook k WHERE k.job_id = z.id)
               OR EXISTS (SELECT FROM {schema}.job_dependency d WHERE d.depends_on = z.id)
            RETURNING {schema}.job_archive.id
        ), told AS (
            SELECT o.body, sum(octet_length(o.body) + 1) OVER (ORDER BY o.n) AS upto
            FROM (SELECT (to_jsonb(z) - 'data' - 'queued_key' - 'meta' - 'drop_at')::text AS body,
                         row_number() OVER () AS n
                  FROM unnest(v_zero) AS z
                  WHERE z.id NOT IN (SELECT k.id FROM kept k)) o
        )
        -- Each outcome is at most 3800 bytes, so a group of those ending in one 3800-byte
        -- stretch stays under the 8000-byte limit.
        SELECT array_cat(v_done, (SELECT array_agg(k.id) FROM kept k)),
               (SELECT count(pg_notify('conveyor:' || {schema_literal} || ':done',
                                       '[' || g.bodies || ']'))
                FROM (SELECT string_agg(t.body, ',') AS bodies
                      FROM told t GROUP BY (t.upto - 1) / 3800) g)::integer
        INTO v_done, v_told;
    ELSIF v_zero IS NOT NULL
          AND (EXISTS (SELECT FROM {schema}.job_hook) OR EXISTS (SELECT FROM {schema}.job_dependency)) THEN
        -- Nobody waits for these outcomes: only dependants and completion hooks need the row.
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
            WHERE EXISTS (SELECT FROM {schema}.job_hook k WHERE k.job_id = z.id)
               OR EXISTS (SELECT FROM {schema}.job_dependency d WHERE d.depends_on = z.id)
            RETURNING {schema}.job_archive.id
        )
        SELECT array_cat(v_done, (SELECT array_agg(k.id) FROM kept k)) INTO v_done;
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
