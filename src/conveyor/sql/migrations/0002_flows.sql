-- Flows and events: job dependencies (and parent/children flows built on them), completion hooks,
-- publish/subscribe.
--
-- A job sent with depends_on waits in the new state 'waiting' (outside the fetch index) until every
-- job it depends on has finished. One pending edge per (dependency, dependant) lives in
-- job_dependency; the edge is deleted in the transaction that moves its dependency to the
-- history, so a crash between a dependency's completion and its dependant's release cannot
-- happen: they are one commit. Dependencies must exist when the dependant is sent and a new job
-- has a new id, so a cycle cannot be built.
--
-- States of a dependant:  waiting --(last dependency completed)--> created
--                         waiting --(a dependency failed or was cancelled, policy 'fail')--> failed
--                         waiting --(same, policy 'run')--> created, once the rest finished

ALTER TABLE {schema}.job DROP CONSTRAINT job_state_check;
ALTER TABLE {schema}.job
    ADD CONSTRAINT job_state_check CHECK (state IN ('created', 'retry', 'active', 'waiting'));

CREATE TABLE {schema}.job_dependency (
    depends_on uuid NOT NULL,
    job_id     uuid NOT NULL,
    -- What the dependant does when this dependency fails or is cancelled: fail too, or run
    -- anyway once the others finished.
    on_failure text NOT NULL DEFAULT 'fail' CHECK (on_failure IN ('fail', 'run')),
    PRIMARY KEY (depends_on, job_id)
);
CREATE INDEX job_dependency_job_idx ON {schema}.job_dependency (job_id);

-- on_complete: each time the job reaches a terminal state, a job carrying its outcome is sent to
-- this queue. Kept while the job is kept.
CREATE TABLE {schema}.job_hook (
    job_id      uuid PRIMARY KEY,
    on_complete text NOT NULL
);

-- publish(event) sends one job to every queue subscribed to the event.
CREATE TABLE {schema}.subscription (
    event      text NOT NULL,
    queue      text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event, queue)
);

-- Fail waiting jobs whose dependency failed: to the history with the error appended, a copy to
-- their dead_letter queue, their other pending edges dropped. Inserting into the history fires
-- job_finished again, so the failure travels down a chain of dependants.
CREATE FUNCTION {schema}.fail_waiting(p_id uuid[], p_error jsonb[], p_now timestamptz)
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
        INSERT INTO {schema}.job_history
        SELECT g.id, g.queue, 'failed', g.data, g.priority, g.run_at, g.attempt, g.retry_limit,
               g.retry_delay, g.retry_backoff, g.retry_delay_max, g.expire_in, g.retention,
               g.singleton_key, g.singleton_seconds, g.unique_key, g.dead_letter, g.group_key,
               g.depends_on, NULL, g.created_at, NULL, t_now, NULL, g.errors || g.new_error,
               g.progress
        FROM gone g
        RETURNING {schema}.job_history.dead_letter, {schema}.job_history.data
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

-- Release the dependants of finished jobs and fire their completion hooks. Runs once per
-- statement that writes the history (acks, cancels, recoveries, dependency failures), with the
-- rows it wrote; a statement whose jobs have no dependants and no hooks costs two index probes.
CREATE FUNCTION {schema}.job_finished() RETURNS trigger
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
    -- Two dependencies of one job finishing in concurrent transactions each delete their own
    -- edge and then count what is left: the row lock makes the second count wait for the first
    -- commit, so exactly one of them sees no edge left and releases the job. Locked in id order,
    -- so two such transactions cannot deadlock.
    PERFORM FROM {schema}.job j WHERE j.id = ANY (v_job) ORDER BY j.id FOR UPDATE;
    IF v_fail IS NOT NULL THEN
        PERFORM {schema}.fail_waiting(v_fail, v_error, t_now);
    END IF;
    WITH released AS (
        UPDATE {schema}.job j
        SET state = 'created', run_at = greatest(j.run_at, t_now)
        WHERE j.id = ANY (v_job) AND j.state = 'waiting'
          AND NOT EXISTS (SELECT FROM {schema}.job_dependency d WHERE d.job_id = j.id)
        RETURNING j.queue, j.run_at <= t_now AS due
    )
    SELECT array_agg(DISTINCT r.queue) FILTER (WHERE r.due) INTO v_due FROM released r;
    PERFORM pg_notify('conveyor:' || {schema_literal}, q) FROM unnest(v_due) AS q;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER job_finished AFTER INSERT ON {schema}.job_history
    REFERENCING NEW TABLE AS finished
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.job_finished();

-- Link jobs this transaction just sent: record their completion hooks and dependency edges. A job
-- with a dependency still queued or running waits; one whose dependencies all completed stays
-- runnable; one with a failed or cancelled dependency fails at once under the policy 'fail'. Jobs
-- this transaction did not write (a unique_key that resolved to an older job) are left alone.
CREATE FUNCTION {schema}.link_jobs(
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
      ON j.id = u.id AND j.state = 'created' AND j.depends_on IS NOT NULL
     AND j.xmin = pg_current_xact_id()::xid
    CROSS JOIN LATERAL (SELECT DISTINCT x FROM unnest(j.depends_on) AS x) AS d(id);
    IF e_job IS NULL THEN
        RETURN;
    END IF;
    -- A live dependency stays share-locked until this transaction ends: the ack that moves it to
    -- the history (a delete) waits for these edges to commit, then finds them. A dependency that
    -- finished while this waited for its lock is gone from the live table, and the next
    -- statement, with a new snapshot, finds it in the history.
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
    WHERE e.state = 'live';
    -- Every dependant with a pending edge waits; under the policy 'fail', one with a failed or
    -- cancelled dependency then fails (fail_waiting takes waiting jobs and drops their edges).
    UPDATE {schema}.job j SET state = 'waiting'
    FROM unnest(e_job, e_policy, e_state) AS e(job, policy, state)
    WHERE j.id = e.job
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

-- The enqueue of conveyor.send with links: insert_jobs, then link_jobs on the same arrays, in one
-- statement for the client. p_on_failure and p_on_complete run parallel to p_id.
CREATE FUNCTION {schema}.insert_linked_jobs(
    p_id uuid[], p_queue text[], p_data jsonb[], p_priority integer[], p_run_at timestamptz[],
    p_delay double precision[], p_retry_limit integer[], p_retry_delay double precision[],
    p_retry_backoff text[], p_retry_delay_max double precision[], p_expire_in double precision[],
    p_retention double precision[], p_singleton_key text[], p_singleton_seconds integer[],
    p_unique_key text[], p_unique_replace boolean[], p_dead_letter text[], p_group_key text[],
    p_depends_on jsonb[], p_defaults jsonb, p_now timestamptz,
    p_on_failure text[], p_on_complete text[]
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
        p_depends_on, p_defaults, p_now) r;
    PERFORM {schema}.link_jobs(p_id, p_on_failure, p_on_complete, p_now);
    RETURN QUERY SELECT * FROM unnest(v_ord, v_id, v_inserted);
END
$fn$;

-- conveyor.send gains the options on_complete (a queue) and on_dependency_failure ('fail', the
-- default, or 'run'); the enqueue itself stays in the function of the first migration.
ALTER FUNCTION {schema}.send(text, jsonb, jsonb) RENAME TO send_unlinked;

CREATE FUNCTION {schema}.send(queue text, data jsonb DEFAULT NULL, options jsonb DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $fn$
DECLARE
    o jsonb := coalesce(options, '{}'::jsonb);
    job_id uuid;
BEGIN
    IF jsonb_typeof(o) <> 'object' THEN
        RETURN {schema}.send_unlinked(queue, data, o);
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
    job_id := {schema}.send_unlinked(queue, data, o - 'on_complete' - 'on_dependency_failure');
    IF o ? 'depends_on' OR o ? 'on_complete' THEN
        PERFORM {schema}.link_jobs(
            ARRAY[job_id], ARRAY[o->>'on_dependency_failure'], ARRAY[o->>'on_complete'], NULL);
    END IF;
    RETURN job_id;
END
$fn$;

-- Send one job to every queue subscribed to the event, with the same payload and options, in the
-- caller's transaction; returns the new jobs' ids (none when nobody subscribed).
CREATE FUNCTION {schema}.publish(event text, data jsonb DEFAULT NULL, options jsonb DEFAULT NULL)
RETURNS TABLE (queue text, job_id uuid)
LANGUAGE sql AS $fn$
    SELECT s.queue, {schema}.send(s.queue, publish.data, publish.options)
    FROM {schema}.subscription s
    WHERE s.event = publish.event
    ORDER BY s.queue;
$fn$;
