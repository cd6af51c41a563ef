#!/usr/bin/env bash
# A/B of two quota-proxy binaries on the CPU they spend per request, in interleaved rounds
# (A B, B A, ...), for a code change too small to show across two comparison runs.
#
#   bash benches/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [newconn|keepalive|paced]
#
#   newconn    hey -disable-keepalive, 10 workers at 1000 requests/s in all (default)
#   keepalive  wrk, 50 keep-alive connections, saturation
#   paced      wrk, 50 keep-alive connections paced at AB_RATE requests/s (default 40000;
#              the comparison's equal load is half quota-proxy's saturation rate)
#
# Both proxies serve a provider without limits in front of examples/bench_upstream.rs
# (built in release mode first), pinned to core 0 with one worker; the load and the upstream
# run on core 1. CPU is the run time of each proxy's threads (/proc/PID/task/TID/schedstat)
# over a 4 s round, per request served. Prints each round and the median of the per-round
# ratios NEW / OLD. Needs 2 cores, hey and wrk.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OLD=${1:?usage: ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [newconn|keepalive|paced]}
NEW=${2:?usage: ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [newconn|keepalive|paced]}
ROUNDS=${3:-8}
MODE=${4:-newconn}
[[ $MODE == newconn || $MODE == keepalive || $MODE == paced ]] || { echo "ab.sh: mode is newconn, keepalive or paced" >&2; exit 2; }
RATE=0
[[ $MODE == paced ]] && RATE=${AB_RATE:-40000}
for tool in hey wrk taskset; do
  command -v "$tool" >/dev/null || { echo "ab.sh: needs $tool" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/qp-ab.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --quiet --example bench_upstream)
wait_line() { # FILE PATTERN PID
  for _ in $(seq 100); do
    grep -q "$2" "$1" 2>/dev/null && return
    kill -0 "$3" 2>/dev/null || { echo "ab.sh: a process exited: $(tail -3 "$1.err" 2>/dev/null)" >&2; exit 1; }
    sleep 0.1
  done
  echo "ab.sh: no '$2' in $1" >&2
  exit 1
}

taskset -c 1 "$ROOT/target/release/examples/bench_upstream" --listen 127.0.0.1:0 >"$WORK/up.out" 2>&1 &
PIDS+=($!)
wait_line "$WORK/up.out" '^listening ' "${PIDS[-1]}"
UP=$(awk '/^listening / {print $2; exit}' "$WORK/up.out")
cat >"$WORK/qp.toml" <<EOF
[proxy]
listen = "127.0.0.1:0"
allow_private_destinations = true

[admin]
listen = "127.0.0.1:0"

[state]
backend = "memory"

[providers.bench]
hosts = ["$UP"]
upstream = "http://$UP"
EOF
declare -A ADDR PID
for side in old new; do
  bin=$OLD
  [[ $side == new ]] && bin=$NEW
  TOKIO_WORKER_THREADS=1 taskset -c 0 "$bin" run -c "$WORK/qp.toml" >"$WORK/$side.out" 2>"$WORK/$side.out.err" &
  PID[$side]=$!
  PIDS+=($!)
  wait_line "$WORK/$side.out" 'listening proxy=' "${PID[$side]}"
  ADDR[$side]=$(sed -E 's/.*proxy=([^ ]+).*/\1/' "$WORK/$side.out")
done

run_ns() { # PID: nanoseconds its threads have run
  local total=0 a b c t
  for t in /proc/"$1"/task/*/schedstat; do
    read -r a b c <"$t" || continue
    total=$((total + a))
  done
  echo "$total"
}

load() { # PROXY_ADDR -> requests served
  if [[ $MODE == newconn ]]; then
    taskset -c 1 hey -z 4s -c 10 -q 100 -disable-keepalive -x "http://$1" "http://$UP/" >"$WORK/load.out"
    awk '$1 == "[200]" && $3 == "responses" {print $2}' "$WORK/load.out"
  else
    WRK_PROXY_URL="http://$UP/" WRK_RATE=$RATE taskset -c 1 wrk -t1 -c50 -d4s \
      -s "$ROOT/benches/compare/wrk.lua" "http://$1/" >"$WORK/load.out" 2>&1
    sed -nE 's/^RESULT requests=([0-9]+).*/\1/p' "$WORK/load.out"
  fi
}

for side in old new; do load "${ADDR[$side]}" >/dev/null; done   # warm-up
ratios=()
for r in $(seq "$ROUNDS"); do
  order=(old new)
  ((r % 2 == 0)) && order=(new old)
  declare -A us
  for side in "${order[@]}"; do
    a=$(run_ns "${PID[$side]}")
    n=$(load "${ADDR[$side]}")
    b=$(run_ns "${PID[$side]}")
    [[ -n $n && $n -gt 0 ]] || { echo "ab.sh: no request served by $side: $(tail -3 "$WORK/load.out")" >&2; exit 1; }
    us[$side]=$(awk -v d=$((b - a)) -v n="$n" 'BEGIN { printf "%.2f", d / 1000 / n }')
  done
  ratio=$(awk -v a="${us[new]}" -v b="${us[old]}" 'BEGIN { printf "%.3f", a / b }')
  ratios+=("$ratio")
  echo "round $r: old ${us[old]} us, new ${us[new]} us per request, new/old $ratio"
done
printf '%s\n' "${ratios[@]}" | sort -g | awk -v mode="$MODE" '{ v[NR] = $1 } END {
  m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "median new/old over %d rounds: %.3f (%s)\n", NR, m, mode }'
