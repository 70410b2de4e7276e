-- Schema v1 of Conveyor.
--
-- Tokens: {schema} is the quoted schema name, {schema_literal} the same name as a string literal.
-- The live table "job" holds only queued and running jobs (created, retry, active) so the fetch path
-- never walks past finished rows; a job that reaches a terminal state (completed, cancelled, failed)
-- moves to "job_history", which is also the dead-letter store (state = 'failed'). Both tables have the
-- same columns in the same order, so a move is INSERT ... SELECT of the moved row.

CREATE TABLE {schema}.queue (
    name            text PRIMARY KEY
                    CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.\-/:]{0,127}$'),
    policy          text NOT NULL DEFAULT 'standard'
                    CHECK (policy IN ('standard', 'short', 'singleton', 'stately')),
    priority        integer,
    retry_limit     integer CHECK (retry_limit BETWEEN 0 AND 10000),
    retry_delay     double precision CHECK (retry_delay >= 0),
    retry_backoff   text CHECK (retry_backoff IN ('fixed', 'linear', 'exponential')),
    retry_delay_max double precision CHECK (retry_delay_max > 0),
    expire_in       double precision CHECK (expire_in > 0),
    retention       double precision CHECK (retention > 0),
    dead_letter     text,
    concurrency     integer CHECK (concurrency > 0),
    rate_limit      integer CHECK (rate_limit > 0),
    rate_interval   double precision CHECK (rate_interval > 0),
    -- The rate limit's token bucket, kept by fetch_jobs under the queue row's lock.
    rate_tokens     double precision,
    rate_refilled_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((rate_limit IS NULL) = (rate_interval IS NULL))
);

CREATE TABLE {schema}.job (
    id                uuid PRIMARY KEY,
    queue             text NOT NULL,
    state             text NOT NULL DEFAULT 'created'
                      CHECK (state IN ('created', 'retry', 'active')),
    data              jsonb,
    priority          integer NOT NULL DEFAULT 0,
    run_at            timestamptz NOT NULL,
    attempt           integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    retry_limit       integer NOT NULL CHECK (retry_limit BETWEEN 0 AND 10000),
    retry_delay       double precision NOT NULL CHECK (retry_delay >= 0),
    retry_backoff     text NOT NULL CHECK (retry_backoff IN ('fixed', 'linear', 'exponential')),
    retry_delay_max   double precision CHECK (retry_delay_max > 0),
    expire_in         double precision NOT NULL CHECK (expire_in > 0),
    retention         double precision NOT NULL CHECK (retention > 0),
    singleton_key     text,
    singleton_seconds integer CHECK (singleton_seconds > 0),
    unique_key        text,
    dead_letter       text,
    group_key         text,
    depends_on        uuid[],
    worker_id         uuid,
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz,
    result            jsonb,
    errors            jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    progress          jsonb,
    -- The queue's name when it was sent to a queue with the short or stately policy: at most one
    -- such job may wait in state 'created' (a job waiting to retry does not count).
    queued_key        text,
    CHECK ((state = 'active') = (worker_id IS NOT NULL)),
    CHECK (attempt <= retry_limit + 1 OR state <> 'active')
) WITH (
    -- The live table churns: every job is inserted, updated a few times and deleted. Vacuum it
    -- early and without throttling so dead tuples never pile up in front of the fetch index.
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Fetch: runnable jobs of a queue, highest priority first, then oldest run_at.
CREATE INDEX job_fetch_idx ON {schema}.job (queue, priority DESC, run_at, id)
    WHERE state IN ('created', 'retry');
-- The running jobs of a queue, counted by fetch_jobs for queues with a concurrency limit. Acks,
-- which find their rows by primary key, guard on worker_id (which implies state = 'active', by
-- the CHECK above) and never name the state, so this small index cannot lure their plans into
-- walking every running job for each acknowledged one.
CREATE INDEX job_active_idx ON {schema}.job (queue) WHERE state = 'active';
-- unique_key: at most one queued or running job per key and queue (everything in this table is).
CREATE UNIQUE INDEX job_unique_key_idx ON {schema}.job (queue, unique_key)
    WHERE unique_key IS NOT NULL;
CREATE INDEX job_group_key_idx ON {schema}.job (queue, group_key) WHERE group_key IS NOT NULL;
CREATE UNIQUE INDEX job_queued_key_idx ON {schema}.job (queued_key)
    WHERE queued_key IS NOT NULL AND state = 'created';

CREATE TABLE {schema}.job_history (LIKE {schema}.job INCLUDING DEFAULTS) WITH (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_insert_scale_factor = 0.1
);
ALTER TABLE {schema}.job_history
    ADD PRIMARY KEY (id),
    ALTER COLUMN state DROP DEFAULT,
    ALTER COLUMN finished_at SET NOT NULL,
    ADD CHECK (state IN ('completed', 'cancelled', 'failed')),
    ADD CHECK (jsonb_typeof(errors) = 'array');
CREATE INDEX job_history_queue_idx ON {schema}.job_history (queue, state, finished_at);
CREATE INDEX job_history_finished_idx ON {schema}.job_history (finished_at);

-- The dead letters: failed jobs, with their whole error history.
CREATE VIEW {schema}.dead_letter AS
    SELECT * FROM {schema}.job_history WHERE state = 'failed';

-- Throttle windows of singleton_key/singleton_seconds: the primary key admits one job per key per
-- window, race-free; the job may since have finished, the window row outlives it until window_end.
CREATE TABLE {schema}.throttle (
    queue        text NOT NULL,
    key          text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL,
    job_id       uuid NOT NULL,
    PRIMARY KEY (queue, key, window_start)
);
CREATE INDEX throttle_window_end_idx ON {schema}.throttle (window_end);

-- Recurring jobs: a cron expression in a time zone, or a fixed interval (every, in seconds).
CREATE TABLE {schema}.schedule (
    name           text PRIMARY KEY
                   CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.\-/:]{0,127}$'),
    cron           text,
    every          double precision CHECK (every > 0),
    tz             text NOT NULL DEFAULT 'UTC',
    queue          text NOT NULL,
    data           jsonb,
    options        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(options) = 'object'),
    missed         text NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'backfill')),
    backfill_limit integer NOT NULL DEFAULT 10 CHECK (backfill_limit BETWEEN 1 AND 10000),
    enabled        boolean NOT NULL DEFAULT true,
    last_tick      timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (every IS NULL))
);

-- One row per (schedule, tick): the conditional insert that makes a tick enqueue exactly one job.
CREATE TABLE {schema}.schedule_tick (
    schedule  text NOT NULL REFERENCES {schema}.schedule (name) ON DELETE CASCADE,
    tick_at   timestamptz NOT NULL,
    job_id    uuid NOT NULL,
    PRIMARY KEY (schedule, tick_at)
);

CREATE TABLE {schema}.worker (
    id           uuid PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    queues       text[] NOT NULL,
    concurrency  integer NOT NULL CHECK (concurrency > 0),
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    metadata     jsonb NOT NULL DEFAULT '{}'
) WITH (fillfactor = 50);

-- Leadership is a lease row: whoever holds an unexpired row is the leader for that role.
CREATE TABLE {schema}.leader (
    role       text PRIMARY KEY,
    holder     uuid NOT NULL,
    expires_at timestamptz NOT NULL
) WITH (fillfactor = 50);

-- The jobs described by parallel arrays (one element per job), with every option resolved: the
-- job's own value, else its queue's default, else p_defaults (the application's), else the built-in
-- default. A NULL array stands for "NULL for every job". Inlined by the planner into its callers.
CREATE FUNCTION {schema}.resolve_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz
) RETURNS TABLE (
    ord bigint, id uuid, queue text, data jsonb, priority integer, run_at timestamptz,
    retry_limit integer, retry_delay double precision, retry_backoff text,
    retry_delay_max double precision, expire_in double precision, retention double precision,
    singleton_key text, singleton_seconds integer, singleton_on timestamptz, unique_key text,
    unique_replace boolean, dead_letter text, group_key text, depends_on uuid[],
    created_at timestamptz, queued_key text
)
LANGUAGE sql STABLE AS $fn$
    SELECT i.ord, i.id, i.queue, i.data,
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
           CASE WHEN q.policy IN ('short', 'stately') THEN i.queue END
    FROM unnest(p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit,
                p_retry_delay, p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention,
                p_singleton_key, p_singleton_seconds, p_unique_key, p_unique_replace,
                p_dead_letter, p_group_key, p_depends_on)
         WITH ORDINALITY AS i(id, queue, data, priority, run_at, delay, retry_limit,
                              retry_delay, retry_backoff, retry_delay_max, expire_in,
                              retention, singleton_key, singleton_seconds, unique_key,
                              unique_replace, dead_letter, group_key, depends_on, ord)
    LEFT JOIN {schema}.queue q ON q.name = i.queue
$fn$;

-- Insert jobs; the single write path of every enqueue (Python's send and send_batch, and the SQL
-- function send below). Queues are created on first use.
-- Without keys (p_unique_key and p_singleton_seconds both NULL) every job is inserted and nothing
-- is returned. Otherwise the caller gives each (queue, unique_key) and each (queue, singleton key,
-- seconds) at most once, and gets per input ordinal the job id it resolved to and whether it was
-- inserted: a unique_key job either replaces the queued job holding its key (p_unique_replace) or
-- resolves to the job holding it; a singleton job resolves to the job of its throttle window. The
-- id is NULL only when the holder committed after this statement's snapshot: ask again for it.
CREATE FUNCTION {schema}.insert_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz
) RETURNS TABLE (ord bigint, id uuid, inserted boolean)
-- A generic plan, cached per session: re-planning these statements for each call costs more than
-- running them. The planner's row guesses for the CTEs are far too high, which would trigger JIT
-- compilation that costs seconds for a statement that runs in milliseconds.
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
        -- Wake workers only for jobs runnable now; PostgreSQL folds identical notifications of
        -- one transaction into one.
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
        SELECT * FROM {schema}.resolve_jobs(
            p_id, p_queue, p_data, p_priority, p_run_at, p_delay, p_retry_limit, p_retry_delay,
            p_retry_backoff, p_retry_delay_max, p_expire_in, p_retention, p_singleton_key,
            p_singleton_seconds, p_unique_key, p_unique_replace, p_dead_letter, p_group_key,
            p_depends_on, p_defaults, p_now)
    ),
    replaced AS (
        UPDATE {schema}.job j
        SET data = r.data, priority = r.priority, run_at = r.run_at,
            retry_limit = r.retry_limit, retry_delay = r.retry_delay,
            retry_backoff = r.retry_backoff, retry_delay_max = r.retry_delay_max,
            expire_in = r.expire_in, retention = r.retention, dead_letter = r.dead_letter,
            group_key = r.group_key, depends_on = r.depends_on
        FROM resolved r
        WHERE r.unique_replace AND j.queue = r.queue AND j.unique_key = r.unique_key
          AND j.state IN ('created', 'retry')
        RETURNING j.id, j.queue, j.run_at, r.ord, r.created_at
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
        WHERE NOT EXISTS (SELECT FROM replaced x WHERE x.ord = r.ord)
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
                  UNION ALL SELECT y.queue, y.run_at, y.created_at FROM replaced y) s
              WHERE s.run_at <= s.created_at) w
    )
    SELECT r.ord,
           coalesce(
               x.id,
               y.id,
               (SELECT j.id FROM {schema}.job j
                 WHERE r.unique_key IS NOT NULL AND j.queue = r.queue
                   AND j.unique_key = r.unique_key),
               (SELECT t.job_id FROM {schema}.throttle t
                 WHERE r.singleton_seconds IS NOT NULL AND t.queue = r.queue
                   AND t.key = r.singleton_key AND t.window_start = r.singleton_on),
               (SELECT j.id FROM {schema}.job j
                 WHERE r.queued_key IS NOT NULL AND j.queued_key = r.queued_key
                   AND j.state = 'created')),
           x.id IS NOT NULL
    FROM resolved r
    CROSS JOIN notified
    LEFT JOIN ins x ON x.id = r.id
    LEFT JOIN replaced y ON y.ord = r.ord
    ORDER BY r.ord;
END
$fn$;

-- Claim up to p_limit runnable jobs of the given queues for a worker: highest priority first,
-- then oldest run_at; each comes back active, its attempt counted. Each queue is read through its
-- own ordered walk of job_fetch_idx (LATERAL), so the cost depends neither on other queues nor on
-- jobs scheduled for later. The settings pin that plan: with the statistics of a moment when most
-- rows lay in the future, the planner would otherwise sort the whole table on every fetch.
-- Columns come back in the order of conveyor.models.Job's fields (the type job_fetched).
CREATE TYPE {schema}.job_fetched AS (
    id uuid, queue text, state text, data jsonb, priority integer, attempt integer,
    retry_limit integer, retry_delay double precision, retry_backoff text,
    retry_delay_max double precision, expire_in double precision, retention double precision,
    run_at timestamptz, created_at timestamptz, started_at timestamptz, finished_at timestamptz,
    result jsonb, errors jsonb, progress jsonb, singleton_key text, singleton_seconds integer,
    unique_key text, dead_letter text, group_key text, depends_on uuid[], worker_id uuid
);

-- A claimed job as the worker reads it: the columns of conveyor.models.Job, in its field order.
CREATE FUNCTION {schema}.as_fetched(j {schema}.job) RETURNS {schema}.job_fetched
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT j.id, j.queue, j.state, j.data, j.priority, j.attempt, j.retry_limit, j.retry_delay,
           j.retry_backoff, j.retry_delay_max, j.expire_in, j.retention, j.run_at, j.created_at,
           j.started_at, j.finished_at, j.result, j.errors, j.progress, j.singleton_key,
           j.singleton_seconds, j.unique_key, j.dead_letter, j.group_key, j.depends_on,
           j.worker_id
$fn$;

CREATE FUNCTION {schema}.claim_jobs(
    p_queues text[], p_worker uuid, p_limit integer, p_now timestamptz
) RETURNS SETOF {schema}.job_fetched
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off
SET plan_cache_mode = force_generic_plan
AS $fn$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT c.id
        FROM unnest(p_queues) AS q(name)
        CROSS JOIN LATERAL (
            SELECT j.id, j.priority, j.run_at
            FROM {schema}.job j
            WHERE j.queue = q.name AND j.state IN ('created', 'retry')
              AND j.run_at <= coalesce(p_now, now()) AND j.group_key IS NULL
            ORDER BY j.priority DESC, j.run_at, j.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) c
        ORDER BY c.priority DESC, c.run_at, c.id
        LIMIT p_limit
    ), claimed AS (
        UPDATE {schema}.job j
        SET state = 'active', attempt = j.attempt + 1, worker_id = p_worker,
            started_at = coalesce(p_now, now())
        FROM picked
        WHERE j.id = picked.id
        RETURNING {schema}.as_fetched(j) AS f
    )
    SELECT (done.f).* FROM claimed done;
END
$fn$;

-- Claim the heads of job groups (group_key): the jobs of a group run one at a time, in the order
-- they were sent (higher priority first). The head of a group is its running job, else its
-- earliest job by (priority, id); the group moves on only when its head is due and not running.
-- So a job waiting to retry holds its group until it completes or dies; a dead job releases it.
-- Each group is taken under a transaction-level advisory lock (others skip it), and its head is
-- read again after the lock, with a fresh snapshot, so two fetchers never start two of its jobs.
CREATE FUNCTION {schema}.claim_group_heads(
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
            WHERE j.queue = ANY (p_queues) AND j.group_key IS NOT NULL
            ORDER BY j.queue, j.group_key, (j.state = 'active') DESC, j.priority DESC, j.id
        ) h
        WHERE h.state <> 'active' AND h.run_at <= t_now
        ORDER BY h.priority DESC, h.id
    LOOP
        EXIT WHEN got >= p_limit;
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(hashtextextended(
            'conveyor:group:' || {schema_literal} || ':' || c.queue || ':' || c.group_key, 0));
        RETURN QUERY
        WITH head AS (
            SELECT j.id, j.state, j.run_at
            FROM {schema}.job j
            WHERE j.queue = c.queue AND j.group_key = c.group_key
            ORDER BY (j.state = 'active') DESC, j.priority DESC, j.id
            LIMIT 1
        ), picked AS (
            SELECT j.id
            FROM {schema}.job j
            JOIN head ON head.id = j.id
            WHERE head.state <> 'active' AND head.run_at <= t_now
            FOR UPDATE OF j SKIP LOCKED
        ), claimed AS (
            UPDATE {schema}.job j
            SET state = 'active', attempt = j.attempt + 1, worker_id = p_worker, started_at = t_now
            FROM picked
            WHERE j.id = picked.id
            RETURNING {schema}.as_fetched(j) AS f
        )
        SELECT (done.f).* FROM claimed done;
        GET DIAGNOSTICS n = ROW_COUNT;
        got := got + n;
    END LOOP;
END
$fn$;

-- Claim jobs for a worker (see claim_jobs), within the limits of their queues: a queue with a
-- concurrency limit or the singleton/stately policy (one running job) or a rate limit is claimed
-- under its row's lock, so fetchers of that queue take turns and each sees the others' claims.
-- Locks are taken in name order (no deadlock between workers); unlimited queues skip all this.
CREATE FUNCTION {schema}.fetch_jobs(
    p_queues text[], p_worker uuid, p_limit integer, p_now timestamptz
) RETURNS SETOF {schema}.job_fetched
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    left_over integer := p_limit;
    limited text[];
    qname text;
    q {schema}.queue;
    allowed integer;
    running integer;
    tokens double precision;
    got integer;
    more integer;
    free text[];
BEGIN
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
            RETURN QUERY SELECT * FROM {schema}.claim_jobs(ARRAY[qname], p_worker, allowed, p_now);
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
        RETURN QUERY SELECT * FROM {schema}.claim_jobs(free, p_worker, left_over, p_now);
        GET DIAGNOSTICS got = ROW_COUNT;
        IF got < left_over THEN
            RETURN QUERY SELECT * FROM {schema}.claim_group_heads(
                free, p_worker, left_over - got, p_now);
        END IF;
    END IF;
END
$fn$;

-- Acknowledge attempts, set-based: the one place where a running job changes state. Every row is
-- guarded by (id, worker, attempt, state = 'active'), so an attempt that lost its job (rescued,
-- expired, cancelled) matches nothing and changes nothing. Outcomes:
--   completed  to the history, with its result
--   failed     to the history, error appended; a copy of the job goes to its dead_letter queue
--   retry      queued again after p_delay seconds, error appended (the attempt is spent)
--   snooze     queued again after p_delay seconds, the attempt given back (Retry(after=...))
--   release    queued again now, the attempt given back (a worker shutting down hands it back)
-- Returns the rows that changed, with their new state.
CREATE FUNCTION {schema}.ack_jobs(
    p_id uuid[], p_worker uuid[], p_attempt integer[], p_outcome text[], p_result jsonb[],
    p_error jsonb[], p_delay double precision[], p_now timestamptz
) RETURNS TABLE (id uuid, queue text, state text)
LANGUAGE plpgsql SET jit = off SET plan_cache_mode = force_generic_plan AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    v_id uuid[];
    v_queue text[];
    v_state text[];
    v_due text[];
    dl_queue text[];
    dl_data jsonb[];
BEGIN
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
    archived AS (
        INSERT INTO {schema}.job_history
        SELECT f.id, f.queue, f.outcome, f.data, f.priority, f.run_at, f.attempt, f.retry_limit,
               f.retry_delay, f.retry_backoff, f.retry_delay_max, f.expire_in, f.retention,
               f.singleton_key, f.singleton_seconds, f.unique_key, f.dead_letter, f.group_key,
               f.depends_on, f.worker_id, f.created_at, f.started_at, t_now, f.new_result,
               CASE WHEN f.new_error IS NULL THEN f.errors ELSE f.errors || f.new_error END,
               f.progress
        FROM finished f
        RETURNING {schema}.job_history.id, {schema}.job_history.queue,
                  {schema}.job_history.state, {schema}.job_history.dead_letter,
                  {schema}.job_history.data
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
        SELECT x.id, x.queue, x.state, x.dead_letter, x.data, false AS due FROM archived x
        UNION ALL
        SELECT y.id, y.queue, y.state, NULL, NULL, y.due FROM requeued y
    )
    SELECT array_agg(c.id), array_agg(c.queue), array_agg(c.state),
           array_agg(DISTINCT c.queue) FILTER (WHERE c.due),
           array_agg(c.dead_letter) FILTER (WHERE c.state = 'failed' AND c.dead_letter IS NOT NULL),
           array_agg(c.data) FILTER (WHERE c.state = 'failed' AND c.dead_letter IS NOT NULL)
    INTO v_id, v_queue, v_state, v_due, dl_queue, dl_data
    FROM changed c;

    IF v_id IS NULL THEN
        RETURN;
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
    PERFORM pg_notify('conveyor:' || {schema_literal} || ':done', string_agg(d.id::text, ','))
    FROM (SELECT u.id, (row_number() OVER () - 1) / 200 AS chunk
          FROM unnest(v_id, v_state) AS u(id, state)
          WHERE u.state IN ('completed', 'failed')) d
    GROUP BY d.chunk;
    RETURN QUERY SELECT * FROM unnest(v_id, v_queue, v_state);
END
$fn$;

-- Recover jobs whose attempt can no longer finish: held by a worker whose heartbeat is older
-- than p_stale_before (or whose row is gone), or running p_grace seconds past their expire_in.
-- The attempt counts as failed: the job is retried at once while attempts remain, else failed.
-- Stale worker rows are deleted first, so a worker that comes back must register again.
CREATE FUNCTION {schema}.recover_jobs(
    p_stale_before timestamptz, p_grace double precision, p_now timestamptz
) RETURNS TABLE (id uuid, queue text, state text)
LANGUAGE plpgsql SET jit = off AS $fn$
#variable_conflict use_column
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    v_id uuid[];
    v_worker uuid[];
    v_attempt integer[];
    v_outcome text[];
    v_error jsonb[];
BEGIN
    DELETE FROM {schema}.worker w WHERE w.heartbeat_at < p_stale_before;
    SELECT array_agg(j.id), array_agg(j.worker_id), array_agg(j.attempt),
           array_agg(CASE WHEN j.attempt <= j.retry_limit THEN 'retry' ELSE 'failed' END),
           array_agg(jsonb_build_object(
               'attempt', j.attempt,
               'type', CASE WHEN w.id IS NULL THEN 'WorkerLost' ELSE 'Expired' END,
               'message', CASE WHEN w.id IS NULL
                               THEN 'the worker running this attempt stopped sending heartbeats'
                               ELSE 'the attempt ran past expire_in and its worker did not stop it'
                          END,
               'traceback', NULL, 'worker', j.worker_id, 'at', t_now))
    INTO v_id, v_worker, v_attempt, v_outcome, v_error
    FROM {schema}.job j
    LEFT JOIN {schema}.worker w ON w.id = j.worker_id
    WHERE j.state = 'active'
      AND (w.id IS NULL
           OR j.started_at + make_interval(secs => j.expire_in + p_grace) < t_now);
    IF v_id IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM {schema}.ack_jobs(
        v_id, v_worker, v_attempt, v_outcome, NULL, v_error, NULL, p_now);
END
$fn$;

-- Fire ticks of a schedule: each tick enqueues exactly one job, however many schedulers race
-- (the tick row's primary key admits one; a loser waits for the winner's commit and skips).
-- Returns the ticks this call fired, with their jobs.
CREATE FUNCTION {schema}.fire_schedule(p_name text, p_ticks timestamptz[])
RETURNS TABLE (tick_at timestamptz, job_id uuid)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
    s {schema}.schedule;
    t timestamptz;
    v_job uuid;
BEGIN
    SELECT * INTO s FROM {schema}.schedule WHERE name = p_name AND enabled;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOR t IN SELECT u FROM unnest(p_ticks) AS u ORDER BY u LOOP
        INSERT INTO {schema}.schedule_tick (schedule, tick_at, job_id)
        VALUES (p_name, t, '00000000-0000-0000-0000-000000000000')
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            v_job := {schema}.send(s.queue, s.data, s.options);
            UPDATE {schema}.schedule_tick SET job_id = v_job
            WHERE schedule = p_name AND tick_at = t;
            tick_at := t;
            job_id := v_job;
            RETURN NEXT;
        END IF;
    END LOOP;
    UPDATE {schema}.schedule
    SET last_tick = greatest(last_tick, (SELECT max(u) FROM unnest(p_ticks) AS u))
    WHERE name = p_name;
END
$fn$;

-- Enqueue from any SQL client, ORM or trigger, inside the caller's transaction:
--   SELECT {schema}.send('email.send', '{"to": "a@b.c"}', '{"priority": 5, "start_after": 60}');
-- start_after is seconds (a number) or a timestamp (a string). Raises invalid_parameter_value
-- (SQLSTATE 22023) on a bad queue name, an unknown option or a payload over the size limit
-- (1 MiB, or the setting conveyor.max_payload_bytes).
CREATE FUNCTION {schema}.send(queue text, data jsonb DEFAULT NULL, options jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $fn$
DECLARE
    o jsonb := coalesce(options, '{}'::jsonb);
    opt text;
    limit_bytes bigint := coalesce(
        nullif(current_setting('conveyor.max_payload_bytes', true), '')::bigint, 1048576);
    start_after jsonb;
    job_id uuid;
    backoff text;
    keyed boolean;
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
    backoff := CASE o->'retry_backoff' WHEN 'true' THEN 'exponential' WHEN 'false' THEN 'fixed'
                                        ELSE o->>'retry_backoff' END;
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
    FOR attempt IN 1..3 LOOP
        job_id := gen_random_uuid();
        SELECT coalesce(r.id, CASE WHEN NOT keyed THEN job_id END) INTO job_id
        FROM (SELECT NULL::uuid AS id) nothing
        LEFT JOIN {schema}.insert_jobs(
            ARRAY[job_id], ARRAY[queue], ARRAY[data],
            ARRAY[(o->>'priority')::integer],
            ARRAY[CASE WHEN jsonb_typeof(start_after) = 'string'
                       THEN (start_after #>> '{}')::timestamptz END],
            ARRAY[CASE WHEN jsonb_typeof(start_after) = 'number'
                       THEN (start_after #>> '{}')::double precision END],
            ARRAY[(o->>'retry_limit')::integer], ARRAY[(o->>'retry_delay')::double precision],
            ARRAY[backoff], ARRAY[(o->>'retry_delay_max')::double precision],
            ARRAY[(o->>'expire_in')::double precision], ARRAY[(o->>'retention')::double precision],
            CASE WHEN keyed THEN ARRAY[CASE WHEN o ? 'singleton_seconds'
                                            THEN coalesce(o->>'singleton_key', '') END] END,
            CASE WHEN keyed THEN ARRAY[(o->>'singleton_seconds')::integer] END,
            CASE WHEN keyed THEN ARRAY[o->>'unique_key'] END,
            ARRAY[coalesce(o->>'unique_mode', 'keep') = 'replace'], ARRAY[o->>'dead_letter'],
            ARRAY[o->>'group_key'], ARRAY[o->'depends_on'], NULL, NULL) r ON true;
        EXIT WHEN job_id IS NOT NULL;
    END LOOP;
    RETURN job_id;
END
$fn$;
