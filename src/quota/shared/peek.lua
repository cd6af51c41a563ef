-- quota-proxy: reads counters without changing them (status, metrics), on the server's clock.
-- KEYS[i]: counter i. ARGV[1]: count; then 3 fields per counter: kind, p1, p2 as in admit.lua.
-- Reply: 2 strings per counter: units used now, and when they next fall (µs; 0 = unknown);
-- then the server time (µs).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local a = 1 + (i - 1) * 3
  local kind, p1, p2 = ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
  local key = KEYS[i]
  local used, resets = 0, 0
  if kind == 'r' then
    local head, n, oldest = math.floor(now / p1), tonumber(p2), nil
    local raw = redis.call('HGETALL', key)
    for j = 1, #raw, 2 do
      local b, v = tonumber(raw[j]), tonumber(raw[j + 1])
      if b ~= nil and b + n >= head and v > 0 then
        used = used + v
        if oldest == nil or b < oldest then oldest = b end
      end
    end
    if oldest ~= nil then resets = (oldest + n + 1) * p1 end
  elseif kind == 'b' then
    local burst = tonumber(p2)
    local v = redis.call('HMGET', key, 'level', 'last')
    local level, last = tonumber(v[1]), tonumber(v[2])
    if level ~= nil and last ~= nil then
      if now > last then level = math.min(burst, level + (now - last) * p1) end
      used = burst - level
      if used > 0 and p1 > 0 then resets = now + math.ceil(used / p1) end
    end
  elseif kind == 'c' then
    used = tonumber(redis.call('GET', key) or '0')
    resets = tonumber(p2)
  else
    used = redis.call('ZCOUNT', key, '(' .. now, '+inf')
  end
  out[#out + 1] = string.format('%.17g', used)
  out[#out + 1] = string.format('%.0f', resets)
end
out[#out + 1] = string.format('%.0f', now)
return out
