-- Takes one concurrency slot of a tenant, if its cap allows (docs/reference.md §4.4).
-- KEYS[1]: the tenant's slots, a sorted set `kg:cc:{<tenant>}`: member = slot id
--          (`<replica id>:<counter>`), score = when the slot expires (ms, Redis's clock).
-- ARGV[1]: the cap; ARGV[2]: the new slot's id; ARGV[3]: its time to live (ms).
-- Returns {1, slots held} when taken, {0, slots held} when the cap is reached.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then
  return {0, held}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, held + 1}
