-- Writes a rotation's new key record and puts the old key in its grace, but only if
-- what the checks read (in Rust, before) is unchanged: the first step of `keys rotate`.
--
-- KEYS[1]: the tenant's hash, kg:{t:<tenant>}:tenant
-- KEYS[2]: the tenant's key set, kg:{t:<tenant>}:keys
-- KEYS[3]: the old key record
-- KEYS[4]: the new key record
-- ARGV[1]: the tenant's plan as read
-- ARGV[2]: the old key's revoked_at as read ('' for none)
-- ARGV[3]: the old key's expires_at as read ('' for none)
-- ARGV[4]: the old key's replaced_by as read ('' for none)
-- ARGV[5]: the old key's scopes as read ('' for none)
-- ARGV[6]: the old key's new expires_at (the end of its grace)
-- ARGV[7]: the new key id
-- ARGV[8..]: the new record's field/value pairs
--
-- Returns: {'changed'} (read and check again), {'id_taken'} or {'ok'}.
--
-- A script, not MULTI/EXEC: the compare and the writes must be one atomic step (an
-- optimistic check, like WATCH, but one that a refused race costs no extra round trip
-- and that does not abort on unrelated writes to the same keys); it runs whole on the
-- tenant's Redis Cluster slot, where all four KEYS live (hash tag {t:<tenant>}).
if redis.call('EXISTS', KEYS[3]) == 0 then return {'changed'} end
if (redis.call('HGET', KEYS[1], 'plan') or '') ~= ARGV[1] then return {'changed'} end
local f = redis.call('HMGET', KEYS[3], 'revoked_at', 'expires_at', 'replaced_by', 'scopes')
for i = 1, 4 do
  if (f[i] or '') ~= ARGV[i + 1] then return {'changed'} end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'id_taken'} end
redis.call('HSET', KEYS[4], unpack(ARGV, 8))
redis.call('SADD', KEYS[2], ARGV[7])
redis.call('HSET', KEYS[3], 'replaced_by', ARGV[7], 'expires_at', ARGV[6])
return {'ok'}
