-- Maintenance deletes finished jobs once their own retention ran out. This index lets it read only
-- expired rows, walking each distinct retention along finished_at, instead of the whole history
-- (dead letters, kept longer, are left out of it).
-- Built in the migration's transaction, not concurrently: a concurrent build would wait for the
-- other migrators queued on the migration lock while they wait for it. Acks of running workers
-- (which write the history) wait for the build: 1.5 s for a history of 2M rows, measured.
CREATE INDEX job_history_expiry_idx ON {schema}.job_history (retention, finished_at)
    WHERE state <> 'failed';
