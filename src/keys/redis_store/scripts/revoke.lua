-- Revokes a key: marks its record (revoked_at) and gives it the tombstone's TTL. The
-- first step of `keys revoke`.
--
-- KEYS[1]: the key record, kg:{t:<tenant>}:key:<key_id>
-- ARGV[1]: now (RFC 3339 UTC), the revocation time
-- ARGV[2]: the tombstone's TTL, in seconds (30 days)
--
-- Returns: {'unknown_key'}; {'revoked', digest, remaining TTL in seconds} when it was
-- already revoked; or {'ok'} followed by the record's field/value pairs after the change.
--
-- A script, not MULTI/EXEC: a key is revoked once, and its first revocation time must
-- never be overwritten, so the check and the write are one atomic step, which MULTI/EXEC
-- cannot branch on; it runs on the tenant's Redis Cluster slot (the record carries the
-- hash tag {t:<tenant>}).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_key'} end
if redis.call('HGET', KEYS[1], 'revoked_at') then
  return {'revoked', redis.call('HGET', KEYS[1], 'digest') or '', tostring(redis.call('TTL', KEYS[1]))}
end
redis.call('HSET', KEYS[1], 'revoked_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local out = {'ok'}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
