-- Recurring jobs: cron or interval schedules, persisted, and the ticks they fired.

-- name: schedule_upsert :one
INSERT INTO {schema}.schedule AS s (
    name, cron, every, tz, queue, data, options, missed, backfill_limit, enabled)
VALUES (%(name)s, %(cron)s, %(every)s, %(tz)s, %(queue)s, %(data)s::jsonb, %(options)s::jsonb,
        %(missed)s, %(backfill_limit)s, true)
ON CONFLICT (name) DO UPDATE SET
    cron = EXCLUDED.cron, every = EXCLUDED.every, tz = EXCLUDED.tz, queue = EXCLUDED.queue,
    data = EXCLUDED.data, options = EXCLUDED.options, missed = EXCLUDED.missed,
    backfill_limit = EXCLUDED.backfill_limit, enabled = true, updated_at = now()
RETURNING *;

-- name: schedule_delete :scalar
WITH gone AS (DELETE FROM {schema}.schedule WHERE name = %(name)s RETURNING 1)
SELECT count(*) FROM gone;

-- name: schedule_get :one
SELECT * FROM {schema}.schedule WHERE name = %(name)s;

-- name: schedule_list :many
SELECT * FROM {schema}.schedule ORDER BY name;

-- name: schedule_fire :many
SELECT tick_at, job_id FROM {schema}.fire_schedule(%(name)s, %(ticks)s::timestamptz[]);
