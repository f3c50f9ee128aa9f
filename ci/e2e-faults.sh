#!/usr/bin/env bash
# Process-level fault tests of the inference path (issue "Inference path", Faults): real
# cocoon-proxy, cocoon-worker (stub engine, 20 tokens/s) and cocoon-client processes on
# loopback with the simulated TEE, and real signals:
#   A  worker SIGKILLed mid-stream: the app's stream ends with an error event within 1 s, no
#      other process dies;
#   B  worker killed before the first byte (SIGSTOPped while the request reaches it, then
#      SIGKILLed) with a second worker available: the request succeeds through the other one;
#   C  the app closes its connection mid-stream: the worker cancels the generation within 1 s;
#   D  worker SIGSTOPped mid-stream (hung, socket open): the proxy's keepalive ends the app's
#      stream with an error event within 2.5 s.
# Checks are in ci/e2e_faults.py (python3 stdlib only); measured times are printed as `figure:`
# lines. Builds nothing; needs the release binaries:
#   cargo build --release -p cocoon-host -p cocoon-proxy -p cocoon-worker -p cocoon-client
# Every process is stopped on exit; logs are kept (and printed) on failure.
#
# Environment: COCOON_BIN_DIR (default target/x86_64-unknown-linux-gnu/release).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${COCOON_BIN_DIR:-target/x86_64-unknown-linux-gnu/release}
for b in cocoon-host cocoon-proxy cocoon-worker cocoon-client; do
  if [ ! -x "$BIN/$b" ]; then
    echo "e2e-faults: $BIN/$b missing; build first:"
    echo "  cargo build --release -p cocoon-host -p cocoon-proxy -p cocoon-worker -p cocoon-client"
    exit 2
  fi
done

TMP=$(mktemp -d)
PY_PID=

cleanup() {
  local rc=$?
  set +e
  if [ -n "$PY_PID" ]; then
    kill -TERM "$PY_PID" 2>/dev/null
    wait "$PY_PID" 2>/dev/null
  fi
  # The helper stops what it started; this catches a helper that died hard. Only the PIDs it
  # recorded are killed, and only while they still run a cocoon binary.
  if [ -f "$TMP/pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] && grep -qs "cocoon-" "/proc/$pid/cmdline" && kill -KILL "$pid" 2>/dev/null
    done <"$TMP/pids"
  fi
  if [ "$rc" -ne 0 ]; then
    echo "e2e-faults: FAILED (exit $rc); service logs:"
    for f in "$TMP"/logs/*.log; do
      [ -f "$f" ] && { echo "--- $f (last 40 lines)"; tail -n 40 "$f"; }
    done
    echo "e2e-faults: files kept in $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start=$(date +%s)
python3 ci/e2e_faults.py "$BIN" "$TMP" &
PY_PID=$!
rc=0
wait "$PY_PID" || rc=$?
PY_PID=
[ "$rc" -eq 0 ] || exit "$rc"
echo "e2e-faults: passed in $(($(date +%s) - start)) s"
