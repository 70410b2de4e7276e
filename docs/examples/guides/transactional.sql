-- Any SQL client, ORM or trigger can enqueue: conveyor.send(queue, data, options) -> job id.
BEGIN;
CREATE TEMP TABLE invoice (id int PRIMARY KEY, total numeric);
INSERT INTO invoice VALUES (42, 99.50);
SELECT conveyor.send('invoices.render', '{"invoice": 42}', '{"priority": 5, "retry_limit": 3}');
COMMIT;

-- A trigger that sends a job for every new row, in the transaction that inserts it.
CREATE TEMP TABLE customer (id serial PRIMARY KEY, email text);
CREATE FUNCTION pg_temp.welcome() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conveyor.send('email.welcome', jsonb_build_object('to', NEW.email), '{}');
    RETURN NEW;
END $$;
CREATE TRIGGER customer_welcome AFTER INSERT ON customer
    FOR EACH ROW EXECUTE FUNCTION pg_temp.welcome();
INSERT INTO customer (email) VALUES ('ada@example.com');
