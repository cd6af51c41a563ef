-- quota-proxy: merges one replica's view of one API key into the shared record.
-- KEYS[1]: the key's hash. ARGV[1]: 'reset' or the writer's generation; ARGV[2]: state name;
-- ARGV[3]: until µs ('' = none); ARGV[4]: TTL ms; ARGV[5]: channel; then 5 fields per learned
-- unit: name, remaining, limit ('' = none), reset µs ('' = none), seen µs.
-- Rules (the same as the proxy's own merge): a higher generation replaces the record (a reset
-- bumps it); within one generation the stricter state wins (any state over active, then the
-- later until, no until = forever, then the greater name) and each unit keeps the signal
-- seen last. Numbers are
-- compared with tonumber but stored as the writer's strings (Lua would round µs times).
-- Returns the merged record as HGETALL pairs, and publishes it when it changed.
local k = KEYS[1]
local cur = tonumber(redis.call('HGET', k, 'gen') or '0')
local changed = false

-- How strict a state is (the proxy's rank): active lowest, then by until, then by name.
local function until_of(state, untl)
  if state == false or state == nil or state == 'active' then return -1 end
  if untl == false or untl == nil or untl == '' then return math.huge end
  return tonumber(untl)
end

local function stricter(s1, u1, s2, u2)
  local a, b = until_of(s1, u1), until_of(s2, u2)
  if a ~= b then return a > b end
  return a >= 0 and s1 > (s2 or '')
end

if ARGV[1] == 'reset' then
  redis.call('DEL', k)
  redis.call('HSET', k, 'gen', cur + 1, 'state', 'active', 'until', '')
  changed = true
else
  local gen = tonumber(ARGV[1])
  if gen > cur then
    redis.call('DEL', k)
    redis.call('HSET', k, 'gen', ARGV[1], 'state', 'active', 'until', '')
    cur = gen
    changed = true
  end
  if gen == cur then
    local s = redis.call('HMGET', k, 'state', 'until')
    if stricter(ARGV[2], ARGV[3], s[1], s[2]) then
      redis.call('HSET', k, 'state', ARGV[2], 'until', ARGV[3])
      changed = true
    end
    for a = 6, #ARGV - 4, 5 do
      local u = ARGV[a]
      local seen = redis.call('HGET', k, u .. '.seen')
      if seen == false or tonumber(ARGV[a + 4]) > tonumber(seen) then
        redis.call('HSET', k, u .. '.rem', ARGV[a + 1], u .. '.lim', ARGV[a + 2],
          u .. '.rst', ARGV[a + 3], u .. '.seen', ARGV[a + 4])
        changed = true
      end
    end
  end
end
redis.call('PEXPIRE', k, ARGV[4])
local all = redis.call('HGETALL', k)
if changed then redis.call('PUBLISH', ARGV[5], k .. '\n' .. table.concat(all, '\n')) end
return all
