-- conveyor: non-breaking
-- A rate-limited queue's bucket never refills from a time before its last refill.
--
-- A claim's time is when its statement began (now()); the bucket is read and written under the
-- queue row's lock, which claims may take in another order than they began: a worker's ack and
-- claim run the ack first, so a claim that began earlier can reach the lock after one that
-- began later. That late claim wrote its earlier time as the bucket's last refill, and the next
-- claim was given the tokens of the interval between the two times again (three tokens where
-- one was due, in a test that makes the order explicit). The bucket's time is now the later of
-- the claim's time and the last refill. fetch_jobs is 0015's but for this.
--
-- Only a function replaced with its signature: workers of the previous release keep running.

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
    t_bucket timestamptz;
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
            t_bucket := greatest(t_now, q.rate_refilled_at);
            tokens := least(q.rate_limit::double precision,
                            coalesce(q.rate_tokens, q.rate_limit)
                            + extract(epoch FROM t_bucket - coalesce(q.rate_refilled_at, t_bucket))
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
            UPDATE {schema}.queue x SET rate_tokens = tokens - got, rate_refilled_at = t_bucket
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
