-- Creates a tenant's hash unless it exists (the first step of `tenants create`).
--
-- KEYS[1]: the tenant's hash, kg:{t:<tenant>}:tenant
-- KEYS[2]: the tenant's key set, kg:{t:<tenant>}:keys
-- ARGV[1]: '1' when the plan is in the policy, else '0'
-- ARGV[2..]: the hash's field/value pairs (id, plan, created_at)
--
-- Returns: {'exists'}, {'unknown_plan'} or {'ok'}.
--
-- A script, not MULTI/EXEC: "unless it exists" is a check and a write that must be
-- atomic; MULTI/EXEC cannot branch on what it reads (and WATCH would retry on every
-- race), while a script runs whole on the tenant's Redis Cluster slot, where both KEYS
-- live (hash tag {t:<tenant>}).
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
if ARGV[1] ~= '1' then return {'unknown_plan'} end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
-- A deleted tenant's set of tombstones expires; the tenant is back, so it stays.
redis.call('PERSIST', KEYS[2])
return {'ok'}
