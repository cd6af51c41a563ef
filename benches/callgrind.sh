#!/usr/bin/env bash
# Instructions per request through quota-proxy, counted by callgrind: repeatable to a few
# tenths of a percent even on a busy shared machine, so it is the figure to compare before
# and after a change to the request path (CPU times swing ±25% here).
#
#   bash benches/callgrind.sh [MODE ...]     # modes: forward (default), quotas, route, newconn, redis, tls, tlsnew, bare
#
#   forward  absolute-form request to a configured provider, no limits
#   quotas   the same with three request limits (second, minute, day)
#   route    route mode (origin-form /bench/...), no limits
#   newconn  as forward, but a new client connection per request (hey -disable-keepalive)
#   redis    as quotas, with the Redis backend (REDIS_URL, default redis://127.0.0.1:6379,
#            under a prefix of its own)
#   bare     examples/bare_proxy.rs as `forward` is driven: the least a forward proxy on
#            tokio + hyper 1 executes per request (the floor of quota-proxy's stack)
#   tls      intercepted HTTPS keep-alive: CONNECT api.bench.test:443, TLS terminated with a
#            leaf, re-originated to a TLS mock upstream on 127.0.0.1:443 (port 443 must be
#            free; needs openssl)
#   tlsnew   as tls, but a new client connection (and TLS handshake) per request
#
# For each mode the release proxy runs under `valgrind --tool=callgrind` twice, serving
# N1 then N2 keep-alive requests (hey, 10 connections) from the mock upstream
# (examples/bench_upstream.rs); (Ir(N2) - Ir(N1)) / (N2 - N1) removes start-up and shutdown.
# Set CALLGRIND_KEEP=DIR to keep the N2 profile. Read it with `callgrind_annotate --auto=no
# --threshold=100 --inclusive=no DIR/callgrind.out.MODE` (the default 99% threshold lists only
# the process's root functions, which hold the whole run), or set two modes' profiles side
# by side, function by function: `python3 benches/callgrind_diff.py DIR/callgrind.out.forward
# DIR/callgrind.out.bare N2`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N1=${CALLGRIND_N1:-500}
N2=${CALLGRIND_N2:-2500}
MODES=("$@")
[[ ${#MODES[@]} -gt 0 ]] || MODES=(forward)

for tool in valgrind callgrind_control hey curl; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: needs $tool (apt-get install valgrind hey curl)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/qp-callgrind.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --quiet --bin quota-proxy --example bench_upstream \
  --example bare_proxy)
QP="$ROOT/target/release/quota-proxy"
BARE="$ROOT/target/release/examples/bare_proxy"
UP="$ROOT/target/release/examples/bench_upstream"

start_upstream() { # OUT ARGS...: starts bench_upstream, leaves its address in OUT
  local out=$1
  shift
  "$UP" "$@" >"$out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q '^listening ' "$out" && return; sleep 0.1; done
  echo "bench_upstream $* did not start" >&2
  exit 1
}
start_upstream "$WORK/up.out" --listen 127.0.0.1:0
UP_ADDR=$(awk '/^listening / {print $2; exit}' "$WORK/up.out")

TLS_HOST=api.bench.test
if [[ " ${MODES[*]} " == *" tls "* || " ${MODES[*]} " == *" tlsnew "* ]]; then
  command -v openssl >/dev/null || { echo "callgrind.sh tls: needs openssl" >&2; exit 1; }
  (exec 3<>/dev/tcp/127.0.0.1/443) 2>/dev/null && { echo "callgrind.sh tls: port 443 is taken" >&2; exit 1; }
  # shellcheck source=compare/upstream_cert.sh
  source "$ROOT/benches/compare/upstream_cert.sh"
  upstream_cert "$WORK" "$TLS_HOST" "$TLS_HOST"
  start_upstream "$WORK/up-tls.out" --listen 127.0.0.1:443 --tls-cert "$WORK/up.crt" --tls-key "$WORK/up.key"
  "$QP" ca init --dir "$WORK/ca" >/dev/null
fi

config() { # MODE
  cat <<EOF
[proxy]
listen = "127.0.0.1:0"
allow_private_destinations = true

[admin]
listen = "127.0.0.1:0"

EOF
  if [[ $1 == tls || $1 == tlsnew ]]; then
    cat <<EOF
[proxy.resolve]
"$TLS_HOST" = "127.0.0.1"

[tls]
ca_cert = "$WORK/ca/ca.crt"
ca_key = "$WORK/ca/ca.key"
extra_upstream_roots = "$WORK/up-ca.crt"

[state]
backend = "memory"

[providers.bench]
hosts = ["$TLS_HOST"]
intercept = true
EOF
    return
  fi
  printf '[state]\n'
  if [[ $1 == redis ]]; then
    printf 'backend = "redis"\nredis_url = "%s"\nredis_prefix = "callgrind-%s"\n' \
      "${REDIS_URL:-redis://127.0.0.1:6379}" "$$-$RANDOM"
  else
    printf 'backend = "memory"\n'
  fi
  cat <<EOF

[providers.bench]
hosts = ["$UP_ADDR"]
route = "/bench"
upstream = "http://$UP_ADDR"
EOF
  if [[ $1 == quotas || $1 == redis ]]; then
    local spec
    for spec in "per-second 100000000 1s" "per-minute 1000000000 1m" "per-day 100000000000 1d"; do
      read -r name amount window <<<"$spec"
      printf '\n[[providers.bench.limits]]\nname = "%s"\nunit = "requests"\namount = %s\nwindow = "%s"\n' \
        "$name" "$amount" "$window"
    done
  fi
}

# Runs the proxy under callgrind, sends N requests, stops it; prints the instructions counted.
count_ir() { # MODE N
  local mode=$1 n=$2 out="$WORK/cg.$1.$2" pid line addr url proxy=()
  local cmd=("$QP" run -c "$WORK/$mode.toml") ready='listening proxy='
  [[ $mode == bare ]] && cmd=("$BARE" --listen 127.0.0.1:0) ready='^listening '
  config "$mode" >"$WORK/$mode.toml"
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "${cmd[@]}" >"$out.stdout" 2>"$out.stderr" &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 600); do
    grep -q "$ready" "$out.stdout" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { echo "${cmd[0]} exited: $(tail -5 "$out.stderr")" >&2; exit 1; }
    sleep 0.1
  done
  line=$(grep -m1 "$ready" "$out.stdout") || { echo "${cmd[0]} did not start" >&2; exit 1; }
  if [[ $mode == bare ]]; then
    addr=$(awk '{print $2}' <<<"$line")
  else
    addr=$(sed -E 's/.*proxy=([^ ]+).*/\1/' <<<"$line")
  fi
  if [[ $mode == route ]]; then
    url="http://$addr/bench/"
  elif [[ $mode == tls || $mode == tlsnew ]]; then
    url="https://$TLS_HOST/"
    proxy=(-x "http://$addr")
  else
    url="http://$UP_ADDR/"
    proxy=(-x "http://$addr")
  fi
  # One probe first, so lazily built state is not charged to the counted requests alone.
  local trust=()
  [[ $mode == tls || $mode == tlsnew ]] && trust=(--cacert "$WORK/ca/ca.crt")
  curl -fsS "${trust[@]}" "${proxy[@]}" "$url" >/dev/null
  # Start-up is not counted: its clock calibration runs for a span of wall time, so its
  # instruction count varies from run to run by more than a change to the request path.
  callgrind_control -z "$pid" >/dev/null 2>&1
  local fresh=()
  [[ $mode == newconn || $mode == tlsnew ]] && fresh=(-disable-keepalive)
  hey -n "$n" -c 10 "${fresh[@]}" "${proxy[@]}" "$url" >"$out.hey"
  grep -q "\[200\].*$n responses" "$out.hey" || { echo "not every request succeeded: $(cat "$out.hey")" >&2; exit 1; }
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/Collected :/ {print $NF}' "$out.stderr" | tail -1
  if [[ -n "${CALLGRIND_KEEP:-}" && $n == "$N2" ]]; then
    mkdir -p "$CALLGRIND_KEEP"
    cp "$out" "$CALLGRIND_KEEP/callgrind.out.$mode"
  fi
}

printf '%-8s %14s %14s %12s\n' mode "Ir($N1)" "Ir($N2)" "Ir/request"
for mode in "${MODES[@]}"; do
  a=$(count_ir "$mode" "$N1")
  b=$(count_ir "$mode" "$N2")
  printf '%-8s %14s %14s %12d\n' "$mode" "$a" "$b" $(((b - a) / (N2 - N1)))
done
