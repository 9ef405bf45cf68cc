-- Puts the old key of a rotation back as it was and removes the new key, when the new
-- key's index could not be written (best effort).
--
-- KEYS[1]: the tenant's key set, kg:{t:<tenant>}:keys
-- KEYS[2]: the old key record
-- KEYS[3]: the new key record
-- ARGV[1]: the new key id
-- ARGV[2]: the old key's original expires_at ('' for none)
--
-- Returns: 1 when undone, 0 when the old key is no longer replaced by this new one.
--
-- A script, not MULTI/EXEC: the undo applies only if the old key still points at the new
-- one, a check MULTI/EXEC cannot make; it runs atomically on the tenant's Redis Cluster
-- slot (all three KEYS carry the hash tag {t:<tenant>}).
if redis.call('HGET', KEYS[2], 'replaced_by') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], 'replaced_by')
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], 'expires_at')
else
  redis.call('HSET', KEYS[2], 'expires_at', ARGV[2])
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[1], ARGV[1])
return 1
