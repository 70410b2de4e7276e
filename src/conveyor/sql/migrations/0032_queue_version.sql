-- conveyor: non-breaking
-- What a send reads of its queue, versioned. A client keeps a copy of each queue's options it
-- sends to (the values job_insert_plain resolves a job's options from) with the version they
-- had, and sends a job with its options resolved from that copy (job_insert_resolved), which
-- inserts only while the queue's version is still the one the copy was read at. The version is
-- the id of the last transaction that created the queue, changed one of those options (policy
-- among them), or made it fair or unfair: a 64-bit id PostgreSQL never hands out twice, so a
-- copy read before any change is refused after it, whichever process made the change. Kept in
-- a table of its own: a column of queue would reach `SELECT *` readers of earlier releases. The
-- rate limiter's bookkeeping, which updates the queue row at each claim, changes no version.

CREATE TABLE {schema}.queue_version (
    queue   text PRIMARY KEY REFERENCES {schema}.queue (name) ON DELETE CASCADE,
    version bigint NOT NULL
);

INSERT INTO {schema}.queue_version (queue, version)
SELECT name, pg_current_xact_id()::text::bigint FROM {schema}.queue;

CREATE FUNCTION {schema}.queue_version_set() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO {schema}.queue_version AS v (queue, version)
    VALUES (NEW.name, pg_current_xact_id()::text::bigint)
    ON CONFLICT (queue) DO UPDATE SET version = EXCLUDED.version;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER queue_version AFTER INSERT ON {schema}.queue
FOR EACH ROW EXECUTE FUNCTION {schema}.queue_version_set();

CREATE TRIGGER queue_version_changed AFTER UPDATE ON {schema}.queue
FOR EACH ROW WHEN (
    (OLD.policy, OLD.priority, OLD.retry_limit, OLD.retry_delay, OLD.retry_backoff,
     OLD.retry_delay_max, OLD.expire_in, OLD.retention, OLD.dead_letter)
    IS DISTINCT FROM
    (NEW.policy, NEW.priority, NEW.retry_limit, NEW.retry_delay, NEW.retry_backoff,
     NEW.retry_delay_max, NEW.expire_in, NEW.retention, NEW.dead_letter)
) EXECUTE FUNCTION {schema}.queue_version_set();

-- A queue made fair or unfair. An UPDATE, not an upsert: deleting a queue deletes its
-- queue_fair row and its version alike, in no set order.
CREATE FUNCTION {schema}.queue_fair_version_set() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE {schema}.queue_version SET version = pg_current_xact_id()::text::bigint
    WHERE queue = CASE TG_OP WHEN 'DELETE' THEN OLD.queue ELSE NEW.queue END;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER queue_fair_version AFTER INSERT OR DELETE ON {schema}.queue_fair
FOR EACH ROW EXECUTE FUNCTION {schema}.queue_fair_version_set();
