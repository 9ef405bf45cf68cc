-- Moves an existing tenant to another plan (`tenants set-plan`).
--
-- KEYS[1]: the tenant's hash, kg:{t:<tenant>}:tenant
-- ARGV[1]: the new plan
--
-- Returns: {'unknown_tenant'}, or {'ok'} followed by the hash's field/value pairs after
-- the change.
--
-- A script, not MULTI/EXEC: the write must happen only if the tenant exists (HSET alone
-- would re-create a deleted tenant), a check MULTI/EXEC cannot make; the script runs
-- atomically on the tenant's Redis Cluster slot.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_tenant'} end
redis.call('HSET', KEYS[1], 'plan', ARGV[1])
local out = {'ok'}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
