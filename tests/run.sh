#!/usr/bin/env bash
# The whole test suite: installs what the tests need beyond Rust (a headless browser for the
# dashboard test, Python's prometheus_client to validate /metrics), then runs `cargo test`.
# Extra arguments go to cargo test (e.g. `bash tests/run.sh --test quota`).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]} (Debian packages)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  echo "== installing prometheus_client (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check prometheus_client
fi

echo "== cargo test $*"
cargo test "$@"
