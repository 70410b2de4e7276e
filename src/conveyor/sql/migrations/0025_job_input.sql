-- conveyor: non-breaking
-- 0025: one row type for a job to insert.
--
-- insert_jobs took one array per option (21 of them, 22 with fair_key), and the functions that
-- send a job of their own (dead letters, completion hooks, send()) called it with a NULL for
-- every option they left out. A job to insert is now one value of job_input, whose fields are
-- JobSpec's in the client: insert_jobs(job_input[], defaults, now) and insert_linked_jobs, the
-- same with its dependencies and completion hook linked. new_job(queue, data) is a job with
-- nothing else set.
--
-- The array signatures stay, for workers of earlier releases still running while this one rolls
-- out: each turns its arrays into job_input rows (job_inputs) and calls the new function, so one
-- body does the work whichever release calls it. Only resolve_jobs' array form goes: nothing but
-- insert_jobs ever called it.

CREATE TYPE {schema}.job_input AS (
    id uuid,
    queue text,
    data jsonb,
    priority integer,
    run_at timestamptz,
    delay double precision,
    retry_limit integer,
    retry_delay double precision,
    retry_backoff text,
    retry_delay_max double precision,
    expire_in double precision,
    retention double precision,
    singleton_key text,
    singleton_seconds integer,
    unique_key text,
    unique_replace boolean,
    dead_letter text,
    group_key text,
    depends_on jsonb,
    fair_key text,
    on_dependency_failure text,
    on_complete text
);

-- A new job on p_queue carrying p_data, every option left to its queue's or the default.
CREATE FUNCTION {schema}.new_job(p_queue text, p_data jsonb) RETURNS {schema}.job_input
LANGUAGE plpgsql AS $fn$
DECLARE
    j {schema}.job_input;
BEGIN
    j.id := gen_random_uuid();
    j.queue := p_queue;
    j.data := p_data;
    RETURN j;
END
$fn$;

-- Parallel arrays (one element per job; a NULL array: no job sets that field) as job_input rows,
-- in order: the client's batch, sent as arrays because they are the cheapest to transmit, and
-- the array signatures kept for earlier releases. plpgsql, whose plan is kept for the session:
-- a SQL function like this one is planned again at every call (0.1-0.2 ms for a batch).
CREATE FUNCTION {schema}.job_inputs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_fair_key text[], p_on_dependency_failure text[],
    p_on_complete text[]
) RETURNS {schema}.job_input[]
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    RETURN ARRAY(
        SELECT ROW(i.id, i.queue, i.data, i.priority, i.run_at, i.delay, i.retry_limit,
                   i.retry_delay, i.retry_backoff, i.retry_delay_max, i.expire_in, i.retention,
                   i.singleton_key, i.singleton_seconds, i.unique_key, i.unique_replace,
                   i.dead_letter, i.group_key, i.depends_on, i.fair_key,
                   i.on_dependency_failure, i.on_complete)::{schema}.job_input
        FROM unnest(p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit,
                    p_retry_delay, p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention,
                    p_singleton_key, p_singleton_seconds, p_unique_key, p_unique_replace,
                    p_dead_letter, p_group_key, p_depends_on, p_fair_key,
                    p_on_dependency_failure, p_on_complete)
             WITH ORDINALITY AS i(id, queue, data, priority, run_at, delay, retry_limit,
                                  retry_delay, retry_backoff, retry_delay_max, expire_in,
                                  retention, singleton_key, singleton_seconds, unique_key,
                                  unique_replace, dead_letter, group_key, depends_on, fair_key,
                                  on_dependency_failure, on_complete, ord)
        ORDER BY i.ord);
END
$fn$;

-- Each job's options resolved (as in 0001): the job's own, else its queue's default, else the
-- app's (p_defaults), else the built-in one; with its place in p_jobs (ord) and its fair_key
-- as sent.
CREATE FUNCTION {schema}.resolve_jobs(
    p_jobs {schema}.job_input[], p_defaults jsonb, p_now timestamptz
) RETURNS TABLE (
    ord bigint, id uuid, queue text, data jsonb, priority integer, run_at timestamptz,
    retry_limit integer, retry_delay double precision, retry_backoff text,
    retry_delay_max double precision, expire_in double precision, retention double precision,
    singleton_key text, singleton_seconds integer, singleton_on timestamptz, unique_key text,
    unique_replace boolean, dead_letter text, group_key text, depends_on uuid[],
    created_at timestamptz, queued_key text, fair_key text
)
LANGUAGE sql STABLE AS $fn$
    SELECT i.ordinality, i.id, i.queue, i.data,
           coalesce(i.priority, q.priority, (p_defaults->>'priority')::integer, 0),
           coalesce(i.run_at, coalesce(p_now, now()) + make_interval(secs => coalesce(i.delay, 0))),
           coalesce(i.retry_limit, q.retry_limit, (p_defaults->>'retry_limit')::integer, 2),
           coalesce(i.retry_delay, q.retry_delay,
                    (p_defaults->>'retry_delay')::double precision, 5),
           coalesce(i.retry_backoff, q.retry_backoff, p_defaults->>'retry_backoff', 'exponential'),
           coalesce(i.retry_delay_max, q.retry_delay_max,
                    (p_defaults->>'retry_delay_max')::double precision, 3600),
           coalesce(i.expire_in, q.expire_in, (p_defaults->>'expire_in')::double precision, 900),
           coalesce(i.retention, q.retention,
                    (p_defaults->>'retention')::double precision, 604800),
           i.singleton_key, i.singleton_seconds,
           to_timestamp(floor(extract(epoch FROM coalesce(p_now, now())) / i.singleton_seconds)
                        * i.singleton_seconds),
           i.unique_key, coalesce(i.unique_replace, false),
           coalesce(i.dead_letter, q.dead_letter),
           i.group_key,
           CASE WHEN i.depends_on IS NOT NULL THEN
               ARRAY(SELECT jsonb_array_elements_text(i.depends_on)::uuid)
           END,
           coalesce(p_now, now()),
           CASE WHEN q.policy IN ('short', 'stately') THEN i.queue END,
           i.fair_key
    FROM unnest(p_jobs) WITH ORDINALITY AS i
    LEFT JOIN {schema}.queue q ON q.name = i.queue
$fn$;

-- insert_jobs (as in 0015), taking job_input rows. Per job, in order: the id it resolved to
-- (NULL: ask again) and whether it was inserted; no row at all when every job was inserted by
-- the plain path (no unique or throttle key, no queue keeping a queued key). A job sent to a
-- fair queue without a fair_key gets the key ''. Dependencies and completion hooks are not
-- linked here: see insert_linked_jobs.
CREATE FUNCTION {schema}.insert_jobs(
    p_jobs {schema}.job_input[], p_defaults jsonb, p_now timestamptz
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    v_queues text[];
    v_keyed boolean;
    v_queued_key boolean;
    v_fair text[];
    v_notified bigint;
BEGIN
    SELECT array_agg(DISTINCT j.queue),
           coalesce(bool_or(j.unique_key IS NOT NULL OR j.singleton_seconds IS NOT NULL), false)
    INTO v_queues, v_keyed
    FROM unnest(p_jobs) AS j;

    INSERT INTO {schema}.queue (name)
    SELECT n FROM unnest(v_queues) AS n
    ON CONFLICT (name) DO NOTHING;

    -- One look at the queues: whether one keeps a queued key, and which are fair.
    SELECT coalesce(bool_or(x.policy IN ('short', 'stately')), false),
           array_agg(x.name) FILTER (
               WHERE EXISTS (SELECT FROM {schema}.queue_fair f WHERE f.queue = x.name))
    INTO v_queued_key, v_fair
    FROM {schema}.queue x
    WHERE x.name = ANY (v_queues);

    IF NOT v_keyed AND NOT v_queued_key THEN
        WITH ins AS (
            INSERT INTO {schema}.job (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, dead_letter, group_key,
                depends_on, created_at, fair_key)
            SELECT r.id, r.queue, 'created', r.data, r.priority, r.run_at, 0, r.retry_limit,
                   r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
                   r.dead_letter, r.group_key, r.depends_on, r.created_at,
                   coalesce(r.fair_key, CASE WHEN r.queue = ANY (v_fair) THEN '' END)
            FROM {schema}.resolve_jobs(p_jobs, p_defaults, p_now) r
            RETURNING {schema}.job.queue AS q
        )
        SELECT count(pg_notify('conveyor:' || {schema_literal}, w.q)) INTO STRICT v_notified
        FROM (SELECT DISTINCT x.q FROM ins x) w;
        RETURN;
    END IF;

    RETURN QUERY
    WITH resolved AS MATERIALIZED (
        SELECT r.ord, r.id, r.queue, r.data, r.priority, r.run_at, r.retry_limit,
               r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
               r.singleton_key, r.singleton_seconds, r.singleton_on, r.unique_key,
               r.unique_replace, r.dead_letter, r.group_key, r.depends_on, r.created_at,
               r.queued_key,
               (SELECT w.id FROM {schema}.job w
                 WHERE r.unique_key IS NOT NULL AND w.queue = r.queue
                   AND w.unique_key = r.unique_key AND w.state = 'waiting') AS waiting_id,
               coalesce(r.fair_key, CASE WHEN r.queue = ANY (v_fair) THEN '' END) AS fair_key
        FROM {schema}.resolve_jobs(p_jobs, p_defaults, p_now) r
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

-- insert_jobs, then the jobs' dependencies and completion hooks linked (link_jobs, as
-- insert_linked_jobs did in 0015).
CREATE FUNCTION {schema}.insert_linked_jobs(
    p_jobs {schema}.job_input[], p_defaults jsonb, p_now timestamptz
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
LANGUAGE plpgsql SET jit = off AS $fn$
DECLARE
    v_ord bigint[];
    v_id uuid[];
    v_inserted boolean[];
    v_job uuid[];
    v_on_failure text[];
    v_on_complete text[];
BEGIN
    SELECT array_agg(r.ord ORDER BY r.ord), array_agg(r.id ORDER BY r.ord),
           array_agg(r.inserted ORDER BY r.ord)
    INTO v_ord, v_id, v_inserted
    FROM {schema}.insert_jobs(p_jobs, p_defaults, p_now) r;
    SELECT array_agg(j.id ORDER BY j.ordinality),
           array_agg(j.on_dependency_failure ORDER BY j.ordinality),
           array_agg(j.on_complete ORDER BY j.ordinality)
    INTO v_job, v_on_failure, v_on_complete
    FROM unnest(p_jobs) WITH ORDINALITY AS j;
    PERFORM {schema}.link_jobs(v_job, v_on_failure, v_on_complete, p_now);
    RETURN QUERY SELECT * FROM unnest(v_ord, v_id, v_inserted);
END
$fn$;

-- The array signatures of 0015, for earlier releases: the same rows, by the functions above.
CREATE OR REPLACE FUNCTION {schema}.insert_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz, p_fair_key text[]
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
LANGUAGE sql AS $fn$
    SELECT * FROM {schema}.insert_jobs(
        {schema}.job_inputs(
            p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit, p_retry_delay,
            p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention, p_singleton_key,
            p_singleton_seconds, p_unique_key, p_unique_replace, p_dead_letter, p_group_key,
            p_depends_on, p_fair_key, NULL, NULL),
        p_defaults, p_now)
$fn$;

CREATE OR REPLACE FUNCTION {schema}.insert_linked_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz,
    p_on_failure text[], p_on_complete text[], p_fair_key text[]
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
LANGUAGE sql AS $fn$
    SELECT * FROM {schema}.insert_linked_jobs(
        {schema}.job_inputs(
            p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit, p_retry_delay,
            p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention, p_singleton_key,
            p_singleton_seconds, p_unique_key, p_unique_replace, p_dead_letter, p_group_key,
            p_depends_on, p_fair_key, p_on_failure, p_on_complete),
        p_defaults, p_now)
$fn$;

-- send() (as in 0002), building its job as one job_input.
CREATE OR REPLACE FUNCTION {schema}.send_unlinked(
    queue text, data jsonb DEFAULT NULL, options jsonb DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $fn$
DECLARE
    o jsonb := coalesce(options, '{}'::jsonb);
    opt text;
    limit_bytes bigint := coalesce(
        nullif(current_setting('conveyor.max_payload_bytes', true), '')::bigint, 1048576);
    start_after jsonb;
    job_id uuid;
    keyed boolean;
    j {schema}.job_input;
BEGIN
    IF queue IS NULL OR queue !~ '^[A-Za-z0-9_][A-Za-z0-9_.\-/:]{0,127}$' THEN
        RAISE EXCEPTION 'invalid queue name %', coalesce(quote_literal(queue), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(o) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR opt IN SELECT jsonb_object_keys(o) LOOP
        IF opt <> ALL (ARRAY['priority', 'start_after', 'retry_limit', 'retry_delay',
                             'retry_backoff', 'retry_delay_max', 'expire_in', 'retention',
                             'singleton_key', 'singleton_seconds', 'unique_key', 'unique_mode',
                             'debounce_seconds', 'dead_letter', 'group_key', 'depends_on']) THEN
            RAISE EXCEPTION 'unknown job option %', quote_literal(opt)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF octet_length(data::text) > limit_bytes THEN
        RAISE EXCEPTION 'payload is % bytes, over the limit of % bytes',
            octet_length(data::text), limit_bytes USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF o ? 'singleton_key' AND NOT o ? 'singleton_seconds' THEN
        RAISE EXCEPTION 'singleton_key needs singleton_seconds'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF o ? 'unique_mode' AND coalesce(o->>'unique_mode', '') NOT IN ('keep', 'replace') THEN
        RAISE EXCEPTION 'unique_mode must be keep or replace'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    start_after := o->'start_after';
    IF o ? 'debounce_seconds' THEN
        -- The job runs this long after the last send of its unique_key, which replaces it.
        IF NOT o ? 'unique_key' OR o ? 'start_after' THEN
            RAISE EXCEPTION 'debounce_seconds needs a unique_key and no start_after'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        start_after := o->'debounce_seconds';
        o := o || '{"unique_mode": "replace"}';
    END IF;
    keyed := o ? 'unique_key' OR o ? 'singleton_seconds';
    j.queue := queue;
    j.data := data;
    j.priority := (o->>'priority')::integer;
    j.run_at := CASE WHEN jsonb_typeof(start_after) = 'string'
                     THEN (start_after #>> '{}')::timestamptz END;
    j.delay := CASE WHEN jsonb_typeof(start_after) = 'number'
                    THEN (start_after #>> '{}')::double precision END;
    j.retry_limit := (o->>'retry_limit')::integer;
    j.retry_delay := (o->>'retry_delay')::double precision;
    j.retry_backoff := CASE o->'retry_backoff' WHEN 'true' THEN 'exponential'
                                               WHEN 'false' THEN 'fixed'
                                               ELSE o->>'retry_backoff' END;
    j.retry_delay_max := (o->>'retry_delay_max')::double precision;
    j.expire_in := (o->>'expire_in')::double precision;
    j.retention := (o->>'retention')::double precision;
    j.singleton_key := CASE WHEN o ? 'singleton_seconds' THEN coalesce(o->>'singleton_key', '') END;
    j.singleton_seconds := (o->>'singleton_seconds')::integer;
    j.unique_key := o->>'unique_key';
    j.unique_replace := coalesce(o->>'unique_mode', 'keep') = 'replace';
    j.dead_letter := o->>'dead_letter';
    j.group_key := o->>'group_key';
    j.depends_on := o->'depends_on';
    FOR attempt IN 1..3 LOOP
        j.id := gen_random_uuid();
        SELECT coalesce(r.id, CASE WHEN NOT keyed THEN j.id END) INTO job_id
        FROM (SELECT NULL::uuid AS id) nothing
        LEFT JOIN {schema}.insert_jobs(ARRAY[j], NULL, NULL) r ON true;
        EXIT WHEN job_id IS NOT NULL;
    END LOOP;
    RETURN job_id;
END
$fn$;

-- As in 0017, its dead letters sent as job_input rows.
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

-- As in 0015, its dead letters sent as job_input rows.
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
            ARRAY(SELECT {schema}.new_job(u.q, u.d) FROM unnest(dl_queue, dl_data) AS u(q, d)),
            '{}', p_now);
    END IF;
END
$fn$;

-- As in 0004, its completion hooks' jobs sent as job_input rows.
CREATE OR REPLACE FUNCTION {schema}.job_finished() RETURNS trigger
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := now();
    v_job uuid[];
    v_fail uuid[];
    v_error jsonb[];
    v_due text[];
BEGIN
    IF EXISTS (SELECT FROM {schema}.job_hook LIMIT 1) THEN
        PERFORM {schema}.insert_jobs(
            array_agg({schema}.new_job(h.on_complete, jsonb_build_object(
                'job_id', f.id, 'queue', f.queue, 'state', f.state, 'attempt', f.attempt,
                'data', f.data, 'result', f.result,
                'error', CASE WHEN f.state <> 'completed' THEN f.errors -> -1 END))),
            '{}', NULL)
        FROM finished f JOIN {schema}.job_hook h ON h.job_id = f.id
        HAVING count(*) > 0;
    END IF;

    IF NOT EXISTS (SELECT FROM {schema}.job_dependency LIMIT 1) THEN
        RETURN NULL;
    END IF;
    WITH done AS (
        DELETE FROM {schema}.job_dependency d
        USING finished f
        WHERE d.depends_on = f.id
        RETURNING d.job_id, d.on_failure, f.id AS dependency, f.state, f.queue
    )
    SELECT array_agg(DISTINCT x.job_id),
           array_agg(x.job_id) FILTER (WHERE x.state <> 'completed' AND x.on_failure = 'fail'),
           array_agg(jsonb_build_object(
               'attempt', 0, 'type', 'DependencyFailed',
               'message', format('dependency %s (queue %s) ended %s', x.dependency, x.queue,
                                 x.state),
               'traceback', NULL, 'dependency', x.dependency, 'at', t_now))
               FILTER (WHERE x.state <> 'completed' AND x.on_failure = 'fail')
    INTO v_job, v_fail, v_error
    FROM done x;
    IF v_job IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM FROM {schema}.job j WHERE j.id = ANY (v_job) ORDER BY j.id FOR UPDATE;
    IF v_fail IS NOT NULL THEN
        PERFORM {schema}.fail_waiting(v_fail, v_error, t_now);
    END IF;
    -- A job about to be released whose unique_key another live job took meanwhile waits for
    -- that job instead. The lock keeps it live until this edge is committed (see insert_jobs).
    INSERT INTO {schema}.job_dependency (depends_on, job_id, on_failure)
    SELECT o.id, j.id, 'run'
    FROM {schema}.job j
    JOIN {schema}.job o
      ON o.queue = j.queue AND o.unique_key = j.unique_key AND o.state <> 'waiting'
    WHERE j.id = ANY (v_job) AND j.state = 'waiting' AND j.unique_key IS NOT NULL
      AND NOT EXISTS (SELECT FROM {schema}.job_dependency d WHERE d.job_id = j.id)
    FOR KEY SHARE OF o;
    WITH released AS (
        UPDATE {schema}.job j
        -- A job of a short or stately queue comes back as 'retry', beside the one job allowed
        -- to wait in 'created' (as ack_jobs requeues it).
        SET state = CASE WHEN j.queued_key IS NOT NULL THEN 'retry' ELSE 'created' END,
            run_at = greatest(j.run_at, t_now)
        WHERE j.id = ANY (v_job) AND j.state = 'waiting'
          AND NOT EXISTS (SELECT FROM {schema}.job_dependency d WHERE d.job_id = j.id)
        RETURNING j.queue, j.run_at <= t_now AS due
    )
    SELECT array_agg(DISTINCT r.queue) FILTER (WHERE r.due) INTO v_due FROM released r;
    PERFORM pg_notify('conveyor:' || {schema_literal}, q) FROM unnest(v_due) AS q;
    RETURN NULL;
END
$fn$;

-- Nothing calls the array form any more (insert_jobs was its only caller).
DROP FUNCTION {schema}.resolve_jobs(
    uuid[], text[], jsonb[], integer[], timestamptz[], double precision[], integer[],
    double precision[], text[], double precision[], double precision[], double precision[],
    text[], integer[], text[], boolean[], text[], text[], jsonb[], jsonb, timestamptz);
