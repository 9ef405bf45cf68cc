-- Renews slots this replica still holds: each expires `ttl` from now (Redis's clock).
-- A slot no longer in the set (released, or expired and removed) is not added back.
-- KEYS[1]: the tenant's slots; ARGV[1]: the time to live (ms); ARGV[2..]: slot ids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 0
