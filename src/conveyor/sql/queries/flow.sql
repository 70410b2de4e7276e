-- Reads along flows: the jobs a job depends on and those that depend on it, live or finished.

-- The jobs that name this one in depends_on (a flow's parent, or any dependant), oldest first.
-- name: job_dependants :many
SELECT j.* FROM (
    SELECT * FROM {schema}.job
    WHERE depends_on IS NOT NULL AND depends_on @> ARRAY[%(id)s::uuid]
    UNION ALL
    SELECT * FROM {schema}.job_history
    WHERE depends_on IS NOT NULL AND depends_on @> ARRAY[%(id)s::uuid]
) j
ORDER BY j.created_at, j.id
LIMIT %(limit)s::integer;

-- The top of a job's flow (see 0019: a function, never JIT-compiled).
-- name: job_flow_root :scalar
SELECT {schema}.job_flow_root(%(id)s::uuid) AS id;

-- A job and everything below it through depends_on, each once, breadth first, at most limit.
-- name: job_flow :many
WITH RECURSIVE down (id, level) AS (
    SELECT %(id)s::uuid, 0
    UNION
    SELECT d.id, down.level + 1
    FROM down
    CROSS JOIN LATERAL (
        SELECT unnest(j.depends_on) AS id FROM {schema}.job j WHERE j.id = down.id
        UNION ALL
        SELECT unnest(h.depends_on) FROM {schema}.job_history h WHERE h.id = down.id
    ) d
    WHERE down.level < 50
), first AS (
    SELECT id, min(level) AS level FROM down GROUP BY id
)
SELECT j.* FROM first f
JOIN LATERAL (
    SELECT * FROM {schema}.job WHERE id = f.id
    UNION ALL
    SELECT * FROM {schema}.job_history WHERE id = f.id
    LIMIT 1
) j ON true
ORDER BY f.level, j.created_at, j.id
LIMIT %(limit)s::integer;

-- Jobs by id, live or finished (a job's dependencies, with their states).
-- name: job_get_many :many
SELECT * FROM {schema}.job WHERE id = ANY (%(ids)s::uuid[])
UNION ALL
SELECT * FROM {schema}.job_history WHERE id = ANY (%(ids)s::uuid[]);
