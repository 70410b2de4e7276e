-- conveyor: non-breaking
-- A finished job whose retention reaches past the history's runway (a one-off long retention
-- given to one job, longer than any queue's) went to the newest partition (0012) and left with
-- it, before its time and unseen. It now goes to a partition of its own, job_archive_beyond,
-- which takes drop_at 'infinity' and is never dropped: the maintenance leader extends the
-- runway as far as those rows need (history_horizon) and moves them to the partition that
-- takes each (archive_rehome), and doctor counts them meanwhile. Such rows are rare, so the
-- partition stays small and reading it whole is cheap. Only the function that routes rows
-- changes, with its signature: workers of the previous release route theirs here too.

CREATE TABLE {schema}.job_archive_beyond
    (LIKE {schema}.job_archive INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
-- Not listed in archive_partition: nothing that reads the runway or drops partitions sees it.
ALTER TABLE {schema}.job_archive ATTACH PARTITION {schema}.job_archive_beyond
    FOR VALUES FROM ('infinity') TO (MAXVALUE);

-- As in 0012, but a row beyond the newest partition goes to job_archive_beyond.
CREATE OR REPLACE FUNCTION {schema}.archive_drop_at(p_wanted timestamptz, p_floor timestamptz)
RETURNS timestamptz
LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(
        (SELECT greatest(w.t, p.lo) FROM {schema}.archive_partition p
         WHERE p.hi > w.t ORDER BY p.hi LIMIT 1),
        'infinity')
    FROM (SELECT greatest(p_wanted, p_floor) AS t) w
$fn$;

-- How far ahead the partitions must reach, in seconds: p_horizon, or as far as a row kept
-- beyond them needs.
CREATE FUNCTION {schema}.archive_beyond_reach(p_now timestamptz)
RETURNS double precision
LANGUAGE sql STABLE AS $fn$
    SELECT max(extract(epoch FROM b.finished_at + make_interval(secs => b.retention)
                                  - coalesce(p_now, now())))::double precision
    FROM {schema}.job_archive_beyond b
$fn$;

-- Move the rows kept beyond the runway that a partition now takes; how many.
-- SECURITY DEFINER: a least-privilege worker role (docs/security.md) may not UPDATE the archive.
CREATE FUNCTION {schema}.archive_rehome(p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '2s'
AS $fn$
DECLARE
    v_moved bigint;
BEGIN
    WITH moved AS (
        UPDATE {schema}.job_archive a
        SET drop_at = {schema}.archive_drop_at(
            a.finished_at + make_interval(secs => a.retention), coalesce(p_now, clock_timestamp()))
        WHERE a.drop_at = 'infinity'
          AND a.finished_at + make_interval(secs => a.retention)
              < (SELECT max(p.hi) FROM {schema}.archive_partition p)
        RETURNING 1
    )
    SELECT count(*) INTO v_moved FROM moved;
    RETURN v_moved;
END
$fn$;
