-- conveyor: non-breaking
-- The old history table that 0012 leaves behind (job_history_legacy, read by the job_history
-- and dead_letter views) is emptied by the maintenance leader in short batches, then dropped:
-- no statement holds a lock for longer than a batch, so acks of running workers (of this
-- release or the one before) never wait for the move. Only a new function: nothing an older
-- release reads or writes changes. A schema without that table (new, or migrated by the first
-- version of 0012, which copied its history) gets the function all the same, which finds
-- nothing to do.

-- (Re)define job_history and dead_letter with the columns each has now: over job_archive and
-- job_dead, and, with p_legacy while the old table exists, over it too (NULL for the columns it
-- lacks, which later releases added). 0015 replaced job_history without the old table; a later
-- migration that replaces either view calls this after, so the old rows stay readable.
CREATE FUNCTION {schema}.history_views(p_legacy boolean)
RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    v_old regclass := to_regclass(format('%I.job_history_legacy', {schema_literal}));
    v_view text;
    v_columns text;
    v_legacy text;
BEGIN
    FOREACH v_view IN ARRAY ARRAY['job_history', 'dead_letter'] LOOP
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
               string_agg(CASE WHEN l.attname IS NULL
                               THEN format('NULL::%s', format_type(a.atttypid, a.atttypmod))
                               ELSE quote_ident(a.attname) END, ', ' ORDER BY a.attnum)
        INTO v_columns, v_legacy
        FROM pg_attribute a
        LEFT JOIN pg_attribute l
          ON l.attrelid = v_old AND l.attname = a.attname AND NOT l.attisdropped
        WHERE a.attrelid = to_regclass(format('%I.%I', {schema_literal}, v_view))
          AND a.attnum > 0 AND NOT a.attisdropped;
        EXECUTE format('CREATE OR REPLACE VIEW %I.%I AS ', {schema_literal}, v_view)
            || CASE WHEN v_view = 'job_history'
                    THEN format('SELECT %s FROM %I.job_archive UNION ALL ', v_columns,
                                {schema_literal})
                    ELSE '' END
            || format('SELECT %s FROM %I.job_dead', v_columns, {schema_literal})
            || CASE WHEN p_legacy AND v_old IS NOT NULL
                    THEN format(' UNION ALL SELECT %s FROM %s', v_legacy, v_old)
                         || CASE WHEN v_view = 'dead_letter' THEN ' WHERE state = ''failed'''
                                 ELSE '' END
                    ELSE '' END;
    END LOOP;
END
$fn$;

-- 0015 replaced job_history with the two tables only: the old table's rows come back to it.
DO $do$
BEGIN
    IF to_regclass(format('%I.job_history_legacy', {schema_literal})) IS NOT NULL THEN
        PERFORM {schema}.history_views(true);
    END IF;
END
$do$;

-- Move up to p_limit rows of the old history, oldest first, into job_dead (failed) and
-- job_archive (routed by finish time plus retention, as acks route theirs); how many. Rows
-- another transaction holds (an older release deleting one through job_history) are left for
-- the next call. A call that finds the table empty drops it and narrows the views to the two
-- tables, within lock_timeout; one that then finds a row after all (a statement planned before
-- 0012 renamed the table) fails and undoes that, and a later call moves the row.
-- SECURITY DEFINER: a least-privilege worker role (docs/security.md) moves and drops the table,
-- which only its owner may drop.
CREATE FUNCTION {schema}.history_legacy_move(p_limit integer, p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s'
AS $fn$
DECLARE
    t_floor timestamptz := coalesce(p_now, clock_timestamp());
    v_rows tid[];
    v_hook_job uuid[];
    v_hook_queue text[];
    v_moved bigint;
BEGIN
    IF to_regclass(format('%I.job_history_legacy', {schema_literal})) IS NULL THEN
        RETURN 0;
    END IF;
    SELECT array_agg(l.ctid) INTO v_rows
    FROM (SELECT x.ctid FROM {schema}.job_history_legacy x
          ORDER BY x.finished_at LIMIT p_limit FOR UPDATE SKIP LOCKED) l;

    IF v_rows IS NOT NULL THEN
        -- A completion hook fired when its job first finished: it is set aside while the row is
        -- written again, so the insert triggers (job_finished) do not fire it twice, and put
        -- back after (a hook is kept as long as its job).
        WITH h AS (
            DELETE FROM {schema}.job_hook k USING {schema}.job_history_legacy l
            WHERE l.ctid = ANY (v_rows) AND k.job_id = l.id
            RETURNING k.job_id, k.on_complete
        )
        SELECT array_agg(h.job_id), array_agg(h.on_complete) INTO v_hook_job, v_hook_queue
        FROM h;
        WITH moved AS (
            DELETE FROM {schema}.job_history_legacy l WHERE l.ctid = ANY (v_rows) RETURNING l.*
        ), dead AS (
            INSERT INTO {schema}.job_dead (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
                singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
                created_at, started_at, finished_at, result, errors, progress, queued_key, meta)
            SELECT m.id, m.queue, m.state, m.data, m.priority, m.run_at, m.attempt,
                   m.retry_limit, m.retry_delay, m.retry_backoff, m.retry_delay_max, m.expire_in,
                   m.retention, m.singleton_key, m.singleton_seconds, m.unique_key,
                   m.dead_letter, m.group_key, m.depends_on, m.worker_id, m.created_at,
                   m.started_at, m.finished_at, m.result, m.errors, m.progress, m.queued_key,
                   m.meta
            FROM moved m WHERE m.state = 'failed'
        ), archived AS (
            INSERT INTO {schema}.job_archive (
                id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay,
                retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
                singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id,
                created_at, started_at, finished_at, result, errors, progress, queued_key, meta,
                drop_at)
            SELECT m.id, m.queue, m.state, m.data, m.priority, m.run_at, m.attempt,
                   m.retry_limit, m.retry_delay, m.retry_backoff, m.retry_delay_max, m.expire_in,
                   m.retention, m.singleton_key, m.singleton_seconds, m.unique_key,
                   m.dead_letter, m.group_key, m.depends_on, m.worker_id, m.created_at,
                   m.started_at, m.finished_at, m.result, m.errors, m.progress, m.queued_key,
                   m.meta,
                   {schema}.archive_drop_at(
                       m.finished_at + make_interval(secs => m.retention), t_floor)
            FROM moved m WHERE m.state <> 'failed'
        )
        SELECT count(*) INTO v_moved FROM moved;
        IF v_hook_job IS NOT NULL THEN
            INSERT INTO {schema}.job_hook (job_id, on_complete)
            SELECT * FROM unnest(v_hook_job, v_hook_queue);
        END IF;
        RETURN v_moved;
    END IF;
    IF EXISTS (SELECT FROM {schema}.job_history_legacy) THEN
        RETURN 0;
    END IF;

    -- Empty: the views read the two tables only, as in a schema that never had the old table.
    -- The views are replaced first (readers lock a view before the tables under it), then the
    -- table is locked and found empty again before it is dropped.
    PERFORM {schema}.history_views(false);
    DROP TRIGGER IF EXISTS job_history_write_legacy ON {schema}.job_history;
    DROP FUNCTION IF EXISTS {schema}.job_history_legacy_delete();
    LOCK TABLE {schema}.job_history_legacy IN ACCESS EXCLUSIVE MODE;
    IF EXISTS (SELECT FROM {schema}.job_history_legacy) THEN
        RAISE EXCEPTION 'job_history_legacy got rows while it was being dropped: moved next time';
    END IF;
    DROP TABLE {schema}.job_history_legacy;
    RETURN 0;
END
$fn$;

-- How many rows of the old history are left to move, counted up to p_limit; NULL once it is gone
-- (for conveyor doctor).
CREATE FUNCTION {schema}.history_legacy_left(p_limit bigint)
RETURNS bigint
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    v_left bigint;
BEGIN
    IF to_regclass(format('%I.job_history_legacy', {schema_literal})) IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM (SELECT FROM %I.job_history_legacy LIMIT %s) x',
                   {schema_literal}, p_limit)
    INTO v_left;
    RETURN v_left;
END
$fn$;
