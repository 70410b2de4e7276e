-- Publish/subscribe: which queues receive a job when an event is published.

-- name: subscription_add :many
INSERT INTO {schema}.subscription (event, queue) VALUES (%(event)s, %(queue)s)
ON CONFLICT DO NOTHING
RETURNING event;

-- name: subscription_remove :many
DELETE FROM {schema}.subscription
WHERE event = %(event)s AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
RETURNING queue;

-- name: subscription_list :many
SELECT event, queue FROM {schema}.subscription
WHERE %(event)s::text IS NULL OR event = %(event)s::text
ORDER BY event, queue;

-- One job per subscribed queue, in one statement (the SQL function publish).
-- name: job_publish :many
SELECT queue, job_id
FROM {schema}.publish(%(event)s::text, %(data)s::jsonb, %(options)s::jsonb);
