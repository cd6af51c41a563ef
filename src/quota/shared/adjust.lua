-- quota-proxy: corrects counters after admission (settle, cancel, reconcile), on the
-- Redis server's clock. KEYS[i]: the counter of op i. ARGV[1]: op count; then 5 fields per op:
--   kind, delta (units to add, may be negative), tag, p1, p2
--   r: tag = sub-bucket index, p1 = width µs, p2 = n      (skipped once out of the window)
--   b: p1 = rate per µs, p2 = burst
--   c: tag = client-share group field ('' = none), p1 = period end µs
--                                                          (skipped once the period is over)
--   k: tag = lease member to release (delta ignored)
-- KEYS[n + 1], when given: the batch's guard, kept ARGV[2 + 5n] ms once the batch is applied;
-- a batch whose guard exists was applied already (its first sending failed without an
-- answer yet ran) and is skipped.
-- A counter never goes below zero. Reply: the server time (µs).
local MARGIN = 60000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = tonumber(ARGV[1])
if #KEYS > n and not redis.call('SET', KEYS[n + 1], '1', 'NX', 'PX', ARGV[2 + 5 * n]) then
  return now
end
for i = 1, n do
  local a = 1 + (i - 1) * 5
  local kind, delta, tag = ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
  local p1, p2 = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local key = KEYS[i]
  if kind == 'r' then
    local width, buckets = p1, p2
    local b = tonumber(tag)
    if b + buckets >= math.floor(now / width) and delta ~= 0 then
      local v = tonumber(redis.call('HINCRBYFLOAT', key, tag, delta))
      local counted = delta
      if v <= 0 then
        redis.call('HDEL', key, tag)
        counted = delta - v
      end
      -- The sum of the counted sub-buckets (see admit.lua), if kept: a live sub-bucket is
      -- always counted in it.
      local lo = tonumber(redis.call('HGET', key, 'lo'))
      if lo ~= nil and b >= lo then
        local s = tonumber(redis.call('HINCRBYFLOAT', key, 's', counted))
        if s < 0 then redis.call('HSET', key, 's', 0) end
      end
      if redis.call('HLEN', key) > 0 then
        redis.call('PEXPIRE', key, math.ceil((buckets + 1) * width / 1000) + MARGIN)
      end
    end
  elseif kind == 'b' then
    local rate, burst = p1, p2
    local v = redis.call('HMGET', key, 'level', 'last')
    local level, last = tonumber(v[1]), tonumber(v[2])
    if level == nil or last == nil then level, last = burst, now end
    if now > last then level = math.min(burst, level + (now - last) * rate) end
    level = math.min(burst, level - delta)
    redis.call('HSET', key, 'level', level, 'last', now)
    local refill = rate > 0 and math.ceil((burst - level) / rate / 1000) or 86400000
    redis.call('PEXPIRE', key, refill + MARGIN)
  elseif kind == 'c' then
    if now < p1 and delta ~= 0 then
      local ttl = math.ceil((p1 - now) / 1000) + MARGIN
      local v = tonumber(redis.call('INCRBYFLOAT', key, delta))
      if v < 0 then redis.call('SET', key, 0) end
      redis.call('PEXPIRE', key, ttl)
      if tag ~= '' then
        local g = tonumber(redis.call('HINCRBYFLOAT', key .. ':g', tag, delta))
        if g < 0 then redis.call('HSET', key .. ':g', tag, 0) end
        redis.call('PEXPIRE', key .. ':g', ttl)
      end
    end
  else
    redis.call('ZREM', key, tag)
  end
end
return now
