-- conveyor: breaking
-- Job metadata beside the payload (issue 16): meta, a JSON object Conveyor fills with the job's
-- context, never with the user's data: the W3C trace context of the send (traceparent,
-- tracestate) and, for a job a schedule sent, the tick it stands for (scheduled_for). Sent from
-- SQL as the option meta. Kept while the job is live (retries included); the move to the history
-- does not carry it.
-- Breaking: workers of the previous release would still claim (as_fetched keeps its type's shape,
-- below, and every function its signature), but its get_job and list_jobs build a Job from every
-- column of the row and fail on the new one. This release reads only the columns it knows, so a
-- column added later breaks nothing here.

ALTER TABLE {schema}.job ADD COLUMN meta jsonb CHECK (jsonb_typeof(meta) = 'object');
ALTER TABLE {schema}.job_history ADD COLUMN meta jsonb;

-- A claimed job has no result yet (a result is written only as the job leaves for the history),
-- so the claim carries meta in the result's place: the type, and with it every claim function,
-- stay as they were. conveyor._store.rows.fetched_job moves it. The errors of a job that never
-- failed come as NULL, which the worker reads as [] without decoding JSON for every claim.
CREATE OR REPLACE FUNCTION {schema}.as_fetched(j {schema}.job) RETURNS {schema}.job_fetched
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT j.id, j.queue, j.state, j.data, j.priority, j.attempt, j.retry_limit, j.retry_delay,
           j.retry_backoff, j.retry_delay_max, j.expire_in, j.retention, j.run_at, j.created_at,
           j.started_at, j.finished_at, j.meta, nullif(j.errors, '[]'), j.progress,
           j.singleton_key,
           j.singleton_seconds, j.unique_key, j.dead_letter, j.group_key, j.depends_on,
           j.worker_id
$fn$;

-- send() takes the option meta (a JSON object), stored on the job it inserts; a send that
-- resolves to a job already holding its key leaves that job's meta as it is.
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
        queue, data, o - 'on_complete' - 'on_dependency_failure' - 'meta');
    IF o ? 'depends_on' OR o ? 'on_complete' THEN
        PERFORM {schema}.link_jobs(
            ARRAY[job_id], ARRAY[o->>'on_dependency_failure'], ARRAY[o->>'on_complete'], NULL);
    END IF;
    IF o ? 'meta' THEN
        UPDATE {schema}.job j SET meta = o->'meta' WHERE j.id = job_id AND j.meta IS NULL;
    END IF;
    RETURN job_id;
END
$fn$;

-- As in 0001; each tick's job carries the tick in meta (scheduled_for), so a handler of a
-- backfilled schedule tells the 09:00 run from the 10:00 one.
CREATE OR REPLACE FUNCTION {schema}.fire_schedule(p_name text, p_ticks timestamptz[])
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
            v_job := {schema}.send(s.queue, s.data, s.options || jsonb_build_object(
                'meta', jsonb_build_object('scheduled_for', t)));
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
