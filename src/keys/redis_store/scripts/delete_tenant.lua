-- Deletes a tenant's hash and revokes (tombstones) every key of it not yet revoked: the
-- first step of `tenants delete`.
--
-- KEYS[1]: the tenant's hash, kg:{t:<tenant>}:tenant
-- KEYS[2]: the tenant's key set, kg:{t:<tenant>}:keys
-- ARGV[1]: now (RFC 3339 UTC), the revocation time
-- ARGV[2]: the tombstones' TTL, in seconds (30 days)
-- ARGV[3]: the prefix of the tenant's key records, kg:{t:<tenant>}:key:
--
-- Returns: {'unknown_tenant'}, or {'ok'} followed by the (key id, digest) of every key
-- it revoked.
--
-- A script, not MULTI/EXEC: which keys to revoke depends on what is read (the key set,
-- each record's revoked_at), and no key may be created or revoked in between; a script
-- runs whole on the tenant's Redis Cluster slot, where every key it touches lives (the
-- record names it builds from ARGV[3] carry the same hash tag).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_tenant'} end
redis.call('DEL', KEYS[1])
local out = {'ok'}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local record = ARGV[3] .. id
  if redis.call('EXISTS', record) == 0 then
    redis.call('SREM', KEYS[2], id)
  elseif not redis.call('HGET', record, 'revoked_at') then
    redis.call('HSET', record, 'revoked_at', ARGV[1])
    redis.call('EXPIRE', record, ARGV[2])
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', record, 'digest') or ''
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return out
