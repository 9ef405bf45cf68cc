-- Replaces the limit overrides of a tenant or a key (`tenants set-limits`,
-- `keys set-limits`, `PUT /admin/v1/{tenants,keys}/…/limits`).
--
-- KEYS[1]: the record, kg:{t:<tenant>}:tenant or kg:{t:<tenant>}:key:<key_id>
-- ARGV[1]: the overrides as JSON, or '' to remove them (the `limits` field)
-- ARGV[2]: '1' to refuse a revoked record (a key), '0' otherwise
--
-- Returns: {'unknown'}, {'revoked'}, or {'ok'} followed by the hash's field/value pairs
-- after the change.
--
-- A script, not MULTI/EXEC: the write must happen only if the record exists (HSET alone
-- would re-create a deleted tenant or key) and is not revoked, checks MULTI/EXEC cannot
-- make; it runs atomically on the tenant's Redis Cluster slot.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
if ARGV[2] == '1' and redis.call('HGET', KEYS[1], 'revoked_at') then return {'revoked'} end
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[1], 'limits')
else
  redis.call('HSET', KEYS[1], 'limits', ARGV[1])
end
local out = {'ok'}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
