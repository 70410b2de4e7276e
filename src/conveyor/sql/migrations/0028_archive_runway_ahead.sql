-- conveyor: non-breaking
-- The runway is extended ten minutes ahead at a time: one creation every ten minutes instead of
-- one every minute.
--
-- The layout (0012) gains an instant every minute as time moves, so the maintenance leader
-- created and attached one partition per minute. Each ATTACH makes every backend that writes
-- the history rebuild its view of job_archive and plan its acknowledgement again; at about
-- 80% of the drain peak, a latency wave of 30-45 s followed each one (bench/RESULTS.md,
-- session 10). Now, when the layout from now on misses a partition, the leader creates, in one
-- transaction, every partition the layout will ask for during the next ten minutes
-- (archive_layout_ahead). Up to ten one-minute partitions more stand ahead than before.
--
-- A new function and one replaced with its signature: workers of the previous release keep
-- running, and either release's leader keeps the runway.

-- Every instant archive_layout(t, t + (p_until - p_from)) gives for some t from p_from to
-- p_from + p_lead: each step's instants from p_from on, to where that step reaches from the
-- last t (its reach or p_until, moved by p_lead), and the minute each t falls in. With a
-- p_lead of zero, archive_layout's instants.
CREATE FUNCTION {schema}.archive_layout_ahead(
    p_from timestamptz, p_until timestamptz, p_lead interval
) RETURNS SETOF timestamptz
LANGUAGE sql STABLE AS $fn$
    SELECT DISTINCT to_timestamp(k * l.step)
    FROM (VALUES (60, 0, 600), (600, 600, 3600), (3600, 3600, 21600), (21600, 21600, 86400),
                 (86400, 86400, 604800), (604800, 604800, 2419200),
                 (2419200, 2419200, 31449600), (31449600, 31449600, NULL))
         AS l(step, after, reach)
    CROSS JOIN LATERAL generate_series(
        ceil(extract(epoch FROM p_from) / l.step)::bigint,
        ceil((least(extract(epoch FROM p_until),
                    extract(epoch FROM p_from) + coalesce(l.reach, 'infinity'::float8))
              + extract(epoch FROM p_lead)) / l.step)::bigint) AS k
    WHERE extract(epoch FROM p_until - p_from) > l.after
    UNION
    SELECT to_timestamp(m * 60)
    FROM generate_series(floor(extract(epoch FROM p_from) / 60)::bigint,
                         floor(extract(epoch FROM p_from + p_lead) / 60)::bigint) AS m
$fn$;

CREATE OR REPLACE FUNCTION {schema}.archive_extend(p_horizon double precision, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s'
AS $fn$
DECLARE
    t_now timestamptz := coalesce(p_now, now());
    t_span interval := make_interval(secs => least(p_horizon, 3.2e8) + 60);
    t_lead interval := interval '10 minutes';
    b timestamptz;
    v_name text;
    made integer := 0;
BEGIN
    IF NOT EXISTS (
        SELECT FROM {schema}.archive_layout(t_now, t_now + t_span) AS l
        WHERE NOT EXISTS (SELECT FROM {schema}.archive_partition p WHERE p.lo = l)
    ) THEN
        RETURN 0;
    END IF;
    FOR b IN
        SELECT l FROM {schema}.archive_layout_ahead(t_now, t_now + t_span, t_lead) AS l
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
