-- wrk script for benches/compare.sh (Debian's wrk runs LuaJIT, so `ffi` is available).
--
-- Environment:
--   WRK_PROXY_URL  absolute URL to request through a forward proxy: wrk always sends
--                  origin-form, so the path becomes the absolute URL and Host its authority.
--   WRK_RATE       requests/s for this wrk thread (run with -t1): paced, not saturating.
--
-- done() prints one machine-readable line:
--   RESULT requests=N duration_us=N p50_us=N p99_us=N mean_us=N errors=N non2xx=N

local proxy_url = os.getenv("WRK_PROXY_URL")
if proxy_url and proxy_url ~= "" then
  wrk.path = proxy_url
  wrk.headers["Host"] = proxy_url:match("^%a+://([^/]+)")
end

local rate = tonumber(os.getenv("WRK_RATE") or "")
if rate and rate > 0 then
  -- Fixed-rate pacing. wrk calls delay() after each response and waits that many whole
  -- milliseconds before the connection sends again. Each call claims the next slot of a
  -- 1/rate schedule shared by the thread's connections, so the rate holds whatever the
  -- latency (given enough connections) and does not drift; requests are due on
  -- millisecond ticks because wrk's timer is in whole ms. Latency is measured by wrk from
  -- the moment the request is written, as hey does.
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } qp_timespec;
    int clock_gettime(int clk_id, qp_timespec *tp);
  ]]
  local ts = ffi.new("qp_timespec")
  local CLOCK_MONOTONIC = 1
  local function now_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local period = 1000 / rate
  local next_slot = nil

  function delay()
    local now = now_ms()
    if next_slot == nil then
      next_slot = now
    end
    next_slot = next_slot + period
    if next_slot < now - 100 then
      -- More than 100 ms behind (the target stalled): don't burst to catch up.
      next_slot = now
    end
    local wait = next_slot - now
    if wait <= 0 then
      return 0
    end
    return math.floor(wait + 0.5)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), math.floor(latency.mean),
    e.connect + e.read + e.write + e.timeout, e.status))
end
