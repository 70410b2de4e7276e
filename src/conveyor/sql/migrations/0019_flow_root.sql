-- conveyor: non-breaking
-- The top of a job's flow, as a function that is never JIT-compiled. Its recursive plan is
-- estimated at millions (each level's depends_on lookups are costed at the GIN default of 0.5%
-- of every archive partition, then multiplied by the recursion), far past jit_above_cost: against
-- a history of 5 million rows, compiling took 3.9 s for a read that runs in 1 ms. Only a new
-- function: the previous release keeps its own query.

-- Follow the oldest dependant up from p_id until none is left (at most 50 levels; a cycle cannot
-- be built, the bound only caps the work); p_id itself when nothing depends on it.
CREATE FUNCTION {schema}.job_flow_root(p_id uuid)
RETURNS uuid
LANGUAGE sql STABLE SET jit = off AS $fn$
    WITH RECURSIVE up (id, level) AS (
        SELECT p_id, 0
        UNION ALL
        SELECT parent.id, up.level + 1
        FROM up
        CROSS JOIN LATERAL (
            SELECT d.id, d.created_at FROM {schema}.job d
            WHERE d.depends_on IS NOT NULL AND d.depends_on @> ARRAY[up.id]
            UNION ALL
            SELECT d.id, d.created_at FROM {schema}.job_history d
            WHERE d.depends_on IS NOT NULL AND d.depends_on @> ARRAY[up.id]
            ORDER BY created_at, id
            LIMIT 1
        ) parent
        WHERE up.level < 50
    )
    SELECT id FROM up ORDER BY level DESC LIMIT 1
$fn$;
