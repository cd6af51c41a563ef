-- quota-proxy: a batch of admissions, each atomic and all-or-nothing, decided one after
-- another on the Redis server's clock (one TIME for the batch), as if each had been its own
-- call at that instant.
-- KEYS: the counters of every admission's items, admission after admission.
-- ARGV[1]: per admission its item count, then one record per item, all packed
--   little-endian: the count as a double, each record as (kind: 1 byte, then 5 doubles:
--   cost, cap, p1, p2, m), so no number is formatted or parsed as text on either side;
--   ARGV[2..]: the items' string fields, m per item, in order.
--   kind ('r' rolling | 'b' token bucket | 'c' calendar | 'k' concurrency)
--   r: p1 = sub-bucket width µs, p2 = sub-buckets per window (n)
--   b: p1 = refill rate per µs, p2 = burst
--   c: p1 = period start µs, p2 = period end µs (computed by the proxy)
--   k: p1 = lease µs; its one string field is the lease member (unique per call)
--   calendar with client shares (m > 0): the caller's group (1-based), borrow (0|1), the
--   limit's whole amount, then (field, fraction) per group, the last being everyone not
--   listed; per-group usage lives in the hash KEYS[i]..':g' (the rule of quota/shares.rs).
-- The reply is one string, a line per admission, each line integers separated by spaces:
--   "1 now used_1 ... used_n" admitted (each counter's usage with this call, in thousandths
--   of a unit) | "0 until item on_release now" wait | "2 item now" too large |
--   "3 now" calendar bounds stale (recompute, call again)
-- Rolling, bucket and calendar counters are read once per batch and written once at its
-- end (`state`, `dirty`); a read that needs a counter's stored fields writes it first.
-- Concurrency leases and client-share usage are read and written in place.
local MARGIN = 60000 -- ms kept beyond a counter's last relevant instant
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Integers as one string ("%d": Lua's own number formatting keeps 14 digits only).
local function reply(t)
  for j = 1, #t do t[j] = string.format('%d', t[j]) end
  return table.concat(t, ' ')
end

-- key -> what this batch knows of the counter: rolling {r, sum, cur, width, n, grew},
-- bucket {b, level, rate, burst}, calendar {c, used, ttl}. `dirty`: keys to write back.
local state, dirty = {}, {}

local function mark(key, c)
  if not c.dirty then
    c.dirty = true
    dirty[#dirty + 1] = key
  end
end

local function write(key)
  local c = state[key]
  if c == nil or not c.dirty then return end
  c.dirty = false
  if c.kind == 'r' then
    redis.call('HSET', key, math.floor(now / c.width), c.cur, 's', c.sum)
    if c.grew then
      -- A new sub-bucket: the hash must outlive it.
      redis.call('PEXPIRE', key, math.ceil((c.n + 1) * c.width / 1000) + MARGIN)
      c.grew = false
    end
  elseif c.kind == 'b' then
    redis.call('HSET', key, 'level', c.level, 'last', now)
    local refill = c.rate > 0 and math.ceil((c.burst - c.level) / c.rate / 1000) or 86400000
    redis.call('PEXPIRE', key, refill + MARGIN)
  else
    redis.call('SET', key, c.used, 'PX', c.ttl)
  end
end

local function fits(used, cost, cap)
  return used + cost <= cap + 1e-9 * math.max(math.abs(cap), 1)
end

-- A rolling window is a hash of sub-buckets (field = sub-bucket index) plus two bookkeeping
-- fields: 's', the sum of the sub-buckets from index 'lo' on, and 'lo', the oldest index
-- still counted (every older one is gone). A call reads those two (and the current
-- sub-bucket) and drops only the sub-buckets that left the window since, instead of reading
-- all of them. Returns the sum and the current sub-bucket's value.
local function rolling_sum(key, width, buckets)
  local c = state[key]
  if c ~= nil then return c end
  local head = math.floor(now / width)
  local first = head - buckets
  local v = redis.call('HMGET', key, 's', 'lo', head)
  local sum, lo, current = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]) or 0
  c = {kind = 'r', cur = current, width = width, n = buckets, grew = false}
  state[key] = c
  if sum ~= nil and lo ~= nil and lo >= first then
    c.sum = sum
    return c
  end
  if sum ~= nil and lo ~= nil and first - lo <= buckets then
    local dead = {}
    for b = lo, first - 1 do dead[#dead + 1] = b end
    local vals = redis.call('HMGET', key, unpack(dead))
    for j = 1, #vals do sum = sum - (tonumber(vals[j]) or 0) end
    redis.call('HDEL', key, unpack(dead))
  else
    -- First use, a long idle time, or a hash without bookkeeping: count from scratch.
    sum = 0
    local raw, old = redis.call('HGETALL', key), {}
    for j = 1, #raw, 2 do
      local b = tonumber(raw[j])
      if b ~= nil and b < first then old[#old + 1] = raw[j]
      elseif b ~= nil then sum = sum + tonumber(raw[j + 1]) end
    end
    if #old > 0 then redis.call('HDEL', key, unpack(old)) end
  end
  sum = math.max(sum, 0)
  c.sum = sum
  redis.call('HSET', key, 's', sum, 'lo', first)
  redis.call('PEXPIRE', key, math.ceil((buckets + 1) * width / 1000) + MARGIN)
  return c
end

local function rolling(key, cost, cap, width, buckets)
  local sum = rolling_sum(key, width, buckets).sum
  if fits(sum, cost, cap) then return 'now' end
  if not fits(0, cost, cap) then return 'never' end
  -- Refused: when does enough fall out of the window? (newest sub-buckets first)
  local head = math.floor(now / width)
  write(key)
  local raw = redis.call('HGETALL', key)
  local order, vals = {}, {}
  for j = 1, #raw, 2 do
    local b = tonumber(raw[j])
    if b ~= nil and b + buckets >= head then
      order[#order + 1] = b
      vals[b] = tonumber(raw[j + 1])
    end
  end
  table.sort(order, function(a, b) return a > b end)
  local acc = 0
  for _, b in ipairs(order) do
    acc = acc + vals[b]
    if not fits(acc, cost, cap) then return 'at', (b + buckets + 1) * width end
  end
  return 'now'
end

local function bucket_state(key, rate, burst)
  local c = state[key]
  if c ~= nil then return c end
  local v = redis.call('HMGET', key, 'level', 'last')
  local level, last = tonumber(v[1]), tonumber(v[2])
  if level == nil or last == nil then level = burst
  elseif now > last then level = math.min(burst, level + (now - last) * rate) end
  c = {kind = 'b', level = level, rate = rate, burst = burst}
  state[key] = c
  return c
end

local function bucket(key, cost, cap, rate, burst)
  if not fits(0, cost, math.min(cap, burst)) then return 'never' end
  local used = burst - bucket_state(key, rate, burst).level
  if fits(used, cost, cap) then return 'now' end
  if rate <= 0 then return 'never' end
  local wait = math.ceil((used + cost - cap) / rate)
  return 'at', now + math.max(wait, 1)
end

-- Also returns the counter's usage before this call.
local function calendar(key, cost, cap, start, stop)
  if now < start or now >= stop then return 'stale' end
  if not fits(0, cost, cap) then return 'never' end
  local c = state[key]
  if c == nil then
    c = {kind = 'c', used = tonumber(redis.call('GET', key) or '0')}
    state[key] = c
  end
  local used = c.used
  if fits(used, cost, cap) then return 'now', nil, used end
  return 'at', stop, used
end

local function share_check(key, total, cost, sh)
  local amount, g, last = sh.amount, sh.group, #sh.fields
  local vals = redis.call('HMGET', key .. ':g', unpack(sh.fields))
  local used = {}
  for h = 1, last do used[h] = tonumber(vals[h]) or 0 end
  local own = sh.fracs[g] * amount
  local within_own = fits(used[g], cost, own)
  local listed = g < last
  local ok
  if listed and within_own then ok = true
  elseif listed and not sh.borrow then ok = false
  else
    local locked = 0
    for h = 1, last - 1 do
      if h ~= g then locked = locked + math.max(0, sh.fracs[h] * amount - used[h]) end
    end
    ok = (sh.borrow or within_own) and fits(total + locked, cost, amount)
  end
  if ok then return 'ok' end
  local most = own
  if sh.borrow then
    local others = 0
    for h = 1, last - 1 do if h ~= g then others = others + sh.fracs[h] end end
    most = math.max(sh.fracs[g], 1 - others) * amount
  end
  if fits(0, cost, most) then return 'later' end
  return 'never'
end

local function concurrency(key, cap)
  if not fits(0, 1, cap) then return 'never' end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if fits(redis.call('ZCARD', key), 1, cap) then return 'now' end
  return 'release'
end

-- One admission's items, in arrays reused by every admission of the batch (a table per item
-- cost about 0.14 us of Redis time each): index i holds item i's fields.
local KIND, COST, CAP, P1, P2, KEY, USED, SHARE = {}, {}, {}, {}, {}, {}, {}, {}
-- The "admitted" line for n items: one format call, its format string made once per n.
local ADMITTED = {}

local function admitted_line(n)
  local f = ADMITTED[n]
  if f == nil then
    f = '1 %d' .. string.rep(' %d', n)
    ADMITTED[n] = f
  end
  return string.format(f, now, unpack(USED, 1, n))
end

-- One admission: its `n` items from KEYS[k + 1] on, its records from `pos` in ARGV[1], its
-- string fields from ARGV[a] on. Returns its reply line, the next `pos` and the next `a`.
local function admit(k, n, pos, a)
  for i = 1, n do
    local m
    KIND[i], COST[i], CAP[i], P1[i], P2[i], m, pos = struct.unpack('<c1ddddd', ARGV[1], pos)
    KEY[i] = KEYS[k + i]
    SHARE[i] = nil
    if KIND[i] == 'k' then
      P2[i] = ARGV[a]
    elseif m > 0 then
      local sh = {group = tonumber(ARGV[a]), borrow = ARGV[a + 1] == '1',
        amount = tonumber(ARGV[a + 2]), fields = {}, fracs = {}}
      for j = a + 3, a + m - 1, 2 do
        sh.fields[#sh.fields + 1] = ARGV[j]
        sh.fracs[#sh.fracs + 1] = tonumber(ARGV[j + 1])
      end
      SHARE[i] = sh
    end
    a = a + m
  end

  local latest, latest_i, release_i = nil, nil, nil
  for i = 1, n do
    local kind, cost, cap, p1, p2, key = KIND[i], COST[i], CAP[i], P1[i], P2[i], KEY[i]
    local fit, at
    if kind == 'r' then fit, at = rolling(key, cost, cap, p1, p2)
    elseif kind == 'b' then fit, at = bucket(key, cost, cap, p1, p2)
    elseif kind == 'c' then
      local used
      fit, at, used = calendar(key, cost, cap, p1, p2)
      USED[i] = used
      local sh = SHARE[i]
      if sh ~= nil and fit ~= 'stale' and fit ~= 'never' then
        local s = share_check(key, used, cost, sh)
        if s == 'never' then fit = 'never'
        elseif s == 'later' then fit, at = 'at', p2 end
      end
    else fit = concurrency(key, cap) end
    if fit == 'stale' then return reply({3, now}), pos, a end
    if fit == 'never' then return reply({2, i, now}), pos, a end
    if fit == 'at' and (latest == nil or at > latest) then latest, latest_i = at, i end
    if fit == 'release' and release_i == nil then release_i = i end
  end
  if release_i ~= nil or latest ~= nil then
    return reply({0, latest or now, release_i or latest_i, release_i and 1 or 0, now}), pos, a
  end

  for i = 1, n do
    local kind, cost, p1, p2, key = KIND[i], COST[i], P1[i], P2[i], KEY[i]
    local used = 0
    if kind == 'r' then
      local c = state[key]
      if c.cur == 0 then c.grew = true end
      c.cur, c.sum = c.cur + cost, c.sum + cost
      mark(key, c)
      used = c.sum
    elseif kind == 'b' then
      local c = state[key]
      c.level = c.level - cost
      mark(key, c)
      used = p2 - c.level
    elseif kind == 'c' then
      local c = state[key]
      c.used = USED[i] + cost
      c.ttl = math.ceil((p2 - now) / 1000) + MARGIN
      mark(key, c)
      used = c.used
      local sh = SHARE[i]
      if sh ~= nil then
        redis.call('HINCRBYFLOAT', key .. ':g', sh.fields[sh.group], cost)
        redis.call('PEXPIRE', key .. ':g', c.ttl)
      end
    else
      redis.call('ZADD', key, now + p1, p2)
      redis.call('PEXPIRE', key, math.ceil(p1 / 1000) + MARGIN)
    end
    USED[i] = math.floor(used * 1000 + 0.5)
  end
  return admitted_line(n), pos, a
end

local lines, k, pos, a = {}, 0, 1, 2
while pos <= #ARGV[1] do
  local n
  n, pos = struct.unpack('<d', ARGV[1], pos)
  lines[#lines + 1], pos, a = admit(k, n, pos, a)
  k = k + n
end
for _, key in ipairs(dirty) do write(key) end
return table.concat(lines, '\n')
