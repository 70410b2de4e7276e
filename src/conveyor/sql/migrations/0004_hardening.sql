-- conveyor: non-breaking
-- Hardening (issue 13). Every function keeps its signature, so workers of the previous release
-- run unchanged on this schema.
--
-- 1. A replacing send (unique_mode 'replace', debounce_seconds) that arrives while its key's job
--    runs queues one job behind the running one instead of resolving to it, so the newer payload
--    is processed. A key now has two places: the job that holds it (queued or running, state
--    other than 'waiting') and the job that waits (state 'waiting': one sent behind a running
--    holder, or one waiting for its depends_on). The waiting one is the one a later replacing
--    send rewrites; it waits through an ordinary dependency edge on the holder (policy 'run':
--    whatever the holder's outcome, the newer payload still runs).
-- 2. A job waiting for its dependencies takes no place in its group's line (group_key): it
--    was claimed as its group's head before its dependencies finished. Every claim now names
--    the states it leaves.
-- 3. A released dependant never collides with a unique index: one of a short or stately queue
--    comes back as 'retry' (beside the one job allowed in 'created'), and one whose unique_key
--    another live job took meanwhile (revived from the dead letters) waits for that job.

DROP INDEX {schema}.job_unique_key_idx;
CREATE UNIQUE INDEX job_unique_key_idx ON {schema}.job (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state <> 'waiting';
CREATE UNIQUE INDEX job_unique_waiting_idx ON {schema}.job (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state = 'waiting';

-- As in 0001, but for keyed jobs. A replacing send rewrites the key's waiting job if there is
-- one, else its holder while queued; with the holder running it inserts a job waiting behind it.
-- No send inserts a holder while a job waits on the key, so a waiting job is released into a
-- free place. A replacing send that wrote nothing (its holder changed state, or a concurrent send
-- queued the waiting job first) resolves to NULL: the caller asks again with a fresh snapshot.
CREATE OR REPLACE FUNCTION {schema}.insert_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
BEGIN
    INSERT INTO {schema}.queue (name)
    SELECT DISTINCT n FROM unnest(p_queue) AS n
    ON CONFLICT (name) DO NOTHING;

    IF p_unique_key IS NULL AND p_singleton_seconds IS NULL AND NOT EXISTS (
        SELECT FROM {schema}.queue x
        WHERE x.name = ANY (p_queue) AND x.policy IN ('short', 'stately')
    ) THEN
        WITH ins AS (
            INSERT INTO {schema}.job (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, dead_letter, group_key,
                depends_on, created_at)
            SELECT r.id, r.queue, 'created', r.data, r.priority, r.run_at, 0, r.retry_limit,
                   r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
                   r.dead_letter, r.group_key, r.depends_on, r.created_at
            FROM {schema}.resolve_jobs(
                p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit,
                p_retry_delay, p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention,
                NULL, NULL, NULL, NULL, p_dead_letter, p_group_key, p_depends_on,
                p_defaults, p_now) r
            RETURNING {schema}.job.queue AS q, {schema}.job.run_at <= {schema}.job.created_at AS due
        )
        SELECT count(pg_notify('conveyor:' || {schema_literal}, w.q)) INTO STRICT ord
        FROM (SELECT DISTINCT x.q FROM ins x WHERE x.due) w;
        RETURN;
    END IF;

    RETURN QUERY
    WITH resolved AS MATERIALIZED (
        SELECT r.*,
               (SELECT w.id FROM {schema}.job w
                 WHERE r.unique_key IS NOT NULL AND w.queue = r.queue
                   AND w.unique_key = r.unique_key AND w.state = 'waiting') AS waiting_id
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
            group_key = r.group_key,
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
            queued_key)
        SELECT r.id, r.queue, 'waiting', r.data, r.priority, r.run_at, 0, r.retry_limit,
               r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
               NULL, NULL, r.unique_key, r.dead_letter, r.group_key, r.depends_on,
               r.created_at, r.queued_key
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
            queued_key)
        SELECT r.id, r.queue, 'created', r.data, r.priority, r.run_at, 0, r.retry_limit,
               r.retry_delay, r.retry_backoff, r.retry_delay_max, r.expire_in, r.retention,
               r.singleton_key, r.singleton_seconds, r.unique_key, r.dead_letter, r.group_key,
               r.depends_on, r.created_at, r.queued_key
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
                  SELECT x.queue, x.run_at, x.created_at FROM ins x
                  UNION ALL SELECT y.queue, y.run_at, y.created_at FROM replaced y
                  WHERE y.state <> 'waiting') s
              WHERE s.run_at <= s.created_at) w
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

-- As in 0001, but a job waiting for its dependencies is no group's head, and the claim names
-- the states it leaves. The head of a group is its running job, else its earliest queued job by
-- (priority, id); the group moves on only when its head is due and not running.
CREATE OR REPLACE FUNCTION {schema}.claim_group_heads(
    p_queues text[], p_worker uuid, p_limit integer, p_now timestamptz
) RETURNS SETOF {schema}.job_fetched
LANGUAGE plpgsql SET jit = off AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    c record;
    got integer := 0;
    n integer;
BEGIN
    FOR c IN
        SELECT h.queue, h.group_key
        FROM (
            SELECT DISTINCT ON (j.queue, j.group_key)
                   j.queue, j.group_key, j.state, j.run_at, j.priority, j.id
            FROM {schema}.job j
            WHERE j.queue = ANY (p_queues) AND j.group_key IS NOT NULL AND j.state <> 'waiting'
            ORDER BY j.queue, j.group_key, (j.state = 'active') DESC, j.priority DESC, j.id
        ) h
        WHERE h.state IN ('created', 'retry') AND h.run_at <= t_now
        ORDER BY h.priority DESC, h.id
    LOOP
        EXIT WHEN got >= p_limit;
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtextextended(
            'conveyor:group:' || {schema_literal} || ':' || c.queue || ':' || c.group_key, 0));
        RETURN QUERY
        WITH head AS (
            SELECT j.id, j.state, j.run_at
            FROM {schema}.job j
            WHERE j.queue = c.queue AND j.group_key = c.group_key AND j.state <> 'waiting'
            ORDER BY (j.state = 'active') DESC, j.priority DESC, j.id
            LIMIT 1
        ), picked AS (
            SELECT j.id
            FROM {schema}.job j
            JOIN head ON head.id = j.id
            WHERE head.state IN ('created', 'retry') AND head.run_at <= t_now
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

-- As in 0002, but a job this transaction queued behind its key's running holder (already
-- 'waiting', with its edge on the holder) is linked too, and a dependency edge that exists
-- already is kept.
CREATE OR REPLACE FUNCTION {schema}.link_jobs(
    p_id uuid[], p_on_failure text[], p_on_complete text[], p_now timestamptz
) RETURNS void
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    e_job uuid[];
    e_dep uuid[];
    e_policy text[];
    e_state text[];
    v_missing uuid;
    v_fail uuid[];
    v_error jsonb[];
BEGIN
    INSERT INTO {schema}.job_hook (job_id, on_complete)
    SELECT j.id, u.q
    FROM unnest(p_id, p_on_complete) AS u(id, q)
    JOIN {schema}.job j ON j.id = u.id AND j.xmin = pg_current_xact_id()::xid
    WHERE u.q IS NOT NULL
    ON CONFLICT (job_id) DO UPDATE SET on_complete = excluded.on_complete;

    SELECT array_agg(j.id), array_agg(d.id), array_agg(coalesce(u.on_failure, 'fail'))
    INTO e_job, e_dep, e_policy
    FROM unnest(p_id, p_on_failure) AS u(id, on_failure)
    JOIN {schema}.job j
      ON j.id = u.id AND j.state IN ('created', 'waiting') AND j.depends_on IS NOT NULL
     AND j.xmin = pg_current_xact_id()::xid
    CROSS JOIN LATERAL (SELECT DISTINCT x FROM unnest(j.depends_on) AS x) AS d(id);
    IF e_job IS NULL THEN
        RETURN;
    END IF;
    PERFORM FROM {schema}.job j WHERE j.id = ANY (e_dep) ORDER BY j.id FOR KEY SHARE;
    SELECT array_agg(CASE WHEN l.id IS NOT NULL THEN 'live' ELSE h.state END ORDER BY e.n)
    INTO e_state
    FROM unnest(e_dep) WITH ORDINALITY AS e(id, n)
    LEFT JOIN {schema}.job l ON l.id = e.id
    LEFT JOIN {schema}.job_history h ON h.id = e.id;
    SELECT e.dep INTO v_missing
    FROM unnest(e_dep, e_state) AS e(dep, state) WHERE e.state IS NULL LIMIT 1;
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'depends_on names job %, which does not exist', v_missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    INSERT INTO {schema}.job_dependency (depends_on, job_id, on_failure)
    SELECT e.dep, e.job, e.policy
    FROM unnest(e_job, e_dep, e_policy, e_state) AS e(job, dep, policy, state)
    WHERE e.state = 'live'
    ON CONFLICT DO NOTHING;
    UPDATE {schema}.job j SET state = 'waiting'
    FROM unnest(e_job, e_policy, e_state) AS e(job, policy, state)
    WHERE j.id = e.job AND j.state = 'created'
      AND (e.state = 'live' OR (e.state IN ('failed', 'cancelled') AND e.policy = 'fail'));
    SELECT array_agg(e.job), array_agg(jsonb_build_object(
               'attempt', 0, 'type', 'DependencyFailed',
               'message', format('dependency %s ended %s', e.dep, e.state),
               'traceback', NULL, 'dependency', e.dep, 'at', t_now))
    INTO v_fail, v_error
    FROM unnest(e_job, e_dep, e_policy, e_state) AS e(job, dep, policy, state)
    WHERE e.state IN ('failed', 'cancelled') AND e.policy = 'fail';
    IF v_fail IS NOT NULL THEN
        PERFORM {schema}.fail_waiting(v_fail, v_error, p_now);
    END IF;
END
$fn$;

-- As in 0002, but a released job never collides with a unique index (see 3. above).
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
            array_agg(gen_random_uuid()), array_agg(h.on_complete),
            array_agg(jsonb_build_object(
                'job_id', f.id, 'queue', f.queue, 'state', f.state, 'attempt', f.attempt,
                'data', f.data, 'result', f.result,
                'error', CASE WHEN f.state <> 'completed' THEN f.errors -> -1 END)),
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, '{}', NULL)
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
