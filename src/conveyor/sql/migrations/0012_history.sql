-- conveyor: non-breaking
-- Storage with a lifecycle (issue 15): the history is insert-only and partitioned by the time
-- its rows may go, so expired history leaves by dropping whole partitions instead of row DELETEs
-- and the VACUUM they cost; dead letters get a small table of their own.
--
--   job_archive   completed and cancelled jobs, partitioned by range of drop_at (the job's
--                 finish time plus its retention, moved up to the partition that takes it).
--                 Partitions are one minute wide, laid out by archive_layout: every minute for
--                 the next ten minutes, every ten minutes for the next hour, every hour for six
--                 hours, and so on (the layout's steps below), as far as the longest retention
--                 in use. A row goes to the first partition that ends after its drop_at, so it is
--                 kept at least its retention and at most about twice that (at most a minute more
--                 under ten minutes). The maintenance leader creates partitions ahead (the
--                 runway) and detaches and drops those that ended. There is no DEFAULT partition
--                 (it would forbid DETACH CONCURRENTLY); a row beyond the runway goes to the
--                 newest partition instead of failing its acknowledgement.
--   job_dead      failed jobs: the dead letters, listed, redriven, and deleted in chunks after
--                 the app's dead_retention (there are few of them).
--   job_history   a view of both, with the columns of job: readers (and older releases, which
--                 write through it with INSTEAD OF triggers) see what they saw before.
--   archive_partition  the partitions and their bounds, which acknowledgements read to route
--                 each row (the catalog's bounds are text, slow to read on every ack).
--
-- Non-breaking: every table and view that workers of the previous release name still exists
-- with the same columns (job_history and dead_letter are views now), the functions they call
-- keep their signatures, and their INSERT and DELETE on job_history are routed by triggers. Only
-- their maintenance's row-by-row cleanup of the history stops working (FOR UPDATE on a view):
-- it reports an error each pass and deletes nothing, until the new release holds the lease.
--
-- The existing history is not copied here: the old table is renamed job_history_legacy and the
-- views read it as a third source, so the migration holds its locks for moments whatever the
-- history's size. The maintenance leader then moves its rows into job_archive and job_dead in
-- short batches and drops it once empty (history_legacy_move, 0016). An empty old table (a new
-- schema) is dropped at once, so a schema without legacy rows is the same whatever its age.
--
-- This file was rewritten after a release shipped it with a copy of the whole history inside
-- its transaction (acks of running workers waited for it: 105 s for a million rows). A schema
-- that applied that version holds no legacy table, which is what this version leaves once the
-- moves are done; its checksum is accepted as applied (migrations.py, REWRITTEN).

CREATE TABLE {schema}.job_archive (
    LIKE {schema}.job INCLUDING DEFAULTS,
    drop_at timestamptz NOT NULL,
    CHECK (state IN ('completed', 'cancelled')),
    CHECK (finished_at IS NOT NULL),
    CHECK (jsonb_typeof(errors) = 'array')
) PARTITION BY RANGE (drop_at);
ALTER TABLE {schema}.job_archive ALTER COLUMN state DROP DEFAULT;
-- Reads by id (get_job, a dependant's results) probe every partition: the runway keeps their
-- number in the tens. No primary key: a partitioned table's would have to include drop_at.
CREATE INDEX job_archive_id_idx ON {schema}.job_archive (id);
CREATE INDEX job_archive_queue_idx ON {schema}.job_archive (queue, state, finished_at);
-- The counters' rollup and queue_stats read what finished since a watermark (see 0011), and the
-- jobs list reads a window of finish times: along this index in each partition.
CREATE INDEX job_archive_finished_idx ON {schema}.job_archive (finished_at);
-- A job's dependants, found after their edges are gone (see 0010): only rows that have some.
CREATE INDEX job_archive_depends_on_idx ON {schema}.job_archive USING gin (depends_on)
    WHERE depends_on IS NOT NULL;

CREATE TABLE {schema}.job_dead (LIKE {schema}.job INCLUDING DEFAULTS) WITH (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);
ALTER TABLE {schema}.job_dead
    ADD PRIMARY KEY (id),
    ALTER COLUMN state DROP DEFAULT,
    ALTER COLUMN finished_at SET NOT NULL,
    ADD CHECK (state = 'failed'),
    ADD CHECK (jsonb_typeof(errors) = 'array');
CREATE INDEX job_dead_queue_idx ON {schema}.job_dead (queue, finished_at);
CREATE INDEX job_dead_finished_idx ON {schema}.job_dead (finished_at);
CREATE INDEX job_dead_depends_on_idx ON {schema}.job_dead USING gin (depends_on)
    WHERE depends_on IS NOT NULL;

CREATE TABLE {schema}.archive_partition (
    name       text PRIMARY KEY,
    lo         timestamptz NOT NULL UNIQUE,
    hi         timestamptz NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (lo < hi)
);

-- What the maintenance leader last did to the partitions, for `conveyor doctor`: one row.
CREATE TABLE {schema}.archive_status (
    one            boolean PRIMARY KEY DEFAULT true CHECK (one),
    extended_at    timestamptz,
    dropped_at     timestamptz,
    dropped        bigint NOT NULL DEFAULT 0,
    analyzed_at    timestamptz,
    failed_at      timestamptz,
    failure        text
);

-- The instants where partitions start, from p_from to p_until. Each step (in seconds) covers
-- from where the step before stops reaching to its own reach, and is a multiple of the step
-- before, so the instants of a coarse step stay instants when the finer steps reach them.
-- Partitions are one minute wide: [instant, instant + 1 minute).
CREATE FUNCTION {schema}.archive_layout(p_from timestamptz, p_until timestamptz)
RETURNS SETOF timestamptz
LANGUAGE sql STABLE AS $fn$
    SELECT DISTINCT to_timestamp(k * l.step)
    FROM (VALUES (60, 0, 600), (600, 600, 3600), (3600, 3600, 21600), (21600, 21600, 86400),
                 (86400, 86400, 604800), (604800, 604800, 2419200),
                 (2419200, 2419200, 31449600), (31449600, 31449600, NULL))
         AS l(step, after, reach)
    CROSS JOIN LATERAL generate_series(
        ceil(extract(epoch FROM p_from) / l.step)::bigint,
        ceil(least(extract(epoch FROM p_until),
                   extract(epoch FROM p_from) + coalesce(l.reach, 'infinity'::float8))
             / l.step)::bigint) AS k
    WHERE extract(epoch FROM p_until - p_from) > l.after
    UNION
    SELECT to_timestamp(floor(extract(epoch FROM p_from) / 60) * 60)
$fn$;

-- Create the partitions of the layout from p_now (else now()) up to p_horizon seconds ahead
-- that do not exist yet; how many. ATTACH takes a SHARE UPDATE EXCLUSIVE lock on job_archive,
-- which acknowledgements (ROW EXCLUSIVE) do not wait for; lock_timeout bounds the wait for the
-- rare statement that conflicts (an ANALYZE, a detach).
-- SECURITY DEFINER: workers running as a role that may only read and write the tables (see
-- docs/security.md) still keep the runway; the function creates nothing but the layout's
-- partitions.
CREATE FUNCTION {schema}.archive_extend(p_horizon double precision, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s'
AS $fn$
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    b timestamptz;
    v_name text;
    made integer := 0;
BEGIN
    FOR b IN
        SELECT l FROM {schema}.archive_layout(
            t_now, t_now + make_interval(secs => least(p_horizon, 3.2e8) + 60)) AS l
        WHERE NOT EXISTS (SELECT FROM {schema}.archive_partition p WHERE p.lo = l)
        ORDER BY l
    LOOP
        v_name := 'job_archive_' || to_char(b AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MI');
        EXECUTE format(
            'CREATE TABLE %I.%I (LIKE %I.job_archive INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
            {schema_literal}, v_name, {schema_literal});
        EXECUTE format('ALTER TABLE %I.job_archive ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                       {schema_literal}, {schema_literal}, v_name, b, b + interval '1 minute');
        INSERT INTO {schema}.archive_partition (name, lo, hi)
        VALUES (v_name, b, b + interval '1 minute');
        made := made + 1;
    END LOOP;
    RETURN made;
END
$fn$;

-- Drop one partition that ended, for a role that does not own job_archive (least privilege):
-- as the owner, with a plain DETACH (a concurrent one cannot run inside a function), which
-- takes an exclusive lock on job_archive for a moment, bounded by lock_timeout. Only a listed
-- partition that ended a minute ago, and never the newest, so the function drops nothing else.
CREATE FUNCTION {schema}.archive_drop_partition(p_name text, p_now timestamptz)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s'
AS $fn$
DECLARE
    v_table regclass;
BEGIN
    IF NOT EXISTS (
        SELECT FROM {schema}.archive_partition p
        WHERE p.name = p_name AND p.hi < coalesce(p_now, now()) - interval '1 minute'
          AND p.hi < (SELECT max(x.hi) FROM {schema}.archive_partition x)
    ) THEN
        RETURN false;
    END IF;
    v_table := to_regclass(format('%I.%I', {schema_literal}, p_name));
    IF v_table IS NOT NULL THEN
        IF EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = v_table) THEN
            EXECUTE format('ALTER TABLE %I.job_archive DETACH PARTITION %s',
                           {schema_literal}, v_table);
        END IF;
        EXECUTE format('DELETE FROM %I.job_hook k USING %s p WHERE k.job_id = p.id',
                       {schema_literal}, v_table);
        EXECUTE format('DROP TABLE %s', v_table);
    END IF;
    DELETE FROM {schema}.archive_partition p WHERE p.name = p_name;
    RETURN true;
END
$fn$;

-- Where a finished row that may go at p_wanted is kept: its drop_at. The first partition that
-- ends after p_wanted (never before p_floor, the writer's clock: a partition that ended may be
-- detaching), else the newest one.
CREATE FUNCTION {schema}.archive_drop_at(p_wanted timestamptz, p_floor timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(
        (SELECT greatest(w.t, p.lo) FROM {schema}.archive_partition p
         WHERE p.hi > w.t ORDER BY p.hi LIMIT 1),
        (SELECT p.hi - interval '1 microsecond' FROM {schema}.archive_partition p
         ORDER BY p.hi DESC LIMIT 1))
    FROM (SELECT greatest(p_wanted, p_floor) AS t) w
$fn$;

-- The first runway: the layout as far as the longest retention in use, a week at least.
SELECT {schema}.archive_extend(greatest(
    604800,
    (SELECT max(retention) FROM {schema}.queue),
    (SELECT max(retention) FROM {schema}.job),
    -- Read along job_history_expiry_idx (0003), whose predicate this repeats: no scan.
    (SELECT max(retention) FROM {schema}.job_history WHERE state <> 'failed')), NULL);

-- Only now is the old table renamed, under an ACCESS EXCLUSIVE lock held until this commits:
-- the partitions above (seconds of DDL) are built before, so acknowledgements of running
-- workers wait only for what follows, which reads no row of the old table but one probe.
ALTER TABLE {schema}.job_history RENAME TO job_history_legacy;
DROP VIEW {schema}.dead_letter;

CREATE VIEW {schema}.job_history AS
    SELECT id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
           retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
           singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
           created_at, started_at, finished_at, result, errors, progress, queued_key, meta
    FROM {schema}.job_archive
    UNION ALL
    SELECT id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
           retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
           singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
           created_at, started_at, finished_at, result, errors, progress, queued_key, meta
    FROM {schema}.job_dead;

-- Writers through the view that leave these out get what the table gave them.
ALTER VIEW {schema}.job_history ALTER COLUMN priority SET DEFAULT 0;
ALTER VIEW {schema}.job_history ALTER COLUMN attempt SET DEFAULT 0;
ALTER VIEW {schema}.job_history ALTER COLUMN errors SET DEFAULT '[]';

-- The dead letters: failed jobs, with their whole error history.
CREATE VIEW {schema}.dead_letter AS SELECT * FROM {schema}.job_dead;

-- Writes through job_history (workers of the previous release cancel, retry and delete through
-- it): a failed job is a dead letter, any other finished job is archived.
CREATE FUNCTION {schema}.job_history_write() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.state = 'failed' THEN
            INSERT INTO {schema}.job_dead (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
                singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
                created_at, started_at, finished_at, result, errors, progress, queued_key, meta)
            SELECT NEW.*;
        ELSE
            INSERT INTO {schema}.job_archive (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
                singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
                created_at, started_at, finished_at, result, errors, progress, queued_key, meta, drop_at)
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

CREATE TRIGGER job_history_write INSTEAD OF INSERT OR DELETE ON {schema}.job_history
    FOR EACH ROW EXECUTE FUNCTION {schema}.job_history_write();

-- As on the history table before: dependants and completion hooks, once per statement.
CREATE TRIGGER job_finished AFTER INSERT ON {schema}.job_archive
    REFERENCING NEW TABLE AS finished
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.job_finished();
CREATE TRIGGER job_finished AFTER INSERT ON {schema}.job_dead
    REFERENCING NEW TABLE AS finished
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.job_finished();

-- As in 0002, but failed jobs go to the dead letters' table.
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
        INSERT INTO {schema}.job_dead
        SELECT g.id, g.queue, 'failed', g.data, g.priority, g.run_at, g.attempt, g.retry_limit,
               g.retry_delay, g.retry_backoff, g.retry_delay_max, g.expire_in, g.retention,
               g.singleton_key, g.singleton_seconds, g.unique_key, g.dead_letter, g.group_key,
               g.depends_on, NULL, g.created_at, NULL, t_now, NULL, g.errors || g.new_error,
               g.progress
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

-- As in 0006, but a finished job is archived (completed) or a dead letter (failed), and a
-- completed job with retention 0 keeps no history: its row is deleted and its outcome (the
-- job's columns but its data, as JSON) reaches wait_for() in the "done" notification itself,
-- as JSON arrays of outcomes under NOTIFY's 8000-byte limit. Such a job is archived after all,
-- into the partition that ends first, when its outcome is too large for a notification
-- (over 3800 bytes), or when dependants or a completion hook need the archived row (looked up
-- in a statement of its own, after the DELETE: its snapshot sees an edge whose writer the
-- DELETE waited for).
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
               f.progress
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
            created_at, started_at, finished_at, result, errors, progress, drop_at)
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
            created_at, started_at, finished_at, result, errors, progress)
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
           (SELECT array_agg(ROW(z.*, NULL, NULL, NULL)::{schema}.job_archive) FROM closed z
            WHERE z.state = 'completed' AND z.retention <= 0)
    INTO v_id, v_queue, v_state, v_due, v_done, dl_queue, dl_data, v_zero
    FROM changed c;

    IF v_id IS NULL THEN
        RETURN;
    END IF;
    -- Outcomes and finished ids reach wait_for only while one is registered (see 0006).
    v_waiting := EXISTS (SELECT FROM {schema}.waiter);
    IF v_zero IS NOT NULL THEN
        WITH kept AS (
            INSERT INTO {schema}.job_archive (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
                singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
                created_at, started_at, finished_at, result, errors, progress, queued_key, meta, drop_at)
            SELECT z.id, z.queue, z.state, z.data, z.priority, z.run_at, z.attempt,
                   z.retry_limit, z.retry_delay, z.retry_backoff, z.retry_delay_max,
                   z.expire_in, z.retention, z.singleton_key, z.singleton_seconds, z.unique_key,
                   z.dead_letter, z.group_key, z.depends_on, z.worker_id, z.created_at,
                   z.started_at, z.finished_at, z.result, z.errors, z.progress, NULL, NULL,
                   {schema}.archive_drop_at(t_now, t_floor)
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
                      FROM told t WHERE v_waiting GROUP BY (t.upto - 1) / 3800) g)::integer
        INTO v_done, v_told;
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

-- The old history: dropped now if empty, else read by both views (and deleted from through
-- job_history, as older releases do) until history_legacy_move has moved every row.
DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM {schema}.job_history_legacy) THEN
        DROP TABLE {schema}.job_history_legacy;
        RETURN;
    END IF;
    CREATE OR REPLACE VIEW {schema}.job_history AS
        SELECT id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
               retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
               singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
               created_at, started_at, finished_at, result, errors, progress, queued_key, meta
        FROM {schema}.job_archive
        UNION ALL
        SELECT id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
               retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
               singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
               created_at, started_at, finished_at, result, errors, progress, queued_key, meta
        FROM {schema}.job_dead
        UNION ALL
        SELECT id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
               retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
               singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
               created_at, started_at, finished_at, result, errors, progress, queued_key, meta
        FROM {schema}.job_history_legacy;
    CREATE OR REPLACE VIEW {schema}.dead_letter AS
        SELECT id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
               retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
               singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
               created_at, started_at, finished_at, result, errors, progress, queued_key, meta
        FROM {schema}.job_dead
        UNION ALL
        SELECT id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
               retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
               singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
               created_at, started_at, finished_at, result, errors, progress, queued_key, meta
        FROM {schema}.job_history_legacy WHERE state = 'failed';
    CREATE FUNCTION {schema}.job_history_legacy_delete() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    BEGIN
        DELETE FROM {schema}.job_history_legacy l WHERE l.id = OLD.id;
        RETURN OLD;
    END
    $fn$;
    -- After job_history_write (triggers fire in name order), which returns the row.
    CREATE TRIGGER job_history_write_legacy INSTEAD OF DELETE ON {schema}.job_history
        FOR EACH ROW EXECUTE FUNCTION {schema}.job_history_legacy_delete();
END
$do$;
