-- conveyor: non-breaking
-- Pausing a queue (issue 16). A paused queue accepts sends and keeps its jobs queued, but no
-- worker claims them: fetch_jobs drops paused queues from the list it is given before it claims
-- anything, so the pause holds on every worker at once, old ones included (they call the same
-- function), and survives restarts. Running jobs are not touched and finish.
-- Non-breaking: the pause lives in a table of its own, so the queue table's columns (which
-- older releases read with SELECT *) are unchanged, and fetch_jobs keeps its signature.

CREATE TABLE {schema}.queue_pause (
    queue     text PRIMARY KEY REFERENCES {schema}.queue (name) ON DELETE CASCADE,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- As in 0001, with the paused queues filtered out at the top. Claim jobs for a worker (see
-- claim_jobs), within the limits of their queues: a queue with a
-- concurrency limit or the singleton/stately policy (one running job) or a rate limit is claimed
-- under its row's lock, so fetchers of that queue take turns and each sees the others' claims.
-- Locks are taken in name order (no deadlock between workers); unlimited queues skip all this.
CREATE OR REPLACE FUNCTION {schema}.fetch_jobs(
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
    -- Paused queues leave the list first: no claim below sees them.
    p_queues := ARRAY(SELECT u FROM unnest(p_queues) AS u
                      WHERE NOT EXISTS (SELECT FROM {schema}.queue_pause x WHERE x.queue = u));
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
