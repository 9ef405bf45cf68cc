-- Removes a key record just created whose index could not be written (best effort), so
-- that a key whose secret nobody got holds no max_keys slot.
--
-- KEYS[1]: the key record, kg:{t:<tenant>}:key:<key_id>
-- KEYS[2]: the tenant's key set, kg:{t:<tenant>}:keys
-- ARGV[1]: the record's digest, `pepper_id:hex`
-- ARGV[2]: the key id
--
-- Returns: 1 when removed, 0 when the record is no longer the one created.
--
-- A script, not MULTI/EXEC: the record is removed only if it is still the one created
-- (same digest), a check MULTI/EXEC cannot make; it runs atomically on the tenant's
-- Redis Cluster slot (both KEYS carry the hash tag {t:<tenant>}).
if redis.call('HGET', KEYS[1], 'digest') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
