#!/usr/bin/env bash
# Intercepted HTTPS: quota-proxy vs mitmdump in one interleaved run, same TLS upstream
# (examples/bench_upstream.rs), same client (hey, keep-alive, 10 connections). Proxies pinned to
# core 0 (quota-proxy with one tokio worker), client and upstream to core 1. Prints requests/s
# and proxy CPU µs per request (utime+stime from /proc/PID/stat) per round, and the TLS connect
# time of a first and a repeated connection to a new intercepted host.
#
#   bash benches/tls_compare.sh [ROUNDS]
#
# Needs root: the upstream listens on 127.0.0.1:443 (hey's old Go client puts host:port into
# the SNI for other ports, which rustls rightly rejects) and /etc/hosts gets three bench names.
set -euo pipefail
ROUNDS=${1:-3}
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d /tmp/qp-tls.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

command -v hey >/dev/null || { apt-get update -qq && apt-get install -y -qq hey >/dev/null; }
VENV=${MITM_VENV:-/tmp/qp-mitm-venv}
[ -x "$VENV/bin/mitmdump" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "mitmproxy<12"; }
cargo build --release --quiet --bin quota-proxy --example bench_upstream
QP=$ROOT/target/release/quota-proxy
UP=$ROOT/target/release/examples/bench_upstream

HOST=api.bench.test
grep -q " $HOST " /etc/hosts || echo "127.0.0.1 $HOST new1.bench.test new2.bench.test " >> /etc/hosts
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -subj "/CN=bench upstream CA" -days 2 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout up.key -out up.csr -subj "/CN=$HOST" 2>/dev/null
printf "subjectAltName=DNS:%s,DNS:new1.bench.test,DNS:new2.bench.test\n" "$HOST" > ext
openssl x509 -req -in up.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out up.crt -days 2 -extfile ext 2>/dev/null

taskset -c 1 "$UP" --listen 127.0.0.1:443 --tls-cert up.crt --tls-key up.key > up.out & pids+=($!)
cat > qp.toml <<TOML
[proxy]
listen = "127.0.0.1:18080"
[admin]
listen = "127.0.0.1:19090"
[tls]
extra_upstream_roots = "ca.crt"
[state]
backend = "memory"
[providers.bench]
hosts = ["$HOST", "*.bench.test"]
intercept = true
TOML
TOKIO_WORKER_THREADS=1 taskset -c 0 "$QP" run -c qp.toml > qp.out 2> qp.err & QPPID=$!; pids+=($QPPID)
taskset -c 0 "$VENV/bin/mitmdump" -q -p 18081 --set ssl_verify_upstream_trusted_ca=ca.crt \
  --set stream_large_bodies=1 --set confdir="$WORK/mitmconf" > mitm.out 2>&1 & MPID=$!; pids+=($MPID)
sleep 3

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
measure() { # name port pid requests
  local c0 c1 out
  hey -n 200 -c 10 -x "http://127.0.0.1:$2" "https://$HOST/" > /dev/null 2>&1
  c0=$(cpu "$3")
  out=$(taskset -c 1 hey -n "$4" -c 10 -x "http://127.0.0.1:$2" "https://$HOST/")
  c1=$(cpu "$3")
  printf "%-12s req/s %8.0f  ok %6s/%-6s  cpu us/req %7.1f\n" "$1" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '/\[200\]/ {print $2}')" "$4" \
    "$(echo "($c1-$c0)*10000/$4" | bc -l)"
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round"
  measure quota-proxy 18080 $QPPID 20000
  measure mitmdump 18081 $MPID 2000
done
hs() { curl -s -o /dev/null -w "%{time_appconnect}" --cacert "$3" -x "http://127.0.0.1:$2" "https://$1/"; }
echo "TLS connect through the proxy (s), first connection to a new host / again:"
echo "  quota-proxy $(hs new1.bench.test 18080 certs/ca.crt) / $(hs new1.bench.test 18080 certs/ca.crt)"
echo "  mitmdump    $(hs new2.bench.test 18081 mitmconf/mitmproxy-ca-cert.pem) / $(hs new2.bench.test 18081 mitmconf/mitmproxy-ca-cert.pem)"
