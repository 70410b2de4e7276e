-- conveyor: no-transaction
-- Maintenance deletes finished jobs once their own retention ran out. This index lets it read only
-- expired rows, walking each distinct retention along finished_at, instead of scanning the whole
-- history (dead letters, kept longer, are left out). Built concurrently: acks keep writing the
-- history meanwhile. A build that failed leaves an invalid index, which `conveyor doctor` reports.
CREATE INDEX CONCURRENTLY job_history_expiry_idx ON {schema}.job_history (retention, finished_at)
    WHERE state <> 'failed';
