-- conveyor: non-breaking
-- The dashboard follows a job's flow both ways: down through depends_on (ids in the row) and up
-- to the jobs that depend on it. Pending edges (job_dependency) are dropped once a dependency
-- finishes, so finding its dependants afterwards means searching depends_on in both tables.
-- These indexes hold only the rows that have dependencies (most jobs have none, and sends and
-- claims of those pay only the predicate). Nothing reads or writes differently, so workers of the
-- previous release run unchanged on this schema.

CREATE INDEX job_depends_on_idx ON {schema}.job USING gin (depends_on)
    WHERE depends_on IS NOT NULL;
CREATE INDEX job_history_depends_on_idx ON {schema}.job_history USING gin (depends_on)
    WHERE depends_on IS NOT NULL;
