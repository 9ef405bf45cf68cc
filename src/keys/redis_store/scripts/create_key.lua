-- Creates a key record if its tenant exists, the tenant's plan has API access and the
-- tenant is under the plan's max_keys: the first step of `keys create`. Keys are counted
-- by manage::counts_against_max_keys (active and not replaced). Runs after norm.lua.
--
-- KEYS[1]: the tenant's hash, kg:{t:<tenant>}:tenant
-- KEYS[2]: the tenant's key set, kg:{t:<tenant>}:keys
-- KEYS[3]: the new key record, kg:{t:<tenant>}:key:<key_id>
-- ARGV[1]: now (RFC 3339 UTC)
-- ARGV[2]: the prefix of the tenant's key records, kg:{t:<tenant>}:key:
-- ARGV[3]: the new key id
-- ARGV[4]: P, the number of plans in the policy
-- ARGV[5 .. 4 + 3P]: per plan: its name, max_keys (-1: no cap), api_access ('1'/'0')
-- ARGV[5 + 3P ..]: the new record's field/value pairs
--
-- Returns: {'unknown_tenant'}, {'unknown_plan', plan}, {'no_api_access', plan},
-- {'id_taken'}, {'cap', plan, max_keys} or {'ok'}.
--
-- A script, not MULTI/EXEC: the count and the write must be one atomic step, or two
-- concurrent creates (from any number of processes) could both pass the cap; MULTI/EXEC
-- cannot decide on what it reads, and WATCH on the whole key set would retry under
-- contention. The script runs whole on the tenant's Redis Cluster slot, where every key
-- it touches lives (hash tag {t:<tenant>}).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown_tenant'} end
local plan = redis.call('HGET', KEYS[1], 'plan') or ''
local plans = tonumber(ARGV[4])
local max, access = nil, nil
for i = 0, plans - 1 do
  if ARGV[5 + 3 * i] == plan then
    max = tonumber(ARGV[6 + 3 * i])
    access = ARGV[7 + 3 * i]
  end
end
if max == nil then return {'unknown_plan', plan} end
if access ~= '1' then return {'no_api_access', plan} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'id_taken'} end
if max >= 0 then
  local now = norm(ARGV[1])
  local count = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local f = redis.call('HMGET', ARGV[2] .. id, 'id', 'revoked_at', 'expires_at', 'replaced_by')
    if not f[1] then
      redis.call('SREM', KEYS[2], id)
    elseif (not f[2] or norm(f[2]) > now) and (not f[3] or norm(f[3]) > now) and not f[4] then
      count = count + 1
    end
  end
  if count >= max then return {'cap', plan, tostring(max)} end
end
redis.call('HSET', KEYS[3], unpack(ARGV, 5 + 3 * plans))
redis.call('SADD', KEYS[2], ARGV[3])
return {'ok'}
