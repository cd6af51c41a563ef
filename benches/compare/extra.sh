# Sourced by benches/compare.sh (needs its helpers and variables): the SPEC §13 rows beyond
# plain HTTP. Each appends result rows to $EXTRAS (JSON lines) for report.py:
#   {"row", "proxy", "peer", "peer_name", "unit", "ratio", "target", "met", "detail"}
# "ratio" is proxy/peer when both exist, or, for rows measured in interleaved rounds, the
# median of the ratios taken within each round (as report.py does for the plain rows: a
# machine's drift between rounds cancels within a round); "met" is null when the row has no
# target.
#
#   tls        intercepted HTTPS through quota-proxy vs its own blind CONNECT tunnel and
#              mitmdump: keep-alive CPU/request, new connection per request CPU/connection,
#              first connection to a new host
#   sse        added per-event delivery latency through the proxy (mock upstream /sse)
#   redis      Redis backend with 2 replicas vs the local backend: round trips per call,
#              added p50 at a fixed rate vs one Redis round trip, saturation req/s
#   memory     RSS idle and per idle keep-alive client connection (10,000 held)
#   criterion  quota decision vs keyed governor; leaf certificate minting (cargo bench)
#   accuracy   driven at twice a limit, one proxy and 2 replicas through Redis, reject and
#              delay modes: overshoot at an upstream enforcing the same limit, share of the
#              permitted throughput used, the upstream's 429s (benches/compare/accuracy.py)

EXTRAS="$WORK/extras.jsonl"
: >"$EXTRAS"

# extra ROW PROXY PEER PEER_NAME UNIT TARGET_TEXT PREDICATE(python, on "v" = ratio or proxy
# figure; empty = none) ON(ratio|proxy) DETAIL [PER_ROUND_RATIOS (space-separated)]
extra() {
  X_ROW="$1" X_PROXY="$2" X_PEER="$3" X_PEER_NAME="$4" X_UNIT="$5" X_TARGET="$6" X_PRED="$7" \
  X_ON="$8" X_DETAIL="${9:-}" X_ROUNDS="${10:-}" python3 - "$EXTRAS" <<'EOF'
import json, os, statistics, sys
e = os.environ
num = lambda s: float(s) if s not in ("", "null", "None") else None
proxy, peer = num(e["X_PROXY"]), num(e["X_PEER"])
rounds = [float(x) for x in e["X_ROUNDS"].split()]
if rounds:
    ratio = statistics.median(rounds)
else:
    ratio = proxy / peer if proxy is not None and peer else None
v = ratio if e["X_ON"] == "ratio" else proxy
met = None
if e["X_PRED"] and v is not None:
    met = bool(eval(e["X_PRED"], {}, {"v": v}))
row = {"row": e["X_ROW"], "proxy": proxy, "peer": peer, "peer_name": e["X_PEER_NAME"] or None,
       "unit": e["X_UNIT"], "ratio": ratio, "target": e["X_TARGET"] or None, "met": met,
       "detail": e["X_DETAIL"] or None}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(row) + "\n")
EOF
}

# The ratio of two per-round lists, round by round: ratios_of NUM_ARRAY DEN_ARRAY.
ratios_of() {
  local -n num_=$1 den_=$2
  local i out=()
  for i in "${!num_[@]}"; do
    [[ -n "${den_[i]:-}" ]] && out+=("$(awk -v a="${num_[i]}" -v b="${den_[i]}" 'BEGIN{if (b > 0) print a/b}')")
  done
  echo "${out[*]}"
}

# The items in round R's order: as given in odd rounds, reversed in even ones, so that a
# drift of the guest's speed within a round favours neither side of a ratio across rounds.
# Sets ORDER. round_order R ITEM...
round_order() {
  local r=$1 i
  shift
  ORDER=("$@")
  if (( r % 2 == 0 )); then
    ORDER=()
    for (( i = $#; i >= 1; i-- )); do ORDER+=("${!i}"); done
  fi
}

median_of() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:] if x not in ("","None")]; print(statistics.median(v) if v else "")' "$@"; }

# CPU µs of PIDS while running a command (whose stdout is passed through).
# Sets CPU_US.
with_cpu() { # "PIDS" CMD...
  local pids=($1) c0 c1 sys wait
  shift
  read -r c0 sys <<<"$(cpu_ticks "${pids[@]}")"
  thread_times "${pids[@]}" >"$WORK/threads.0"
  "$@"
  read -r c1 sys <<<"$(cpu_ticks "${pids[@]}")"
  thread_times "${pids[@]}" >"$WORK/threads.1"
  read -r CPU_US wait <<<"$(cpu_us_of "$WORK/threads.0" "$WORK/threads.1" "$((c1 - c0))")"
}

# ---------------------------------------------------------------------------------------
# Intercepted HTTPS
# ---------------------------------------------------------------------------------------
HOSTS_MARK="# quota-proxy compare.sh"
TLS_HOST=api.bench.test
BLIND_HOST=blind.tunnel.test   # no provider matches it: a blind CONNECT tunnel

tls_hosts_add() {
  grep -q "$HOSTS_MARK" /etc/hosts && return
  {
    printf '127.0.0.1 %s %s' "$TLS_HOST" "$BLIND_HOST"
    for i in $(seq 1 12); do printf ' new%d.bench.test' "$i"; done
    printf ' %s\n' "$HOSTS_MARK"
  } >>/etc/hosts
}

tls_hosts_remove() {
  if grep -q "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
    # /etc/hosts may be a bind mount: rewrite it in place.
    local kept
    kept=$(grep -v "$HOSTS_MARK" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
}

ensure_mitmdump() {
  MITM_VENV=${MITM_VENV:-$ROOT/target/mitm-venv}
  if [[ ! -x "$MITM_VENV/bin/mitmdump" ]]; then
    log "pip install mitmproxy<12 into $MITM_VENV"
    python3 -m venv "$MITM_VENV" >>"$WORK/pip.log" 2>&1 \
      && "$MITM_VENV/bin/pip" install -q "mitmproxy<12" >>"$WORK/pip.log" 2>&1 \
      || die "cannot install mitmproxy (see $WORK/pip.log)"
  fi
}

start_tls_stack() {
  local dir="$WORK/tls" line
  mkdir -p "$dir"
  # A TLS upstream on port 443 (hey's Go client puts host:port into the SNI on other ports).
  (exec 3<>/dev/tcp/127.0.0.1/443) 2>/dev/null && die "port 443 is taken: the TLS rows need it"
  upstream_cert "$dir" "$TLS_HOST" '*.bench.test' "$BLIND_HOST"
  "${ON_CORE1[@]}" "$UP_BIN" --listen 127.0.0.1:443 --tls-cert "$dir/up.crt" --tls-key "$dir/up.key" \
    >"$dir/up.out" 2>"$dir/up.out.err" &
  TLSUP_PID=$!
  STARTED_PIDS+=("$TLSUP_PID")
  wait_line "$dir/up.out" '^listening ' tls_upstream "$TLSUP_PID" >/dev/null

  "$QP_BIN" ca init --dir "$dir/ca" >/dev/null 2>&1 || die "quota-proxy ca init failed"
  cat >"$dir/qp.toml" <<EOF
[proxy]
listen = "127.0.0.1:0"
allow_private_destinations = true
max_connections = 10000

[admin]
listen = "127.0.0.1:0"

[tls]
ca_cert = "$dir/ca/ca.crt"
ca_key = "$dir/ca/ca.key"
extra_upstream_roots = "$dir/up-ca.crt"

[state]
backend = "memory"

[providers.bench]
hosts = ["*.bench.test"]
intercept = true
EOF
  "${ON_CORE0[@]}" env TOKIO_WORKER_THREADS=1 "$QP_BIN" run -c "$dir/qp.toml" \
    >"$dir/qp.out" 2>"$dir/qp.out.err" &
  QPT_PID=$!
  STARTED_PIDS+=("$QPT_PID")
  line=$(wait_line "$dir/qp.out" 'listening proxy=' quota-proxy-tls "$QPT_PID")
  QPT_ADDR=$(sed -E 's/.*proxy=([^ ]+).*/\1/' <<<"$line")

  MITM_PORT=$(free_port)
  "${ON_CORE0[@]}" "$MITM_VENV/bin/mitmdump" -q --listen-host 127.0.0.1 -p "$MITM_PORT" \
    --set ssl_verify_upstream_trusted_ca="$dir/up-ca.crt" --set stream_large_bodies=1 \
    --set confdir="$dir/mitmconf" >"$dir/mitm.out" 2>&1 &
  MITM_PID=$!
  STARTED_PIDS+=("$MITM_PID")
  for _ in $(seq 150); do
    (exec 3<>"/dev/tcp/127.0.0.1/$MITM_PORT") 2>/dev/null && break
    kill -0 "$MITM_PID" 2>/dev/null || die "mitmdump exited: $(tail -3 "$dir/mitm.out")"
    sleep 0.2
  done
  pin_tree 0 "$QPT_PID"
  pin_tree 0 "$MITM_PID"
  local body
  for target in "$QPT_ADDR $TLS_HOST" "$QPT_ADDR $BLIND_HOST" "127.0.0.1:$MITM_PORT $TLS_HOST"; do
    read -r p h <<<"$target"
    body=$(curl -ksS --max-time 10 -x "http://$p" "https://$h/") || die "TLS probe via $p to $h failed"
    [[ "$body" == *bench-0001* ]] || die "TLS probe via $p to $h: unexpected body $body"
  done
  log "TLS: upstream 127.0.0.1:443 (core 1), quota-proxy $QPT_ADDR, mitmdump :$MITM_PORT (core 0)"
}

# Runs hey through PROXY to https://HOST/ for DURATION seconds; prints "requests cpu_us".
tls_run() { # PROXY HOST PIDS DURATION KEEPALIVE(yes|no) WORKERS
  local args=(-z "$4s" -c "$6" -t 10 -x "http://$1")
  [[ $5 == no ]] && args+=(-disable-keepalive)
  local out
  with_cpu "$3" "${ON_CORE1[@]}" hey "${args[@]}" "https://$2/" >"$WORK/tls-hey.out" 2>&1 \
    || die "hey failed via $1: $(tail -3 "$WORK/tls-hey.out")"
  out=$(awk '$1 == "[200]" && $3 == "responses" {print $2}' "$WORK/tls-hey.out")
  echo "${out:-0} $CPU_US"
}

run_tls() {
  ensure_mitmdump
  tls_hosts_add
  start_tls_stack
  local rounds=$TLS_ROUNDS d=$TLS_DURATION r n cpu
  local -a ka_i ka_b ka_m nc_i nc_m ka_i_rps ka_b_rps ka_m_rps
  # name proxy host pids
  local -a T=("intercept|$QPT_ADDR|$TLS_HOST|$QPT_PID" "blind|$QPT_ADDR|$BLIND_HOST|$QPT_PID"
    "mitmdump|127.0.0.1:$MITM_PORT|$TLS_HOST|$MITM_PID")
  log "TLS keep-alive: warm-up, then $rounds rounds of ${d}s (hey, 10 connections)"
  for t in "${T[@]}"; do IFS='|' read -r name p h pid <<<"$t"; tls_run "$p" "$h" "$pid" 2 yes 10 >/dev/null; done
  for r in $(seq "$rounds"); do
    round_order "$r" "${T[@]}"
    for t in "${ORDER[@]}"; do
      IFS='|' read -r name p h pid <<<"$t"
      read -r n cpu <<<"$(tls_run "$p" "$h" "$pid" "$d" yes 10)"
      [[ $n -gt 0 ]] || die "TLS keep-alive $name: no successful request"
      log "  tls keepalive round $r $name: $((n / d)) req/s, $((cpu / n)) us CPU/request"
      case $name in
        intercept) ka_i+=("$(awk -v c="$cpu" -v n="$n" 'BEGIN{print c/n}')") ;;
        blind) ka_b+=("$(awk -v c="$cpu" -v n="$n" 'BEGIN{print c/n}')") ;;
        mitmdump) ka_m+=("$(awk -v c="$cpu" -v n="$n" 'BEGIN{print c/n}')") ;;
      esac
    done
  done
  log "TLS new connection per request: $rounds rounds of ${d}s (hey -disable-keepalive, 4 workers)"
  local -a T2=("intercept|$QPT_ADDR|$TLS_HOST|$QPT_PID" "mitmdump|127.0.0.1:$MITM_PORT|$TLS_HOST|$MITM_PID")
  for r in $(seq "$rounds"); do
    round_order "$r" "${T2[@]}"
    for t in "${ORDER[@]}"; do
      IFS='|' read -r name p h pid <<<"$t"
      read -r n cpu <<<"$(tls_run "$p" "$h" "$pid" "$d" no 4)"
      [[ $n -gt 0 ]] || die "TLS new-connection $name: no successful request"
      log "  tls new_conn round $r $name: $((n / d)) conn/s, $((cpu / n)) us CPU/connection"
      case $name in
        intercept) nc_i+=("$(awk -v c="$cpu" -v n="$n" 'BEGIN{print c/n}')") ;;
        mitmdump) nc_m+=("$(awk -v c="$cpu" -v n="$n" 'BEGIN{print c/n}')") ;;
      esac
    done
  done
  local ki kb km ni nm
  ki=$(median_of "${ka_i[@]}") kb=$(median_of "${ka_b[@]}") km=$(median_of "${ka_m[@]}")
  ni=$(median_of "${nc_i[@]}") nm=$(median_of "${nc_m[@]}")
  local r_kb r_km r_nm
  r_kb=$(ratios_of ka_i ka_b) r_km=$(ratios_of ka_i ka_m) r_nm=$(ratios_of nc_i nc_m)
  extra "intercepted HTTPS keep-alive: CPU us/request vs blind tunnel" "$ki" "$kb" "qp blind tunnel" \
    "us/request" "<= 1.5x" "v <= 1.5" ratio "per round: ${ka_i[*]} vs ${ka_b[*]}; ratios $r_kb" "$r_kb"
  extra "intercepted HTTPS keep-alive: CPU us/request vs mitmdump" "$ki" "$km" mitmdump \
    "us/request" "<= 1/30 (0.033x)" "v <= 1/30" ratio "mitmdump per round: ${ka_m[*]}; ratios $r_km" "$r_km"
  extra "intercepted HTTPS new conn: CPU us/connection" "$ni" "" "" \
    "us/connection" "<= 400 us" "v <= 400" proxy "per round: ${nc_i[*]}"
  extra "intercepted HTTPS new conn: CPU us/connection vs mitmdump" "$ni" "$nm" mitmdump \
    "us/connection" "<= 1/15 (0.067x)" "v <= 1/15" ratio "mitmdump per round: ${nc_m[*]}; ratios $r_nm" "$r_nm"

  # First connection to a host never seen (a leaf is minted) vs the same host again (cached
  # leaf): TLS handshake time through the proxy as curl sees it.
  local i first again deltas=() f_all=() a_all=()
  for i in $(seq 1 "$TLS_NEW_HOSTS"); do
    first=$(curl -ksS -o /dev/null -w '%{time_appconnect}' -x "http://$QPT_ADDR" "https://new$i.bench.test/")
    again=$(curl -ksS -o /dev/null -w '%{time_appconnect}' -x "http://$QPT_ADDR" "https://new$i.bench.test/")
    f_all+=("$(awk -v s="$first" 'BEGIN{printf "%.0f", s*1e6}')")
    a_all+=("$(awk -v s="$again" 'BEGIN{printf "%.0f", s*1e6}')")
    deltas+=("$(awk -v f="$first" -v a="$again" 'BEGIN{printf "%.0f", (f-a)*1e6}')")
  done
  extra "first connection to a new intercepted host: extra handshake time (us)" \
    "$(median_of "${deltas[@]}")" "" "" "us" "-" "" proxy \
    "curl time_appconnect first ${f_all[*]} / again ${a_all[*]} us; wall time on a shared core, the criterion leaf row is the precise CPU figure"
}

# ---------------------------------------------------------------------------------------
# SSE
# ---------------------------------------------------------------------------------------
run_sse() {
  log "SSE: $SSE_ROUNDS rounds of $SSE_EVENTS events ${SSE_GAP_MS} ms apart, direct and through quota-proxy, the bare hyper proxy and nginx"
  local out
  out=$("${ON_CORE1[@]}" python3 "$HELPERS/sse_latency.py" "$UP_ADDR" "$SSE_ROUNDS" \
    "$SSE_EVENTS" "$SSE_GAP_MS" "qp=$QP_ADDR" "bare=$BARE_ADDR" "nginx=rev:$NGX_ADDR") \
    || die "sse_latency.py failed"
  echo "$out" >"$WORK/sse.json"
  local added lost gap nginx bare lost_peers
  read -r added lost gap nginx bare lost_peers < <(python3 -c '
import json, sys
d = json.load(sys.stdin)
p = d["peers"]
print(d["added_p50_us"], d["lost_events"], d["proxy_gap_median_ms"], p["nginx"]["added_p50_us"],
      p["bare"]["added_p50_us"], p["nginx"]["lost_events"] + p["bare"]["lost_events"])
' <<<"$out")
  log "  SSE added p50 ${added} us (nginx ${nginx} us, bare hyper ${bare} us), events lost $lost, median gap through the proxy ${gap} ms"
  [[ $lost -eq 0 ]] || NOTES+=("SSE: $lost events were not received through quota-proxy")
  [[ $lost_peers -eq 0 ]] || NOTES+=("SSE: $lost_peers events were not received through the peers")
  extra "SSE: added p50 delivery latency per event (us)" "$added" "$nginx" \
    "nginx reverse proxy, proxy_buffering off" "us" "<= 150 us" "v <= 150" proxy \
    "bare hyper proxy adds ${bare} us; events lost $lost; median gap between events through the proxy ${gap} ms (sent ${SSE_GAP_MS} ms apart)"
}

# ---------------------------------------------------------------------------------------
# Redis backend, 2 replicas
# ---------------------------------------------------------------------------------------
start_redis_stack() {
  local dir="$WORK/redis" line i
  mkdir -p "$dir"
  REDIS_PORT=$(free_port)
  "${ON_CORE1[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$dir" >"$dir/redis.out" 2>&1 &
  REDIS_PID=$!
  STARTED_PIDS+=("$REDIS_PID")
  wait_port "127.0.0.1:$REDIS_PORT" redis-server "$REDIS_PID"
  RQ_PIDS=() RQ_ADDRS=()
  for i in 1 2; do
    sed -e '/^\[state\]/,/^$/d' "$WORK/quota-proxy-on.toml" >"$dir/qp$i.toml"
    cat >>"$dir/qp$i.toml" <<EOF

[state]
backend = "redis"
redis_url = "redis://127.0.0.1:$REDIS_PORT"
redis_prefix = "bench"
EOF
    "${ON_CORE0[@]}" env TOKIO_WORKER_THREADS=1 "$QP_BIN" run -c "$dir/qp$i.toml" \
      >"$dir/qp$i.out" 2>"$dir/qp$i.out.err" &
    RQ_PIDS+=($!)
    STARTED_PIDS+=($!)
    line=$(wait_line "$dir/qp$i.out" 'listening proxy=' "quota-proxy-redis-$i" "${RQ_PIDS[-1]}")
    RQ_ADDRS+=("$(sed -E 's/.*proxy=([^ ]+).*/\1/' <<<"$line")")
    pin_tree 0 "${RQ_PIDS[-1]}"
  done
  for i in 0 1; do
    curl -fsS -x "http://${RQ_ADDRS[$i]}" "http://$UP_ADDR/" >/dev/null \
      || die "redis replica $((i + 1)) probe failed"
  done
  log "Redis: redis-server :$REDIS_PORT (core 1), replicas ${RQ_ADDRS[*]} (core 0)"
}

redis_commands() {
  redis-cli -p "$REDIS_PORT" INFO stats | awk -F: '/^total_commands_processed/ {print $2+0}'
}

run_redis() {
  start_redis_stack
  local rounds=$REDIS_ROUNDS d=$DURATION r res rps_r=() rps_l=() p50_r=() p50_l=()
  # Round trips per call: Redis commands processed per proxied request (both replicas
  # serve half the calls; background sync traffic is included, so this is an upper bound).
  local c0 c1 n=2000
  redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
  c0=$(redis_commands)
  "${ON_CORE1[@]}" hey -n $((n / 2)) -c 10 -x "http://${RQ_ADDRS[0]}" "http://$UP_ADDR/" >/dev/null
  "${ON_CORE1[@]}" hey -n $((n / 2)) -c 10 -x "http://${RQ_ADDRS[1]}" "http://$UP_ADDR/" >/dev/null
  c1=$(redis_commands)
  redis-cli -p "$REDIS_PORT" INFO commandstats | grep '^cmdstat' | cut -d, -f1 >"$WORK/redis-cmdstats.txt"
  log "  Redis commands: $(tr '\n' ' ' <"$WORK/redis-cmdstats.txt")"
  # Commands run inside a script count in the stats too: the round trips are the
  # top-level commands, i.e. every command but those the scripts call.
  local scripts per_call
  scripts=$(awk -F'[:=,]' '/^cmdstat_(evalsha|eval|evalsha_ro|eval_ro|fcall):/ {s += $3} END {print s+0}' \
    "$WORK/redis-cmdstats.txt")
  per_call=$(awk -v s="$scripts" -v n="$n" 'BEGIN{printf "%.3f", s/n}')
  log "  Redis scripts (round trips) per call: $per_call"
  extra "Redis 2 replicas: round trips (scripts) per call" "$per_call" "" "" "round trips" "<= 1" \
    "v <= 1.0" proxy "$scripts EVALSHA for $n calls over both replicas; all commands: $(tr '\n' ' ' <"$WORK/redis-cmdstats.txt")"
  # Redis round trip as a C client sees it (one connection, no pipelining): from the proxy's
  # core (core 0, idle at this point), which is the round trip an admission pays, and from
  # Redis's own core for reference.
  local rtt rtt_same
  rtt=$("${ON_CORE0[@]}" redis-benchmark -p "$REDIS_PORT" -t ping -n 20000 -c 1 2>/dev/null \
    | awk '/latency summary/ {getline; getline; print $3 * 1000; exit}')
  rtt_same=$("${ON_CORE1[@]}" redis-benchmark -p "$REDIS_PORT" -t ping -n 20000 -c 1 2>/dev/null \
    | awk '/latency summary/ {getline; getline; print $3 * 1000; exit}')
  log "  Redis round trip p50 (redis-benchmark PING, 1 connection): ${rtt} us from the proxy's core, ${rtt_same} us from Redis's"
  # The yardstick of the added latency: one round trip as an admission meets it in the
  # latency rounds, one PING at a time paced at the same rate from the proxy's core, so
  # each finds both processes asleep (redis-benchmark's back-to-back PINGs find them awake).
  # Measured in each round, beside the two backends' rounds.
  local paced=()
  for r in $(seq "$rounds"); do
    res=$("${ON_CORE0[@]}" "$RTT_BIN" --addr "127.0.0.1:$REDIS_PORT" --rate "$FIXED_RATE" \
      --count $((FIXED_RATE * d)) | grep -m1 '^RESULT ') || die "redis_rtt failed"
    paced+=("$(sed -E 's/.*p50_us=([0-9.]+).*/\1/' <<<"$res")")
    log "  redis round $r: one PING at a time at ${FIXED_RATE}/s from the proxy's core: $res"
    for which in redis local; do
      local url proxy pids
      if [[ $which == redis ]]; then proxy="http://${RQ_ADDRS[0]}"; pids="${RQ_PIDS[0]}"
      else proxy="http://$QPQ_ADDR"; pids="$QPQ_PID"; fi
      res=$("${ON_CORE1[@]}" env WRK_PROXY_URL="http://$UP_ADDR/" WRK_RATE=0 \
        wrk -t1 -c"$KEEPALIVE_CONNS" -d"${d}s" --timeout 5s -s "$HELPERS/wrk.lua" "$proxy/" 2>&1 \
        | grep -m1 '^RESULT ') || die "wrk failed on the $which backend"
      local rq du
      rq=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$res")
      du=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$res")
      local rps=$((rq * 1000000 / du))
      if [[ $which == redis ]]; then rps_r+=("$rps"); else rps_l+=("$rps"); fi
      res=$("${ON_CORE1[@]}" env WRK_PROXY_URL="http://$UP_ADDR/" WRK_RATE="$FIXED_RATE" \
        wrk -t1 -c"$FIXED_CONNS" -d"${d}s" --timeout 5s -s "$HELPERS/wrk.lua" "$proxy/" 2>&1 \
        | grep -m1 '^RESULT ') || die "wrk (paced) failed on the $which backend"
      local p50
      p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$res")
      if [[ $which == redis ]]; then p50_r+=("$p50"); else p50_l+=("$p50"); fi
      log "  redis round $r, $which backend: $rps req/s at saturation, p50 ${p50} us at ${FIXED_RATE} req/s"
    done
  done
  local added=() i
  for i in "${!p50_r[@]}"; do added+=("$((p50_r[i] - p50_l[i]))"); done
  local added_med paced_med
  added_med=$(median_of "${added[@]}")
  paced_med=$(median_of "${paced[@]}")
  extra "Redis 2 replicas: added p50 over the local backend (us)" "$added_med" "$paced_med" \
    "one Redis round trip p50 from the proxy's core, one PING at a time at ${FIXED_RATE}/s" "us" \
    "<= RTT + 20 us" "v <= $paced_med + 20" proxy \
    "p50 at ${FIXED_RATE} req/s, redis ${p50_r[*]} vs local ${p50_l[*]} us; paced PING round trip ${paced[*]} us from the proxy's core; back-to-back PING (redis-benchmark -c 1) ${rtt} us from the proxy's core, ${rtt_same} us on Redis's core"
  local ratios
  ratios=$(ratios_of rps_r rps_l)
  extra "Redis 2 replicas: saturation req/s vs the local backend" "$(median_of "${rps_r[@]}")" \
    "$(median_of "${rps_l[@]}")" "local backend" "req/s" ">= 0.7x" "v >= 0.7" ratio \
    "per round ratio $ratios" "$ratios"
}

# ---------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

run_memory() {
  local dir="$WORK/mem" line pid addr idle held
  mkdir -p "$dir"
  local hard
  hard=$(ulimit -Hn)
  if [[ $hard != unlimited && $hard -lt $((MEM_CONNS + 1000)) ]]; then
    NOTES+=("memory: open-file limit $hard: held $((hard - 1000)) connections instead of $MEM_CONNS")
    MEM_CONNS=$((hard - 1000))
  fi
  sed -e 's/^max_connections = .*/max_connections = 20000/' "$WORK/quota-proxy-off.toml" >"$dir/qp.toml"
  (
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    exec "${ON_CORE0[@]}" env TOKIO_WORKER_THREADS=1 "$QP_BIN" run -c "$dir/qp.toml"
  ) >"$dir/qp.out" 2>"$dir/qp.out.err" &
  pid=$!
  STARTED_PIDS+=("$pid")
  line=$(wait_line "$dir/qp.out" 'listening proxy=' quota-proxy-memory "$pid")
  addr=$(sed -E 's/.*proxy=([^ ]+).*/\1/' <<<"$line")
  curl -fsS -x "http://$addr" "http://$UP_ADDR/" >/dev/null || die "memory proxy probe failed"
  sleep 1
  idle=$(rss_kib "$pid")
  log "memory: RSS idle ${idle} KiB; opening $MEM_CONNS idle keep-alive connections"
  local fifo="$dir/hold"
  mkfifo "$fifo"
  (
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    exec "${ON_CORE1[@]}" python3 "$HELPERS/idle_conns.py" "$addr" "$UP_ADDR" "$MEM_CONNS" <"$fifo"
  ) >"$dir/conns.out" 2>&1 &
  local cpid=$!
  STARTED_PIDS+=("$cpid")
  exec 7>"$fifo"   # holds the client's stdin open until we close it
  for _ in $(seq 1200); do
    grep -q '^holding ' "$dir/conns.out" && break
    kill -0 "$cpid" 2>/dev/null || { exec 7>&-; die "idle_conns.py: $(tail -2 "$dir/conns.out")"; }
    sleep 0.1
  done
  grep -q '^holding ' "$dir/conns.out" || { exec 7>&-; die "idle_conns.py did not finish opening"; }
  sleep 1
  held=$(rss_kib "$pid")
  exec 7>&-
  wait "$cpid" 2>/dev/null || true
  local per
  per=$(awk -v a="$idle" -v b="$held" -v n="$MEM_CONNS" 'BEGIN{printf "%.1f", (b-a)/n}')
  log "  RSS with $MEM_CONNS idle connections ${held} KiB: ${per} KiB per connection"
  extra "memory: RSS idle (MiB)" "$(awk -v a="$idle" 'BEGIN{printf "%.1f", a/1024}')" "" "" "MiB" \
    "<= 30 MiB" "v <= 30" proxy "after one proxied request"
  extra "memory: per idle keep-alive client connection (KiB)" "$per" "" "" "KiB" "<= 16 KiB" \
    "v <= 16" proxy "RSS ${idle} KiB idle, ${held} KiB with $MEM_CONNS connections held after one request each"
  kill -TERM "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------
run_accuracy() {
  log "accuracy: $ACC_LIMIT requests per ${ACC_WINDOW_S} s offered at twice that for ${ACC_SECONDS} s per scenario"
  local out
  out=$("${ON_CORE1[@]}" python3 "$HELPERS/accuracy.py" "$QP_BIN" --proxy-cpu 0 \
    --limit "$ACC_LIMIT" --window-s "$ACC_WINDOW_S" --seconds "$ACC_SECONDS") \
    || die "accuracy.py failed"
  echo "$out" >"$WORK/accuracy.json"
  # One line per scenario: scenario|overshoot|most in a window|used %|upstream 429s|whole windows|detail
  local rows
  rows=$(python3 - "$WORK/accuracy.json" <<'EOF'
import json, sys
for s in json.load(open(sys.argv[1]))["scenarios"]:
    used = "" if s["used_share"] is None else "%.1f" % (100 * s["used_share"])
    detail = "%d offered at %.0f/s: %d answered 200, %d refused by the proxy, %d by the " \
        "upstream, %d failed; %d upstream arrivals; %d arrivals within %s ms at the " \
        "closest; the upstream's loop read a head up to %s ms after the kernel stamped it" % (
            s["offered"], s["offered_rate"], s["ok"], s["proxy_429"], s["upstream_429"],
            s["other"], s["upstream_arrivals"], s["limit"] + 1, s["tightest_ms"],
            s["loop_lag_ms_max"])
    print("|".join([s["scenario"], str(s["overshoot"]), str(s["max_in_window"]), used,
                    str(s["upstream_refused"]), str(s["whole_windows"]), detail]))
EOF
) || die "cannot read accuracy.py's result"
  local scen overshoot most used up429 windows detail
  while IFS='|' read -r scen overshoot most used up429 windows detail; do
    log "  $scen: most in a window $most (limit $ACC_LIMIT), used $used%, upstream 429s $up429; $detail"
    extra "accuracy, $scen: overshoot (requests)" "$overshoot" "" "" \
      "requests" "0" "v == 0" proxy "limit $ACC_LIMIT per ${ACC_WINDOW_S} s; most upstream arrivals in any ${ACC_WINDOW_S} s: $most; $detail"
    extra "accuracy, $scen: throughput used (%)" "$used" "" "" "%" ">= 97%" "v >= 97" \
      proxy "arrivals in the first $windows whole windows over $ACC_LIMIT per window"
    extra "accuracy, $scen: upstream 429s" "$up429" "" "" \
      "responses" "0" "v == 0" proxy "the config matches the upstream, which enforces the same limit on arrival times"
  done <<<"$rows"
}

# ---------------------------------------------------------------------------------------
# Criterion benches (in process)
# ---------------------------------------------------------------------------------------
criterion_ns() { # GROUP BENCH -> median ns
  local f="$ROOT/target/criterion/$1/$2/new/estimates.json"
  [[ -s "$f" ]] || { echo ""; return; }
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["median"]["point_estimate"], 1))' "$f"
}

run_criterion() {
  log "criterion: quota decision and leaf minting (cargo bench, ${CRIT_TIME}s per bench)"
  (cd "$ROOT" && nice -n "$NICE" cargo bench --bench quota --bench hot_path -- \
    --warm-up-time 1 --measurement-time "$CRIT_TIME" "$CRIT_FILTER") >"$WORK/criterion.log" 2>&1 \
    || die "cargo bench failed: $(tail -5 "$WORK/criterion.log")"
  local qp full gov gov3 mint sign hit
  full=$(criterion_ns quota_decision provider_handle_admit_settle_3_limits)
  gov3=$(criterion_ns quota_decision governor_keyed_check_3_limiters)
  # The decision is the admission (governor's check decides and records in one step; it has
  # no settlement); admission + settlement is shown beside it. The row comes from
  # benches/decision_pairs.rs: pairs of 2,048 admissions and 2,048 of governor's checks
  # (about a tenth of a millisecond each), the order swapped every pair; each run's figure is
  # the median of its per-pair ratios. Criterion's runs of the two sides, seconds apart even
  # when interleaved, compared two speeds of the guest whenever its speed moved between them
  # (one round read 78.7 against 31.0 ns). DECISION_ROUNDS runs; the row is their median.
  local round out ns gov_ns ratio qp_rounds=() gov_rounds=() ratio_rounds=()
  log "criterion: the decision row, $DECISION_ROUNDS runs of $DECISION_PAIRS paired slices (admission, governor's check) on core 0"
  for round in $(seq "$DECISION_ROUNDS"); do
    out=$(cd "$ROOT" && "${ON_CORE0[@]}" cargo bench --bench decision_pairs -- "$DECISION_PAIRS" \
      2>>"$WORK/criterion.log" | tail -1) || die "cargo bench --bench decision_pairs failed: $(tail -5 "$WORK/criterion.log")"
    read -r ns gov_ns ratio < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["admission_ns"], d["governor_ns"], d["ratio"])' "$out") \
      || die "decision_pairs printed no figures: $out"
    qp_rounds+=("$ns")
    gov_rounds+=("$gov_ns")
    ratio_rounds+=("$ratio")
    log "  decision run $round: admission $ns ns, governor $gov_ns ns, median per-pair ratio $ratio"
  done
  qp=$(median_of "${qp_rounds[@]}")
  gov=$(median_of "${gov_rounds[@]}")
  local ratios="${ratio_rounds[*]}"
  extra "quota decision, 3 limits, in process (ns) vs keyed governor" "$qp" "$gov" "governor keyed check" \
    "ns" "<= 1.5x" "v <= 1.5" ratio "admission through a provider handle, in paired slices of 2,048 calls (benches/decision_pairs.rs); per run: ${qp_rounds[*]} vs ${gov_rounds[*]} ns, median per-pair ratios ${ratios}; criterion: with its settlement ${full} ns; three keyed governor limiters checked for one key ${gov3} ns" \
    "$ratios"
  # Share of a request's CPU: against quota-proxy's keep-alive CPU/request of this run.
  local cpu_req
  cpu_req=$(python3 - "$SAMPLES" <<'EOF'
import json, statistics, sys
v = []
for line in open(sys.argv[1]):
    o = json.loads(line)
    if o.get("kind") == "run" and o["scenario"] == "keepalive" and o["target"] == "qp_quotas" and o["requests"]:
        cpu_us = o.get("run_us")
        if cpu_us is None:
            cpu_us = o["cpu_ticks"] / o["clk_tck"] * 1e6
        v.append(cpu_us / o["requests"])
print(statistics.median(v) if v else "")
EOF
)
  if [[ -n "$qp" && -n "$cpu_req" ]]; then
    extra "quota decision as a share of a request's CPU (%)" \
      "$(awk -v q="$qp" -v c="$cpu_req" 'BEGIN{printf "%.2f", 100*q/1000/c}')" "" "" "%" "<= 1%" \
      "v <= 1" proxy "decision ${qp} ns vs ${cpu_req} us CPU/request (keep-alive, quotas on)"
  fi
  mint=$(criterion_ns leaf mint_server_config)
  sign=$(criterion_ns leaf rcgen_p256_key_and_sign)
  hit=$(criterion_ns leaf cache_hit)
  extra "first connection to a new host: leaf minting CPU (us)" \
    "$(awk -v n="$mint" 'BEGIN{printf "%.1f", n/1000}')" "" "" "us" "<= 60 us" "v <= 60" proxy \
    "ECDSA P-256 key + signature + rustls config; bare rcgen key+sign ${sign} ns; cache hit ${hit} ns"
}
