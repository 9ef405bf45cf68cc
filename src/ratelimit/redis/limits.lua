-- keygate's rate limiter: every limit of a tenant's plan, decided at once and shared by
-- every replica (src/ratelimit/redis.rs holds the algorithm's description,
-- src/ratelimit/lease.rs the leases', src/ratelimit.rs the proof).
--
-- KEYS[i]  one per limit of the plan, in order, all on the tenant's hash slot:
--          a sliding window  kg:rl:{<tenant>}:<window>: sub-window index -> count,
--                            plus the summary fields '-1' (sum held), '-2' (no counter
--                            older), '-3' (newest) and '-4' (the hash's nonce: leases
--                            handed back name it)
--          a calendar quota  kg:rq:{<tenant>}:day or :month: 'p' the period counted (its
--                            first day, days since 1970-01-01 UTC), 'n' its count, 'o' the
--                            hash's nonce
-- ARGV[1]  n: the number of limits (KEYS)
-- ARGV[2]  share: a lease takes at most 1/share of the quota still free in its limit
-- then 7 per limit, in KEYS' order:
--          requests (at most 2^53);
--          a window: the length of one sub-window in ms; a calendar quota: 0;
--          a window: its length in ms (SUB_WINDOWS sub-windows); a quota: 0 for a day,
--            the reset day (1..31) for a month;
--          lease: units of this limit wanted beyond the costs, granted only if every
--            cost is admitted (0: none);
--          units of a lease of this limit handed back, never spent (0: none);
--          the sub-window (window) or period (quota) they were counted in (-1: none);
--          the nonce of the hash that counted them
-- then one cost per request, in arrival order (a batch of coalesced checks)
--
-- Returns, per cost and flattened: allowed (1 or 0), the limit the answer describes (its
-- position, from 0: the one that refused whose room comes back last, or, admitted, the
-- one with the least room left), its remaining, reset_ms and retry_after_ms (-1 when
-- admitted); then per limit its lease: units granted, ms until its sub-window (or, for a
-- quota, at most a second) ends, the sub-window or period it is counted in, the hash's
-- nonce, the quota free after the lease, reset_ms after it.
--
-- A call may carry only some of a plan's limits (the others served from leases of their
-- own on the replica): it decides the costs against those it carries.
--
-- A request is admitted only if every limit has room for its cost; then it counts in
-- all of them, and a refusal counts in none. A script, not MULTI/EXEC: every decision
-- reads the counters, decides, and writes what it decided, and later costs of the batch
-- depend on earlier ones; a script runs atomically in Redis with its reads and writes in
-- one step, on Redis's own clock (TIME), in one round trip.

local n = tonumber(ARGV[1])
local share = tonumber(ARGV[2])
local PER_LIMIT = 7
local first_cost = 3 + n * PER_LIMIT

-- Redis's clock, in ms: one clock for every replica.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local DAY = 86400000
local QUOTA_LEASE_MS = 1000

local function field(k) return string.format('%d', k) end

-- A nonce no earlier hash of a key had: Redis's clock in µs.
local function new_nonce() return string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])) end

-- The calendar (proleptic Gregorian, UTC; H. Hinnant's algorithms, as
-- src/policy/limit.rs computes them).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_in_month(y, m)
  if m == 2 then
    if (y % 4 == 0 and y % 100 ~= 0) or y % 400 == 0 then return 29 end
    return 28
  elseif m == 4 or m == 6 or m == 9 or m == 11 then
    return 30
  end
  return 31
end
local function reset_in(y, m, rd) return days_from_civil(y, m, math.min(rd, days_in_month(y, m))) end
-- The period holding day `today`, as [first day, next period's first day): a day
-- (rd = 0), or a month resetting on day rd (a shorter month's last day standing in).
local function period(today, rd)
  if rd == 0 then return today, today + 1 end
  local y, m = civil_from_days(today)
  local this = reset_in(y, m, rd)
  if today >= this then
    if m == 12 then return this, reset_in(y + 1, 1, rd) end
    return this, reset_in(y, m + 1, rd)
  end
  if m == 1 then return reset_in(y - 1, 12, rd), this end
  return reset_in(y, m - 1, rd), this
end

-- A sliding window: the algorithm of the script before several limits
-- (tests/fixtures/limiter-before-limits.lua), on one key.
local function open_window(key, requests, sub, window, back_units, back, back_nonce)
  local L = { added = 0 }
  -- This window's own reading of the clock (one that stepped back moves it on).
  local now = now
  local current, oldest
  local function place()
    current = math.floor(now / sub)
    if current * sub > now then current = current - 1 end
    local from = math.max(now - window, 0)
    oldest = math.floor(from / sub)
    if oldest * sub > from then oldest = oldest - 1 end
  end
  place()

  -- The summary, in fields whose negative names are never a sub-window's index.
  local read = redis.call('HMGET', key, '-1', '-2', '-3', field(current), '-4')
  local total, low, newest = tonumber(read[1]), tonumber(read[2]), tonumber(read[3])
  local cur = tonumber(read[4]) or 0
  local nonce = read[5]
  local dirty = false
  local fresh_nonce = false

  -- The summary from the counters themselves, deleting those that left the window: for
  -- a new key, one written without a summary (an older keygate), or one idle too long.
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
  -- granted in, if that counter is still held by the hash that granted it (the same
  -- nonce) and still in the window.
  if back_units > 0 and back >= 0 and nonce ~= false and nonce == back_nonce and back >= oldest and back <= newest then
    local held
    if back == current then held = cur else held = tonumber(redis.call('HGET', key, field(back))) or 0 end
    local k = math.min(back_units, held)
    if k > 0 then
      held = held - k
      total = total - k
      if back == current then cur = held end
      if held > 0 then redis.call('HSET', key, field(back), field(held))
      else redis.call('HDEL', key, field(back)) end
      dirty = true
    end
  end

  -- When sub-window k stops being counted.
  local function leaves(k) return (k + 1) * sub + window - now end

  -- The counters of the window's sub-windows, read only when a request is refused (for
  -- its Retry-After) or the current sub-window is empty (for the reset).
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
  function L.fits(cost) return count + cost <= requests end
  function L.add(cost)
    count = count + cost
    cur = cur + cost
    L.added = L.added + cost
  end
  function L.reset()
    if cur > 0 then return leaves(current) end
    return reset_before_current()
  end
  -- remaining, reset and retry_after (-1 when it fits) of a cost.
  function L.part(cost, fits)
    local retry = -1
    if not fits then
      if cost > requests then
        retry = window
      else
        -- Until enough of the oldest sub-windows have left for this cost to fit.
        local c = counts_in_window()
        local excess = count + cost - requests
        local freed = 0
        retry = window
        for k = oldest, current do
          local v = c[k]
          if k == current then v = cur end
          freed = freed + v
          if freed >= excess then retry = leaves(k) break end
        end
      end
    end
    return math.max(requests - count, 0), L.reset(), retry
  end
  function L.free() return math.max(requests - count, 0) end
  function L.left() return (current + 1) * sub - now end
  -- The sub-window a lease is counted in, and the hash's nonce (a new one if it has
  -- none and a lease was granted).
  function L.lease(granted)
    if granted > 0 and nonce == false then
      nonce = new_nonce()
      fresh_nonce = true
      dirty = true
    end
    return current, nonce and tonumber(nonce) or 0
  end
  function L.write()
    if L.added > 0 then
      if dirty or current > newest then
        if current > newest then newest = current end
        redis.call('HSET', key, field(current), field(cur), '-1', field(count), '-2', field(low), '-3', field(newest))
        if fresh_nonce then redis.call('HSET', key, '-4', nonce) end
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
  end
  return L
end

-- A calendar quota: one count per period, reset at the period's first instant.
local function open_quota(key, requests, rd, back_units, back, back_nonce)
  local L = { added = 0 }
  local first, next_first = period(math.floor(now / DAY), rd)
  local read = redis.call('HMGET', key, 'p', 'n', 'o')
  local p, count, nonce = tonumber(read[1]), tonumber(read[2]) or 0, read[3]
  local dirty = false
  if p == nil or first > p then
    -- A new period (or a new key) starts from nothing.
    if p ~= nil then redis.call('DEL', key) end
    p, count, nonce = first, 0, false
  elseif first < p then
    -- A clock that stepped back into an earlier period keeps counting the later one:
    -- this only refuses more.
    first, next_first = period(p, rd)
  end
  local at = math.max(now, first * DAY)
  local left = next_first * DAY - at

  -- A lease handed back: its unspent units leave the count, if it is still the period
  -- and the hash that counted them.
  if back_units > 0 and back == p and nonce ~= false and nonce == back_nonce then
    local k = math.min(back_units, count)
    if k > 0 then
      count = count - k
      dirty = true
    end
  end

  function L.fits(cost) return count + cost <= requests end
  function L.add(cost)
    count = count + cost
    L.added = L.added + cost
  end
  function L.reset()
    if count > 0 then return left end
    return 0
  end
  -- Refused: until the period resets (a cost above the quota included).
  function L.part(cost, fits)
    local retry = -1
    if not fits then retry = left end
    return math.max(requests - count, 0), L.reset(), retry
  end
  function L.free() return math.max(requests - count, 0) end
  -- A lease of a quota lasts at most QUOTA_LEASE_MS (a window's sub-window bounds it
  -- too): units parked on a replica that went quiet come back within about a second,
  -- not at the end of the month.
  function L.left() return math.min(left, QUOTA_LEASE_MS) end
  function L.lease(granted)
    if granted > 0 and nonce == false then
      nonce = new_nonce()
      redis.call('HSET', key, 'o', nonce)
      dirty = true
    end
    return p, nonce and tonumber(nonce) or 0
  end
  function L.write()
    if L.added > 0 or dirty then
      redis.call('HSET', key, 'p', field(p), 'n', field(count))
      -- Kept a minute past its period: a hand-back that arrives late finds it.
      redis.call('PEXPIRE', key, left + 60000)
    end
  end
  return L
end

local limits = {}
local wants = {}
for i = 1, n do
  local base = 2 + (i - 1) * PER_LIMIT
  local requests = tonumber(ARGV[base + 1])
  local sub = tonumber(ARGV[base + 2])
  local third = tonumber(ARGV[base + 3])
  wants[i] = tonumber(ARGV[base + 4])
  local back_units = tonumber(ARGV[base + 5])
  local back = tonumber(ARGV[base + 6])
  local back_nonce = ARGV[base + 7]
  if sub > 0 then
    limits[i] = open_window(KEYS[i], requests, sub, third, back_units, back, back_nonce)
  else
    limits[i] = open_quota(KEYS[i], requests, third, back_units, back, back_nonce)
  end
end

local out = {}
local refused = false
for c = first_cost, #ARGV do
  local cost = tonumber(ARGV[c])
  local fits = {}
  local allowed = true
  for i = 1, n do
    fits[i] = limits[i].fits(cost)
    if not fits[i] then allowed = false end
  end
  if allowed then
    for i = 1, n do limits[i].add(cost) end
  else
    refused = true
  end
  -- The limit the answer describes: refused, the one that refused whose room comes back
  -- last (the first of equals); admitted, the one with the least room left (of equals,
  -- the one whose quota comes back last, then the first).
  local best, br, bt, bx = 0, 0, 0, -1
  for i = 1, n do
    local r, reset, retry = limits[i].part(cost, allowed or fits[i])
    local better
    if allowed then
      better = best == 0 or r < br or (r == br and reset > bt)
    else
      better = (not fits[i]) and (best == 0 or retry > bx)
    end
    if better then best, br, bt, bx = i, r, reset, retry end
  end
  out[#out + 1] = allowed and 1 or 0
  out[#out + 1] = best - 1
  out[#out + 1] = br
  out[#out + 1] = bt
  out[#out + 1] = bx
end

-- The leases: each limit's counted now in that limit, at most 1/share of what it has free.
for i = 1, n do
  local granted = 0
  if wants[i] > 0 and not refused then
    granted = math.min(wants[i], math.floor(limits[i].free() / share))
    if granted > 0 then limits[i].add(granted) end
  end
  local counted_in, nonce = limits[i].lease(granted)
  out[#out + 1] = granted
  out[#out + 1] = limits[i].left()
  out[#out + 1] = counted_in
  out[#out + 1] = nonce
  out[#out + 1] = limits[i].free()
  out[#out + 1] = limits[i].reset()
end

for i = 1, n do limits[i].write() end
return out
