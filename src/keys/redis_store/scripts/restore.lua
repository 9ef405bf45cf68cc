-- Switches a key record's digest to the one under the current pepper, if it still holds
-- the one read (re-storing a key found under an old pepper).
--
-- KEYS[1]: the key record, kg:{t:<tenant>}:key:<key_id>
-- ARGV[1]: the digest read, `pepper_id:hex`
-- ARGV[2]: the digest to store, `pepper_id:hex`
--
-- Returns: 'gone' (no record), 'same' (already re-stored), 'other' (re-stored under yet
-- another digest meanwhile) or 'ok' (switched).
--
-- A script, not MULTI/EXEC: a compare-and-set, which MULTI/EXEC cannot do without WATCH
-- and a retry loop; it runs atomically on the tenant's Redis Cluster slot.
local digest = redis.call('HGET', KEYS[1], 'digest')
if not digest then return 'gone' end
if digest == ARGV[2] then return 'same' end
if digest ~= ARGV[1] then return 'other' end
redis.call('HSET', KEYS[1], 'digest', ARGV[2])
return 'ok'
