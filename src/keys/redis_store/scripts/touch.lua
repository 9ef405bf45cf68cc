-- Writes last_used_at on some key records of one tenant, never moving it back and never
-- re-creating a record that is gone. Runs after norm.lua.
--
-- KEYS[i]: a key record of the tenant, kg:{t:<tenant>}:key:<key_id>
-- ARGV[i]: when KEYS[i] was used (RFC 3339 UTC)
--
-- Returns: 0.
--
-- A script, not MULTI/EXEC: each write depends on what is read (the record exists, the
-- stored time is earlier), which MULTI/EXEC cannot test, and a plain HSET would
-- re-create a record deleted meanwhile; the script runs atomically on the tenant's
-- Redis Cluster slot, where all its KEYS live (hash tag {t:<tenant>}).
for i, record in ipairs(KEYS) do
  if redis.call('EXISTS', record) == 1 then
    local seen = redis.call('HGET', record, 'last_used_at')
    if not seen or norm(seen) < norm(ARGV[i]) then
      redis.call('HSET', record, 'last_used_at', ARGV[i])
    end
  end
end
return 0
