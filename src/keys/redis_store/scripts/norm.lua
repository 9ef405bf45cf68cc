-- Not a script of its own: a function prepended to create_key.lua and touch.lua.
--
-- norm(t): an RFC 3339 UTC time (`...Z`) with its fractional seconds padded to nine
-- digits, so that two stored times compare correctly as strings (see
-- docs/redis-layout.md). Anything else is returned as it is.
local function norm(t)
  local base, frac = string.match(t, '^(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d)%.?(%d*)Z$')
  if not base then return t end
  return base .. '.' .. frac .. string.rep('0', 9 - #frac)
end
