-- conveyor: non-breaking
-- Before a partition of the history is dropped, its jobs' completion hooks are deleted. The
-- delete joined the partition to job_hook, which the planner ran as a hash join probing with
-- the whole partition: with one hook pending anywhere (any job still running with an
-- on_complete), every drop read a minute of history, 145 ms at 7,600 jobs/s. Looked up the
-- other way, each hook is one probe of the partition's id index (0.2 ms). The maintenance
-- leader's own statement is in queries/maintenance.sql (archive_drop_hooks); this is the
-- function that drops partitions for a role that does not own them (0012), replaced with its
-- signature.

CREATE OR REPLACE FUNCTION {schema}.archive_drop_partition(p_name text, p_now timestamptz)
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
        EXECUTE format(
            'DELETE FROM %I.job_hook k WHERE EXISTS (SELECT FROM %s p WHERE p.id = k.job_id)',
            {schema_literal}, v_table);
        EXECUTE format('DROP TABLE %s', v_table);
    END IF;
    DELETE FROM {schema}.archive_partition p WHERE p.name = p_name;
    RETURN true;
END
$fn$;
