-- keygate's rate limiter: one sliding window per (tenant, limit), shared by every replica
-- (src/ratelimit/redis.rs holds the algorithm's description, src/ratelimit/lease.rs the
-- leases', src/ratelimit.rs the proof).
--
-- KEYS[1]  the tenant's hash kg:rl:{<tenant>}:<requests>:<window>: sub-window index -> count,
--          plus the summary fields '-1' (sum held), '-2' (no counter older), '-3' (newest)
--          and '-4' (the hash's nonce: leases handed back name it)
-- ARGV[1]  requests: the plan's limit (at most 2^53)
-- ARGV[2]  the length of one sub-window, in ms
-- ARGV[3]  the length of the window, in ms (SUB_WINDOWS sub-windows)
-- ARGV[4]  lease: units wanted beyond the costs, granted only if every cost is admitted
--          (0: none)
-- ARGV[5]  share: a lease takes at most 1/share of the quota still free
-- ARGV[6]  a lease handed back: the sub-window it was granted in (-1: none)
-- ARGV[7]  its units never spent
-- ARGV[8]  the nonce of the hash that granted it
-- ARGV[9..] one cost per request, in arrival order (a batch of coalesced checks)
--
-- Returns, per cost and flattened: allowed (1 or 0), remaining, reset_ms, retry_after_ms
-- (-1 when admitted); then the lease: units granted, ms until its sub-window ends, that
-- sub-window's index, the hash's nonce, the quota free after the lease, reset_ms after it.
--
-- A script, not MULTI/EXEC: every decision reads the counters, decides, and writes what
-- it decided, and later costs of the batch depend on earlier ones. A transaction cannot
-- branch on what it read (WATCH would turn contention into retries, each another round
-- trip), while a script runs atomically in Redis with its reads and writes in one step,
-- on Redis's own clock (TIME), in one round trip.

local key = KEYS[1]
local requests = tonumber(ARGV[1])
local sub = tonumber(ARGV[2])
local window = tonumber(ARGV[3])

-- Redis's clock, in ms: one clock for every replica.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function field(k) return string.format('%d', k) end
local current, oldest
local function place()
  current = math.floor(now / sub)
  if current * sub > now then current = current - 1 end
  local from = math.max(now - window, 0)
  oldest = math.floor(from / sub)
  if oldest * sub > from then oldest = oldest - 1 end
end
place()

-- The summary, in fields whose negative names are never a sub-window's index: '-1' the
-- sum of the counters held, '-2' no counter is older than this, '-3' the newest held.
local read = redis.call('HMGET', key, '-1', '-2', '-3', field(current), '-4')
local total, low, newest = tonumber(read[1]), tonumber(read[2]), tonumber(read[3])
local cur = tonumber(read[4]) or 0
local nonce = read[5]
local dirty = false

-- The summary from the counters themselves, deleting those that left the window: for a
-- new key, one written without a summary (an older keygate), or one idle too long.
local function rebuild()
  local raw = redis.call('HGETALL', key)
  local stale = {}
  total, newest = 0, -1
  for i = 1, #raw, 2 do
    local k = tonumber(raw[i])
    if k ~= nil and k >= 0 then
      if k < oldest then
        stale[#stale + 1] = raw[i]
      else
        total = total + tonumber(raw[i + 1])
        if k > newest then newest = k end
      end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  low = oldest
  dirty = true
end
if total == nil or low == nil or newest == nil then rebuild() end

-- A clock that steps back must not un-count what was admitted.
if newest >= 0 and now < newest * sub then
  now = newest * sub
  place()
  cur = tonumber(redis.call('HGET', key, field(current))) or 0
end

-- Sub-windows that left the window: out of the sum, their fields deleted.
if low < oldest then
  if newest < oldest then
    if newest >= 0 then redis.call('DEL', key) end
    total, newest, nonce = 0, -1, false
  elseif oldest - low > 64 then
    rebuild()
  else
    local gone = {}
    for k = low, oldest - 1 do gone[#gone + 1] = field(k) end
    local counts = redis.call('HMGET', key, unpack(gone))
    for i = 1, #counts do
      if counts[i] then total = total - tonumber(counts[i]) end
    end
    redis.call('HDEL', key, unpack(gone))
  end
  low = oldest
  dirty = true
end

-- A lease handed back: its unspent units leave the counter of the sub-window it was
-- granted in, if that counter is still held by the hash that granted it (the same nonce:
-- after a restart, an expiry or a DEL the hash is another one, whose counters it must not
-- touch) and still in the window.
local back = tonumber(ARGV[6])
if back >= 0 and nonce ~= false and nonce == ARGV[8] and back >= oldest and back <= newest then
  local held
  if back == current then held = cur else held = tonumber(redis.call('HGET', key, field(back))) or 0 end
  local n = math.min(tonumber(ARGV[7]), held)
  if n > 0 then
    held = held - n
    total = total - n
    if back == current then cur = held end
    if held > 0 then redis.call('HSET', key, field(back), field(held))
    else redis.call('HDEL', key, field(back)) end
    dirty = true
  end
end

-- When sub-window k stops being counted.
local function leaves(k) return (k + 1) * sub + window - now end

-- The counters of the window's sub-windows, read only when a request is refused (for its
-- Retry-After) or the current sub-window is empty (for the reset).
local counts = nil
local function counts_in_window()
  if counts == nil then
    local fields = {}
    for k = oldest, current do fields[#fields + 1] = field(k) end
    local values = redis.call('HMGET', key, unpack(fields))
    counts = {}
    for i = 1, #values do counts[oldest + i - 1] = tonumber(values[i]) or 0 end
  end
  return counts
end

-- The newest non-empty sub-window before the current one: the reset while the current
-- one is empty.
local older_reset = nil
local function reset_before_current()
  if older_reset == nil then
    older_reset = 0
    if total > cur then
      local c = counts_in_window()
      for k = current - 1, oldest, -1 do
        if c[k] > 0 then older_reset = leaves(k) break end
      end
    end
  end
  return older_reset
end

local count = total
local added = 0
local refused = false
local out = {}
for i = 9, #ARGV do
  local cost = tonumber(ARGV[i])
  local allowed = count + cost <= requests
  local retry = -1
  if allowed then
    count = count + cost
    cur = cur + cost
    added = added + cost
  elseif cost > requests then
    refused = true
    retry = window
  else
    refused = true
    -- Until enough of the oldest sub-windows have left for this cost to fit.
    local c = counts_in_window()
    local excess = count + cost - requests
    local freed = 0
    retry = window
    for k = oldest, current do
      local n = c[k]
      if k == current then n = cur end
      freed = freed + n
      if freed >= excess then retry = leaves(k) break end
    end
  end
  local reset
  if cur > 0 then reset = leaves(current) else reset = reset_before_current() end
  out[#out + 1] = allowed and 1 or 0
  out[#out + 1] = math.max(requests - count, 0)
  out[#out + 1] = reset
  out[#out + 1] = retry
end

-- The lease: counted now, in the current sub-window, and at most 1/share of what is free.
local granted = 0
local new_nonce = false
local want = tonumber(ARGV[4])
if want > 0 and not refused then
  granted = math.min(want, math.floor((requests - count) / tonumber(ARGV[5])))
  if granted > 0 then
    count = count + granted
    cur = cur + granted
    added = added + granted
    if nonce == false then
      -- Redis's clock in µs: a new hash gets a nonce no earlier one of this key had.
      nonce = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
      new_nonce = true
      dirty = true
    end
  end
end
out[#out + 1] = granted
out[#out + 1] = (current + 1) * sub - now
out[#out + 1] = current
out[#out + 1] = nonce and tonumber(nonce) or 0
out[#out + 1] = math.max(requests - count, 0)
if cur > 0 then out[#out + 1] = leaves(current) else out[#out + 1] = reset_before_current() end

if added > 0 then
  if dirty or current > newest then
    if current > newest then newest = current end
    redis.call('HSET', key, field(current), field(cur), '-1', field(count), '-2', field(low), '-3', field(newest))
    if new_nonce then redis.call('HSET', key, '-4', nonce) end
  else
    redis.call('HSET', key, field(current), field(cur), '-1', field(count))
  end
  redis.call('PEXPIRE', key, window + sub)
elseif dirty then
  if newest >= 0 then
    redis.call('HSET', key, '-1', field(total), '-2', field(low), '-3', field(newest))
  else
    redis.call('DEL', key)
  end
end
return out
