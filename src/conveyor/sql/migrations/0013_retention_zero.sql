-- conveyor: non-breaking
-- retention 0: a job (or the jobs of a queue) that keeps no history once completed (see
-- ack_jobs in 0012). Only a CHECK is relaxed, so every value older releases write is still
-- accepted. A file of its own: it locks the live table, which 0012 (long, with a large history
-- to copy) leaves alone, so fetching never waits for that copy.

ALTER TABLE {schema}.job
    DROP CONSTRAINT job_retention_check,
    ADD CONSTRAINT job_retention_check CHECK (retention >= 0);
ALTER TABLE {schema}.queue
    DROP CONSTRAINT queue_retention_check,
    ADD CONSTRAINT queue_retention_check CHECK (retention >= 0);
