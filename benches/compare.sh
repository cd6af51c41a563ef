#!/usr/bin/env bash
# Performance comparison of quota-proxy against nginx, Squid, tinyproxy and mitmproxy on
# every SPEC §13 row, following BENCHMARKING.md; results in docs/performance.md.
#
#   bash benches/compare.sh            # full: every SPEC §13 row (~20 min)
#   bash benches/compare.sh --quick    # smoke run: fewer, shorter rounds (~6 min)
#   COMPARE_SECTIONS="plain tls sse redis memory criterion accuracy"   # default: all
#
# Needs root (apt-get, the TLS upstream on port 443, bench names in /etc/hosts, which are
# removed again on exit) and 2 cores.
#
# Layout: the proxy under test runs alone on core 0 with one worker (quota-proxy with
# TOKIO_WORKER_THREADS=1, nginx worker_processes 1, Squid workers 1); the load generator and
# the mock upstream (examples/bench_upstream.rs, one tokio worker) share core 1.
#
# Targets: direct (load generator -> upstream), qp_forward (quota-proxy, absolute-form),
# qp_route (quota-proxy route mode, origin-form /bench/...), qp_quotas (forward mode
# through a second quota-proxy whose provider has three request limits that never bind),
# hyper_bare (examples/bare_proxy.rs: the least a forward proxy on tokio + hyper 1 does, the
# floor for quota-proxy's stack), nginx (reverse proxy with upstream keep-alive), squid
# (forward proxy, no cache, no logs),
# tinyproxy (forward proxy; it closes every client connection, so only in new_conn).
#
# Scenarios, each: warm-up of 2 s per target, then N rounds, A B C D E in odd rounds and
# E D C B A in even ones (a drift of the machine's speed within a round then favours
# neither side of a ratio across rounds):
#   keepalive   wrk, 50 keep-alive connections, saturation: requests/s, CPU/request
#   equal_load  wrk, 50 keep-alive connections, every target paced at one rate: half the
#               median saturation rate of quota-proxy with quotas on in keepalive (so
#               nginx and the floor serve exactly the load quota-proxy does; SPEC §13's
#               primary figure is CPU/request at equal load). Squid is left out: at its
#               saturation, about that rate, it would no longer carry an equal load.
#   fixed_rate  wrk paced at 2000 req/s (benches/compare/wrk.lua): p50/p99 over direct,
#               CPU/request at equal load
#   new_conn    hey -disable-keepalive at 1000 req/s: CPU/request with a TCP connection per
#               request (fixed rate: hey itself saturates core 1 near 5k conn/s, and a
#               slower rate keeps TIME_WAIT sockets in check)
# Every benchmark process runs at nice -15 (COMPARE_NICE) to hold its core against other
# builds on this shared machine. CPU/request is the run time of the proxy's
# threads (/proc/PID/task/TID/schedstat, in nanoseconds; threads that come and go during a
# run in 10 ms clock ticks) over the run divided by the requests the load generator
# completed; utime and stime (/proc/PID/stat, clock ticks) give the kernel's share.
# Steal time is read from /proc/stat for each round; rounds above 2% are dropped. Ratios
# are taken within a round, then the median over the kept rounds.
#
# Then the other SPEC §13 rows (benches/compare/extra.sh): intercepted HTTPS (keep-alive
# and a new connection per request, vs quota-proxy's own blind tunnel and mitmdump; the
# first connection to a new host), SSE per-event latency (vs nginx with proxy_buffering off
# and the bare hyper proxy), the Redis backend with 2 replicas, memory (idle, and per idle
# connection with 10,000 held), the in-process figures (quota decision vs governor in
# DECISION_ROUNDS runs of benches/decision_pairs.rs on core 0, criterion's leaf minting), and
# accuracy (benches/compare/accuracy.py: one proxy and two Redis replicas offered twice a limit,
# judged at an upstream enforcing the same limit).
#
# Output: a table on stdout and the same as JSON in benches/results/compare-<date>.json.
# Installs nginx-light (or nginx), squid, tinyproxy, wrk, hey, redis and openssl with
# apt-get when missing (mitmproxy with pip in a venv under target/), and never leaves their
# system services running. Every process started here is stopped on exit.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HELPERS="$ROOT/benches/compare"

ROUNDS=6          # an even number: as many rounds in each order
DURATION=4        # seconds per target per round
WARMUP=2          # seconds per target before the rounds of each scenario
MAX_STEAL_PCT=2
KEEPALIVE_CONNS=50
FIXED_RATE=2000   # req/s, scenario fixed_rate
FIXED_CONNS=20
EQUAL_RATE_FALLBACK=20000 # req/s, scenario equal_load when keepalive measured no rate
NEWCONN_RATE=1000 # req/s, scenario new_conn (hey -q is per worker: rate = workers x q)
NEWCONN_WORKERS=10
QUICK=false
TLS_ROUNDS=4      # intercepted HTTPS rounds (keep-alive and new connection), order alternating
TLS_DURATION=4
TLS_NEW_HOSTS=7   # first connections to new intercepted hosts
SSE_ROUNDS=3
SSE_EVENTS=200
SSE_GAP_MS=5
REDIS_ROUNDS=3
MEM_CONNS=10000
CRIT_TIME=2       # criterion measurement seconds per bench
DECISION_ROUNDS=5 # the decision row: runs of benches/decision_pairs.rs, each of
DECISION_PAIRS=2000 # pairs of 2,048 admissions and 2,048 governor checks (~0.1 ms each)
ACC_LIMIT=100     # accuracy: a limit of ACC_LIMIT requests per ACC_WINDOW_S s, offered at
ACC_WINDOW_S=1    # twice that for ACC_SECONDS s in each of its four scenarios
ACC_SECONDS=8
CRIT_FILTER=""    # criterion name filter (empty: every bench of both files)
# Priority of the measurements (proxies, upstream, load generators). The machine is shared
# with other builds that nothing keeps off core 0; a higher priority (lower nice) lets the
# process under test take its core back at once instead of queueing behind a compiler,
# which steadies latency and requests/s. The same for every peer. It is set on the
# measuring session's autogroup (see measure_in_own_sched_group) and on each process.
# COMPARE_NICE=0 disables it.
NICE=${COMPARE_NICE:--15}
# Prefixes that start a process pinned to a core (nice and taskset exec the command, so
# $! is the process itself).
ON_CORE0=(nice -n "$NICE" taskset -c 0)
ON_CORE1=(nice -n "$NICE" taskset -c 1)

# COMPARE_SECTIONS picks sections (default: all), e.g. COMPARE_SECTIONS="tls sse".
SECTIONS=${COMPARE_SECTIONS:-plain tls sse redis memory criterion accuracy}
section() { [[ " $SECTIONS " == *" $1 "* ]]; }

usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

ARGS=("$@")
for arg in "$@"; do
  case "$arg" in
    --quick)
      QUICK=true; ROUNDS=2; DURATION=2; WARMUP=1; TLS_ROUNDS=1; TLS_DURATION=2
      TLS_NEW_HOSTS=3; SSE_ROUNDS=1; SSE_EVENTS=50; REDIS_ROUNDS=1; MEM_CONNS=${MEM_CONNS_QUICK:-2000}; CRIT_TIME=1; DECISION_ROUNDS=1; DECISION_PAIRS=300; ACC_SECONDS=4
      CRIT_FILTER='provider_handle_admit_settle_3_limits$|mint_server_config|rcgen_p256|cache_hit'
      ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown argument $arg" >&2; usage >&2; exit 2 ;;
  esac
done

log() { printf '[compare %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

WORK=$(mktemp -d /tmp/qp-compare.XXXXXX)
chmod 755 "$WORK"   # Squid and nginx workers drop root and must reach their files
STARTED_PIDS=()

# ---------------------------------------------------------------------------------------
# Cleanup: stop what this script started (by PID), then remove the temp dir.
# ---------------------------------------------------------------------------------------
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${STARTED_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]}"; do
    for _ in $(seq 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not stop on SIGTERM: SIGKILL"
      # nginx/squid children first, so none outlives its parent
      for child in $(child_pids "$pid"); do kill -KILL "$child" 2>/dev/null || true; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  [[ "${COMPARE_STAGE:-}" == measure ]] || stop_system_services
  declare -F tls_hosts_remove >/dev/null && tls_hosts_remove
  if [[ $status -ne 0 && $status -ne 130 && -d "$WORK" ]]; then
    log "failed; logs kept in $WORK"
  else
    [[ $status -eq 130 ]] && log "interrupted"
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

child_pids() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------
APT_UPDATED=false
apt_install() {
  if ! $APT_UPDATED; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$WORK/apt.log" 2>&1 \
      || die "apt-get update failed (see $WORK/apt.log)"
    APT_UPDATED=true
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >>"$WORK/apt.log" 2>&1
}

ensure_tools() {
  command -v nginx >/dev/null || apt_install nginx-light || apt_install nginx \
    || die "cannot install nginx"
  command -v squid >/dev/null || apt_install squid || die "cannot install squid"
  command -v wrk >/dev/null || apt_install wrk || die "cannot install wrk"
  command -v hey >/dev/null || apt_install hey || die "cannot install hey"
  command -v tinyproxy >/dev/null || apt_install tinyproxy || die "cannot install tinyproxy"
  command -v redis-server >/dev/null || apt_install redis-server || die "cannot install redis"
  command -v redis-benchmark >/dev/null || apt_install redis-tools || die "cannot install redis-tools"
  command -v openssl >/dev/null || apt_install openssl || die "cannot install openssl"
  python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv \
    || die "cannot install python3-venv"
  command -v curl >/dev/null || apt_install curl || die "cannot install curl"
  command -v python3 >/dev/null || apt_install python3 || die "cannot install python3"
  command -v taskset >/dev/null || apt_install util-linux || die "cannot install taskset"
  # Debian's postinst starts the services (unless policy-rc.d forbids it): stop them.
  stop_system_services
}

# Stops the Debian-packaged nginx and squid services if they run (identified by their
# system pid files, never by process name).
stop_system_services() {
  local svc pidfile pid
  # (Never Redis: a shared redis-server may serve others on this machine.)
  for svc in nginx squid tinyproxy; do
    for pidfile in "/run/$svc.pid" "/var/run/$svc.pid"; do
      [[ -s "$pidfile" ]] || continue
      pid=$(tr -dc '0-9' <"$pidfile")
      [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || continue
      log "stopping the system $svc service (pid $pid)"
      service "$svc" stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    done
  done
}

# ---------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------
QP_BIN="$ROOT/target/release/quota-proxy"
UP_BIN="$ROOT/target/release/examples/bench_upstream"
BARE_BIN="$ROOT/target/release/examples/bare_proxy"
RTT_BIN="$ROOT/target/release/examples/redis_rtt"

build() {
  log "cargo build --release (quota-proxy, bench_upstream, bare_proxy, redis_rtt, criterion benches)"
  (cd "$ROOT" && cargo build --release --bin quota-proxy --example bench_upstream \
    --example bare_proxy --example redis_rtt \
    && cargo bench --no-run --bench quota --bench hot_path --bench decision_pairs) \
    >"$WORK/build.log" 2>&1 || die "build failed: $(grep -m5 -A5 '^error' "$WORK/build.log")"
  ensure_mitmdump
}

# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------
# A free loopback port below the ephemeral range (so load-generator sockets cannot take
# it between this check and the bind): connect() refused means nobody listens.
free_port() {
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

wait_port() { # ADDR NAME PID
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || die "$2 exited at startup (logs in $WORK)"
    sleep 0.1
  done
  die "$2 does not listen on $1 (logs in $WORK)"
}

# Waits for a line matching REGEX in FILE written by PID; prints the line.
wait_line() { # FILE REGEX NAME PID
  for _ in $(seq 100); do
    if grep -qE "$2" "$1" 2>/dev/null; then
      grep -m1 -E "$2" "$1"
      return
    fi
    kill -0 "$4" 2>/dev/null || die "$3 exited at startup: $(tail -3 "$1.err" 2>/dev/null)"
    sleep 0.1
  done
  die "$3 did not start (see $1)"
}

start_upstream() {
  "${ON_CORE1[@]}" "$UP_BIN" --listen 127.0.0.1:0 >"$WORK/upstream.out" 2>"$WORK/upstream.out.err" &
  UP_PID=$!
  STARTED_PIDS+=("$UP_PID")
  UP_ADDR=$(wait_line "$WORK/upstream.out" '^listening ' bench_upstream "$UP_PID" | awk '{print $2}')
  log "upstream      $UP_ADDR (pid $UP_PID, core 1)"
}

# quota-proxy with one provider whose hosts and route both lead to the mock upstream:
# absolute-form requests for http://UPSTREAM/ are forward mode, /bench/... route mode.
# "off" has no limits; "on" adds three request limits (second, minute, day) far above
# any rate reached here, so every call is checked against all three and none waits.
# Sets QP_* (off) or QPQ_* (on): PID, ADDR, ADMIN.
start_quota_proxy() { # off|on
  local name=quota-proxy-quotas-$1 conf="$WORK/quota-proxy-$1.toml" line pid addr admin
  cat >"$conf" <<EOF
[proxy]
listen = "127.0.0.1:0"
allow_private_destinations = true
max_connections = 10000

[admin]
listen = "127.0.0.1:0"

[state]
backend = "memory"

[providers.bench]
hosts = ["$UP_ADDR"]
route = "/bench"
upstream = "http://$UP_ADDR"
EOF
  if [[ $1 == on ]]; then
    cat >>"$conf" <<EOF

[[providers.bench.limits]]
name = "per-second"
unit = "requests"
amount = 100000000
window = "1s"

[[providers.bench.limits]]
name = "per-minute"
unit = "requests"
amount = 1000000000
window = "1m"

[[providers.bench.limits]]
name = "per-day"
unit = "requests"
amount = 100000000000
window = "1d"
EOF
  fi
  "${ON_CORE0[@]}" env TOKIO_WORKER_THREADS=1 "$QP_BIN" run -c "$conf" \
    >"$WORK/$name.out" 2>"$WORK/$name.out.err" &
  pid=$!
  STARTED_PIDS+=("$pid")
  line=$(wait_line "$WORK/$name.out" 'listening proxy=' "$name" "$pid")
  addr=$(sed -E 's/.*proxy=([^ ]+).*/\1/' <<<"$line")
  admin=$(sed -E 's/.*admin=([^ ]+).*/\1/' <<<"$line")
  if [[ $1 == on ]]; then
    QPQ_PID=$pid QPQ_ADDR=$addr QPQ_ADMIN=$admin
  else
    QP_PID=$pid QP_ADDR=$addr QP_ADMIN=$admin
  fi
  log "quota-proxy   $addr admin $admin, quotas $1 (pid $pid, core 0)"
}

start_nginx() {
  local dir="$WORK/nginx"
  mkdir -p "$dir/tmp"
  chmod 777 "$dir/tmp"
  NGX_ADDR="127.0.0.1:$(free_port)"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    upstream bench_upstream {
        server $UP_ADDR;
        keepalive 64;               # reuse upstream connections, as quota-proxy does
    }
    server {
        listen $NGX_ADDR;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location /sse {             # the SSE peer: events passed on as they come
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
  # -e: nginx opens the compiled-in error log before reading the config; keep it here.
  "${ON_CORE0[@]}" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' \
    >"$dir/out" 2>&1 &
  NGX_PID=$!
  STARTED_PIDS+=("$NGX_PID")
  wait_port "$NGX_ADDR" nginx "$NGX_PID"
  log "nginx         $NGX_ADDR (pid $NGX_PID + worker $(child_pids "$NGX_PID" | xargs), core 0)"
}

start_squid() {
  local dir="$WORK/squid"
  mkdir -p "$dir"
  SQ_ADDR="127.0.0.1:$(free_port)"
  cat >"$dir/squid.conf" <<EOF
workers 1
http_port $SQ_ADDR
visible_hostname bench-squid
# Loopback-only listener: allow every client and destination (including 127.0.0.1).
http_access allow all
# No caching: every request goes to the upstream, as through quota-proxy.
cache deny all
cache_mem 0 MB
# No logs.
access_log none
cache_store_log none
cache_log $dir/cache.log
pid_filename $dir/squid.pid
coredump_dir $dir
shutdown_lifetime 0 seconds
max_filedescriptors 16384
via off
forwarded_for transparent
EOF
  chown -R proxy: "$dir" 2>/dev/null || chmod -R 777 "$dir"
  # -N: no daemon and no kid processes: one process serves everything.
  "${ON_CORE0[@]}" squid -N -f "$dir/squid.conf" >"$dir/out" 2>&1 &
  SQ_PID=$!
  STARTED_PIDS+=("$SQ_PID")
  wait_port "$SQ_ADDR" squid "$SQ_PID"
  log "squid         $SQ_ADDR (pid $SQ_PID, core 0)"
}

start_bare() {
  local line
  "${ON_CORE0[@]}" env TOKIO_WORKER_THREADS=1 "$BARE_BIN" --listen 127.0.0.1:0 \
    >"$WORK/bare.out" 2>"$WORK/bare.out.err" &
  BARE_PID=$!
  STARTED_PIDS+=("$BARE_PID")
  line=$(wait_line "$WORK/bare.out" '^listening ' bare_proxy "$BARE_PID")
  BARE_ADDR=$(awk '{print $2}' <<<"$line")
  log "hyper bare    $BARE_ADDR (pid $BARE_PID, core 0)"
}

start_tinyproxy() {
  local dir="$WORK/tinyproxy"
  mkdir -p "$dir"
  TP_ADDR="127.0.0.1:$(free_port)"
  cat >"$dir/tinyproxy.conf" <<EOF
User nobody
Group nogroup
Port ${TP_ADDR##*:}
Listen 127.0.0.1
Timeout 30
MaxClients 2000
LogLevel Critical
Allow 127.0.0.1
DisableViaHeader Yes
EOF
  # -d: stay in the foreground.
  "${ON_CORE0[@]}" tinyproxy -d -c "$dir/tinyproxy.conf" >"$dir/out" 2>&1 &
  TP_PID=$!
  STARTED_PIDS+=("$TP_PID")
  wait_port "$TP_ADDR" tinyproxy "$TP_PID"
  log "tinyproxy     $TP_ADDR (pid $TP_PID, core 0)"
}

# Re-pins every thread of a process tree (BENCHMARKING.md: taskset -acp).
pin_tree() { # CORE PID
  local p
  for p in "$2" $(child_pids "$2"); do
    taskset -acp "$1" "$p" >/dev/null
  done
}

# quota-proxy reads TOKIO_WORKER_THREADS: with 1 it runs tokio's current-thread scheduler on
# its main thread; with more, that many tokio workers. Tokio gives its blocking-pool threads
# the workers' name (tokio-rt-worker, or tokio-runtime-w[orker] in older releases), and the
# blocking pool may start a thread at any time (state saves use spawn_blocking), so a
# thread count cannot prove there is one worker. What can: after the run, only one thread
# should have done any real work.
qp_thread_names() { # PID
  cat /proc/"$1"/task/*/comm | sort | uniq -c \
    | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }'
}

# Per-thread CPU ticks, one "NAME TICKS" line per thread.
qp_thread_ticks() { # PID
  local t stat rest f
  for t in /proc/"$1"/task/*; do
    stat=$(<"$t/stat")
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo "$(<"$t/comm") $((f[11] + f[12]))"
  done
}

check_qp_workers() {
  local pid label ticks busy total
  QP_THREADS=""
  QP_BUSY_WORKERS=()
  for pid in "$QP_PID" "$QPQ_PID"; do
    label="quota-proxy (quotas $([[ $pid == "$QP_PID" ]] && echo off || echo on))"
    ticks=$(qp_thread_ticks "$pid")
    total=$(awk '{ s += $2 } END { print s + 0 }' <<<"$ticks")
    # A thread with more than 2% of the process's CPU counts as a working runtime thread.
    busy=$(awk -v t="$total" '$2 > 0.02 * t { n++ } END { print n + 0 }' <<<"$ticks")
    QP_BUSY_WORKERS+=("$busy")
    QP_THREADS+="$label: $(qp_thread_names "$pid"), CPU ticks per thread: $(xargs <<<"$ticks"); "
    if [[ $busy -eq 1 ]]; then
      log "$label: one runtime thread did the work ($(xargs <<<"$ticks") ticks)"
    else
      log "WARNING: $label: $busy runtime threads did work ($(xargs <<<"$ticks") ticks)"
      NOTES+=("$label: $busy threads did work despite TOKIO_WORKER_THREADS=1")
    fi
  done
}

# Requests one URL through each path and checks the fixed body came back.
probe_targets() {
  local want body t
  want=$(curl -fsS "http://$UP_ADDR/") || die "upstream does not answer"
  for t in "${TARGETS[@]}"; do
    local args=()
    read -r -a args <<<"$(curl_args "$t")"
    body=$(curl -fsS --max-time 5 "${args[@]}") || die "$t: probe failed (curl ${args[*]})"
    [[ "$body" == "$want" ]] || die "$t: unexpected body: $body"
  done
  # The forward path must be matched to the provider, not tunneled as unmatched traffic,
  # and with quotas on each call must be counted by the limits.
  local metrics
  metrics=$(curl -fsS "http://$QP_ADMIN/metrics") || die "quota-proxy admin /metrics failed"
  grep -q 'provider="bench",outcome="forwarded"' <<<"$metrics" \
    || die "quota-proxy did not count the probes as forwarded by provider \"bench\""
  metrics=$(curl -fsS "http://$QPQ_ADMIN/metrics") || die "quota-proxy admin /metrics failed"
  grep -qE 'quota_proxy_limit_used\{provider="bench",limit="per-minute"[^}]*\} [1-9]' <<<"$metrics" \
    || die "quota-proxy (quotas on) did not count the probe against its limits"
  log "probes: every target returns the upstream's body; the quotas-on proxy counts calls"
}

# ---------------------------------------------------------------------------------------
# Targets: how each is addressed, and which processes' CPU counts
# ---------------------------------------------------------------------------------------
TARGETS=(direct qp_forward qp_route qp_quotas hyper_bare nginx squid tinyproxy)

# tinyproxy closes the client connection after every request: new_conn only.
scenario_targets() {
  case "$1" in
    new_conn) echo "${TARGETS[@]}" ;;
    equal_load) local t=("${TARGETS[@]/tinyproxy/}"); echo "${t[@]/squid/}" ;;
    *) echo "${TARGETS[@]/tinyproxy/}" ;;
  esac
}

target_pids() {
  case "$1" in
    direct) ;;                            # no proxy: no CPU figure
    qp_forward|qp_route) echo "$QP_PID" ;;
    qp_quotas) echo "$QPQ_PID" ;;
    hyper_bare) echo "$BARE_PID" ;;
    nginx) echo "$NGX_PID" $(child_pids "$NGX_PID") ;;
    squid) echo "$SQ_PID" $(child_pids "$SQ_PID") ;;
    tinyproxy) echo "$TP_PID" $(child_pids "$TP_PID") ;;
  esac
}

# "URL PROXY": where the client connects, and the forward proxy (empty: origin-form).
target_url() {
  case "$1" in
    direct) echo "http://$UP_ADDR/" ;;
    qp_forward) echo "http://$UP_ADDR/ http://$QP_ADDR" ;;
    qp_route) echo "http://$QP_ADDR/bench/" ;;
    qp_quotas) echo "http://$UP_ADDR/ http://$QPQ_ADDR" ;;
    hyper_bare) echo "http://$UP_ADDR/ http://$BARE_ADDR" ;;
    nginx) echo "http://$NGX_ADDR/" ;;
    squid) echo "http://$UP_ADDR/ http://$SQ_ADDR" ;;
    tinyproxy) echo "http://$UP_ADDR/ http://$TP_ADDR" ;;
  esac
}

curl_args() {
  local url proxy
  read -r url proxy <<<"$(target_url "$1")"
  if [[ -n "$proxy" ]]; then echo "-x $proxy $url"; else echo "$url"; fi
}

# ---------------------------------------------------------------------------------------
# Load generators. Each prints one line:
#   requests=N duration_us=N p50_us=N p99_us=N errors=N non2xx=N
# ---------------------------------------------------------------------------------------
run_wrk() { # TARGET DURATION_S CONNS RATE(0 = saturate)
  local url proxy out
  read -r url proxy <<<"$(target_url "$1")"
  local conn_url=$url proxy_url=""
  if [[ -n "$proxy" ]]; then conn_url="$proxy/"; proxy_url=$url; fi
  out=$("${ON_CORE1[@]}" env WRK_PROXY_URL="$proxy_url" WRK_RATE="$4" \
    wrk -t1 -c"$3" -d"$2s" --timeout 5s -s "$HELPERS/wrk.lua" "$conn_url" 2>&1) \
    || die "wrk failed on $1: $out"
  grep -m1 '^RESULT ' <<<"$out" | sed 's/^RESULT //; s/ mean_us=[0-9]*//' \
    || die "wrk printed no RESULT on $1: $out"
}

run_hey_newconn() { # TARGET DURATION_S
  local url proxy csv="$WORK/hey.csv"
  read -r url proxy <<<"$(target_url "$1")"
  local args=(-z "$2s" -c "$NEWCONN_WORKERS" -q $((NEWCONN_RATE / NEWCONN_WORKERS))
    -disable-keepalive -t 5 -o csv)
  [[ -n "$proxy" ]] && args+=(-x "$proxy")
  "${ON_CORE1[@]}" hey "${args[@]}" "$url" >"$csv" 2>"$WORK/hey.err" \
    || die "hey failed on $1: $(tail -3 "$WORK/hey.err")"
  # CSV rows: response-time(s),dns+dialup,dns,req-write,resp-delay,resp-read,status,offset.
  # hey lists completed requests only (transport errors show as a shortfall in requests)
  # and prints times with 0.1 ms resolution.
  local n bad p50 p99
  n=$(($(wc -l <"$csv") - 1))
  if [[ $n -le 0 ]]; then
    echo "requests=0 duration_us=$(($2 * 1000000)) p50_us=0 p99_us=0 errors=0 non2xx=0"
    return
  fi
  bad=$(tail -n +2 "$csv" | awk -F, '$7 < 200 || $7 > 299 { b++ } END { print b + 0 }')
  tail -n +2 "$csv" | cut -d, -f1 | sort -g >"$csv.sorted"
  p50=$(pct_of_sorted "$csv.sorted" "$n" 50)
  p99=$(pct_of_sorted "$csv.sorted" "$n" 99)
  echo "requests=$n duration_us=$(($2 * 1000000)) p50_us=$p50 p99_us=$p99 errors=0 non2xx=$bad"
}

# The P-th percentile (nearest rank) of N sorted values in seconds, printed in µs.
pct_of_sorted() { # FILE N P
  local rank=$((($2 * $3 + 99) / 100))
  [[ $rank -ge 1 ]] || rank=1
  sed -n "${rank}p" "$1" | awk '{ printf "%d", $1 * 1e6 + 0.5 }'
}

load() { # SCENARIO TARGET DURATION_S
  case "$1" in
    keepalive) run_wrk "$2" "$3" "$KEEPALIVE_CONNS" 0 ;;
    fixed_rate) run_wrk "$2" "$3" "$FIXED_CONNS" "$FIXED_RATE" ;;
    equal_load) run_wrk "$2" "$3" "$KEEPALIVE_CONNS" "$EQUAL_RATE" ;;
    new_conn) run_hey_newconn "$2" "$3" ;;
  esac
}

# ---------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)

# "TOTAL SYSTEM": utime + stime, and stime alone (clock ticks), summed over PIDs; field
# positions counted after the "(comm)" field, which may itself contain spaces.
cpu_ticks() {
  local total=0 sys=0 p stat rest f
  for p in "$@"; do
    stat=$(<"/proc/$p/stat") || continue
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    total=$((total + f[11] + f[12]))
    sys=$((sys + f[12]))
  done
  echo "$total $sys"
}

# "TOTAL STEAL" ticks from the "cpu" line of /proc/stat (all cores).
proc_stat() {
  awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9; exit }' /proc/stat
}

# One line per thread of PIDS: "TID RUN_NS WAIT_NS TICKS", the nanoseconds it ran on a CPU
# and spent runnable but waiting for one (/proc/PID/task/TID/schedstat: the scheduler's own
# accounting), and its utime + stime in clock ticks.
thread_times() {
  local p t a b c stat rest f
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      read -r a b c <"$t/schedstat" 2>/dev/null || continue
      stat=$(<"$t/stat") 2>/dev/null || continue
      rest=${stat##*) }
      read -r -a f <<<"$rest"
      echo "${t##*/} $a $b $((f[11] + f[12]))"
    done
  done
}

# The CPU time of a run, in µs, from two thread_times snapshots and the processes' tick
# delta: threads alive at both ends count to the nanosecond; threads born or gone in between
# (tinyproxy's per connection) only in whole ticks, as the process total holds them. Also
# prints the run-queue wait of the threads alive at both ends, in µs.
cpu_us_of() { # BEFORE AFTER PROCESS_TICKS_DELTA
  awk -v ticks="$3" -v hz="$CLK_TCK" '
    NR == FNR { run[$1] = $2; wait[$1] = $3; tk[$1] = $4; next }
    ($1 in run) { ns += $2 - run[$1]; w += $3 - wait[$1]; t += $4 - tk[$1] }
    END {
      rest = ticks - t; if (rest < 0) rest = 0
      printf "%d %d\n", ns / 1000 + rest * 1e6 / hz, w / 1000
    }' "$1" "$2"
}

SAMPLES="$WORK/samples.jsonl"
# shellcheck source=compare/upstream_cert.sh
source "$HELPERS/upstream_cert.sh"
# shellcheck source=compare/extra.sh
source "$HELPERS/extra.sh"

# Runs one target once and appends a sample (ROUND 0 = warm-up, not recorded).
measure() { # SCENARIO ROUND TARGET DURATION_S
  local pids c0 c1 s0 s1 result cpu="null" sys="null" run_us="null" wait_us="null"
  read -r -a pids <<<"$(target_pids "$3")"
  read -r c0 s0 <<<"$(cpu_ticks "${pids[@]}")"
  thread_times "${pids[@]}" >"$WORK/threads.0"
  result=$(load "$1" "$3" "$4")
  read -r c1 s1 <<<"$(cpu_ticks "${pids[@]}")"
  thread_times "${pids[@]}" >"$WORK/threads.1"
  if [[ ${#pids[@]} -gt 0 ]]; then
    cpu=$((c1 - c0))
    sys=$((s1 - s0))
    read -r run_us wait_us <<<"$(cpu_us_of "$WORK/threads.0" "$WORK/threads.1" "$cpu")"
  fi
  [[ "$2" -eq 0 ]] && return
  # requests=1 duration_us=2 ... -> "requests": 1, "duration_us": 2, ...
  local fields
  fields=$(sed -E 's/([a-z0-9_]+)=/"\1": /g; s/ "/, "/g' <<<"$result")
  printf '{"kind": "run", "scenario": "%s", "round": %d, "target": "%s", %s, "cpu_ticks": %s, "sys_ticks": %s, "clk_tck": %d, "run_us": %s, "runq_wait_us": %s}\n' \
    "$1" "$2" "$3" "$fields" "$cpu" "$sys" "$CLK_TCK" "$run_us" "$wait_us" >>"$SAMPLES"
  local rps
  rps=$(awk -v r="$result" 'BEGIN { split(r, a, /[ =]/); printf "%.0f", a[2] / (a[4] / 1e6) }')
  log "  $1 round $2 $3: $rps req/s, $result, proxy cpu ${run_us} us (ticks $cpu), run-queue wait ${wait_us} us"
}

# Half the median saturation rate of quota-proxy with quotas on in this run's keepalive
# rounds (EQUAL_RATE_FALLBACK when there are none), rounded down to a thousand.
equal_rate() {
  python3 - "$SAMPLES" "$EQUAL_RATE_FALLBACK" <<'EOF'
import json, statistics, sys
rates = []
for line in open(sys.argv[1]):
    o = json.loads(line)
    if o.get("kind") == "run" and o["scenario"] == "keepalive" and o["target"] == "qp_quotas" \
            and o["duration_us"]:
        rates.append(o["requests"] / (o["duration_us"] / 1e6))
rate = statistics.median(rates) / 2 if rates else float(sys.argv[2])
print(max(1000, int(rate // 1000 * 1000)))
EOF
}

run_scenario() { # SCENARIO
  local scen=$1 t r s0 s1 steal targets
  read -r -a targets <<<"$(scenario_targets "$scen")"
  log "scenario $scen: warm-up ${WARMUP}s per target"
  for t in "${targets[@]}"; do measure "$scen" 0 "$t" "$WARMUP"; done
  for r in $(seq "$ROUNDS"); do
    read -r -a s0 <<<"$(proc_stat)"
    round_order "$r" "${targets[@]}"
    for t in "${ORDER[@]}"; do measure "$scen" "$r" "$t" "$DURATION"; done
    read -r -a s1 <<<"$(proc_stat)"
    steal=$(awk -v t="$((s1[0] - s0[0]))" -v s="$((s1[1] - s0[1]))" \
      'BEGIN { printf "%.2f", (t > 0) ? 100 * s / t : 0 }')
    printf '{"kind": "round", "scenario": "%s", "round": %d, "steal_pct": %s}\n' \
      "$scen" "$r" "$steal" >>"$SAMPLES"
    log "scenario $scen round $r: steal $steal%"
  done
}

versions_json() {
  local nginx_v squid_v wrk_v hey_v rustc_v
  nginx_v=$(nginx -v 2>&1 | sed 's/.*: //')
  squid_v=$(squid -v | head -1 | sed 's/.*Version //')
  wrk_v=$(dpkg-query -W -f '${Version}' wrk 2>/dev/null || echo unknown)
  hey_v=$(dpkg-query -W -f '${Version}' hey 2>/dev/null || echo unknown)
  rustc_v=$(rustc --version 2>/dev/null || echo unknown)
  printf '{"nginx": "%s", "squid": "%s", "wrk": "%s", "hey": "%s", "rustc": "%s", "quota_proxy_commit": "%s"}' \
    "$nginx_v" "$squid_v" "$wrk_v" "$hey_v" "$rustc_v" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo '+dirty')"
}

# Run parameters and environment, for report.py (values pass through the environment
# so no quoting can break the JSON).
write_meta() {
  local notes=""
  [[ ${#NOTES[@]} -gt 0 ]] && notes=$(printf '%s\n' "${NOTES[@]}")
  M_DATE="$RUN_DATE" M_QUICK="$QUICK" M_ROUNDS="$ROUNDS" M_DURATION="$DURATION" \
  M_WARMUP="$WARMUP" M_MAX_STEAL="$MAX_STEAL_PCT" M_KA_CONNS="$KEEPALIVE_CONNS" \
  M_FIXED_CONNS="$FIXED_CONNS" M_FIXED_RATE="$FIXED_RATE" M_EQUAL_RATE="${EQUAL_RATE:-0}" M_NC_WORKERS="$NEWCONN_WORKERS" \
  M_NC_RATE="$NEWCONN_RATE" M_NICE="$NICE" M_QP_THREADS="$QP_THREADS" \
  M_QP_WORKERS="${QP_BUSY_WORKERS[*]}" \
  M_VERSIONS="$(versions_json)" M_NOTES="$notes" \
  python3 - "$WORK/meta.json" <<'EOF'
import json, os, platform, sys
e = os.environ

def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None

def cpu_model():
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None

# How an idle virtual CPU waits: a guest that halts at once (no halt polling) pays the
# hypervisor's wake-up on every hop of a request at a low rate (the 2k req/s rows).
def idle():
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    return {
        "cpuidle_driver": read("/sys/devices/system/cpu/cpuidle/current_driver"),
        "guest_halt_poll_ns": int(poll) if poll and poll.isdigit() else None,
    }

meta = {
    "date": e["M_DATE"],
    "quick": e["M_QUICK"] == "true",
    "rounds": int(e["M_ROUNDS"]),
    "duration_s": int(e["M_DURATION"]),
    "warmup_s": int(e["M_WARMUP"]),
    "max_steal_pct": float(e["M_MAX_STEAL"]),
    "load": {
        "keepalive": {"tool": "wrk -t1", "connections": int(e["M_KA_CONNS"]), "rate": "saturation"},
        "fixed_rate": {"tool": "wrk -t1, paced by benches/compare/wrk.lua",
                       "connections": int(e["M_FIXED_CONNS"]), "rate": int(e["M_FIXED_RATE"])},
        "equal_load": {"tool": "wrk -t1, paced by benches/compare/wrk.lua",
                       "connections": int(e["M_KA_CONNS"]), "rate": int(e["M_EQUAL_RATE"])},
        "new_conn": {"tool": "hey -disable-keepalive", "workers": int(e["M_NC_WORKERS"]),
                     "rate": int(e["M_NC_RATE"])},
    },
    "layout": "proxy under test on core 0 with one worker; load generator + upstream on core 1",
    "nice": int(e["M_NICE"]),
    "qp_threads_at_end": e["M_QP_THREADS"].strip().rstrip(";"),
    "qp_busy_runtime_threads": [int(w) for w in e["M_QP_WORKERS"].split()],
    "kernel": platform.release(),
    "cpus": os.cpu_count(),
    "cpu_model": cpu_model(),
    "idle": idle(),
    "versions": json.loads(e["M_VERSIONS"]),
    "notes": [l for l in e["M_NOTES"].splitlines() if l],
}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=2)
EOF
}

# ---------------------------------------------------------------------------------------
# Linux puts each session in its own "autogroup" and shares a CPU fairly between
# autogroups whatever the nice values inside them: a compiler started from another shell
# would get half of core 0 however nice the proxy is. So the measurements run in a new
# session (setsid) whose autogroup is given nice NICE. Preparing (apt, cargo) stays at the
# caller's priority.
measure_in_own_sched_group() {
  local child
  COMPARE_STAGE=measure setsid --wait bash "${BASH_SOURCE[0]}" "${ARGS[@]}" &
  child=$!
  STARTED_PIDS+=("$child")   # stopped (and so cleans up after itself) if we are
  wait "$child"
}

main() {
  NOTES=()
  QP_THREADS=""
  QP_BUSY_WORKERS=()
  RUN_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  [[ $(nproc) -ge 2 ]] || die "needs 2 cores (proxy on core 0, load on core 1)"
  if [[ "${COMPARE_STAGE:-}" != measure ]]; then
    ensure_tools
    build
    if [[ "$NICE" != 0 && -e /proc/self/autogroup ]] && command -v setsid >/dev/null; then
      measure_in_own_sched_group
      return
    fi
  else
    if echo "$NICE" 2>/dev/null >/proc/self/autogroup; then
      log "measuring in a scheduling group of its own: $(</proc/self/autogroup)"
    else
      log "could not set the autogroup's nice: other sessions share core 0 equally"
      NOTES+=("autogroup nice not set: other processes could take up to half of core 0")
    fi
  fi

  start_upstream
  start_quota_proxy off
  start_quota_proxy on
  start_bare
  start_nginx
  start_squid
  start_tinyproxy
  local pid
  for pid in "$QP_PID" "$QPQ_PID" "$BARE_PID" "$NGX_PID" "$SQ_PID" "$TP_PID"; do
    pin_tree 0 "$pid"
  done
  pin_tree 1 "$UP_PID"
  probe_targets
  log "quota-proxy threads at startup: $(qp_thread_names "$QP_PID") (quotas off)," \
    "$(qp_thread_names "$QPQ_PID") (quotas on)"

  : >"$SAMPLES"
  if section plain; then
    run_scenario keepalive
    EQUAL_RATE=$(equal_rate)
    log "equal load: every target paced at $EQUAL_RATE req/s"
    run_scenario equal_load
    run_scenario fixed_rate
    run_scenario new_conn
    check_qp_workers
  fi

  # The other SPEC §13 rows (benches/compare/extra.sh).
  if section tls; then run_tls; fi
  if section sse; then run_sse; fi
  if section redis; then run_redis; fi
  if section memory; then run_memory; fi
  if section criterion; then run_criterion; fi
  if section accuracy; then run_accuracy; fi

  write_meta
  mkdir -p "$ROOT/benches/results"
  local out
  # UTC date and time: a second run on the same day does not overwrite the first.
  out="$ROOT/benches/results/compare-$(date -u +%Y-%m-%dT%H%M%SZ).json"
  echo
  python3 "$HELPERS/report.py" "$SAMPLES" "$WORK/meta.json" "$out" "$EXTRAS"
  echo
  log "wrote $out"
}

main
