#!/usr/bin/env bash
# Main job (README): build cocoon, start the whole network locally (proxy, worker with the real
# SmolLM2-135M model, client; simulated TDX platform; a local TON chain running Cocoon's real
# contracts, with payments on), ask it one real prompt through the local OpenAI-compatible
# endpoint, print the answer and what it cost — client contract balance before and after, the
# charge, the worker owner's earnings, all read back from the chain (DIR/payments.json) — and
# keep the network running until Ctrl-C.
#   COCOON_LOCAL_ONCE=1   stop after the answer (CI uses this)
#   COCOON_PORT=8080      port of the local OpenAI endpoint
#   COCOON_PROMPT="..."   the prompt to ask
#   COCOON_PREBUILT=1     use the binaries already in target/ (ci/test.sh builds them once)
#   COCOON_PAYMENTS=0     run without the local chain and payments
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${COCOON_PORT:-8080}
PROMPT=${COCOON_PROMPT:-"In one sentence, what is a trusted execution environment?"}
DIR=${COCOON_LOCAL_DIR:-$HOME/.cache/cocoon/local}

if [ "${COCOON_PREBUILT:-0}" != 1 ]; then
  echo "== building (release; the first build compiles mistral.rs, ~15 min on 2 cores) =="
  cargo build --release --locked -p cocoon-host -p cocoon-proxy -p cocoon-worker -p cocoon-client
fi

PAYMENTS=()
[ "${COCOON_PAYMENTS:-1}" = 0 ] || PAYMENTS=(--payments)
rm -f "$DIR/urls.json" "$DIR/payments.json"
target/x86_64-unknown-linux-gnu/release/cocoon-host launch --local --dir "$DIR" --port "$PORT" "${PAYMENTS[@]}" &
HOST=$!
trap 'kill -TERM $HOST 2>/dev/null || true; wait $HOST 2>/dev/null || true' EXIT INT TERM

# Wait for the launcher's urls.json (written when all three processes are ready).
for _ in $(seq 1 1800); do
  [ -f "$DIR/urls.json" ] && break
  kill -0 $HOST 2>/dev/null || { echo "local: cocoon-host exited"; wait $HOST; exit 1; }
  sleep 0.5
done
[ -f "$DIR/urls.json" ] || { echo "local: network not ready in time"; exit 1; }

URL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["client"])' "$DIR/urls.json")
MODEL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"])' "$DIR/urls.json")
echo
echo "== asking $MODEL through $URL: $PROMPT =="
BODY=$(python3 -c 'import json,sys; print(json.dumps({"model": sys.argv[1], "max_tokens": 64, "messages": [{"role": "user", "content": sys.argv[2]}]}))' "$MODEL" "$PROMPT")
ANSWER=$(curl -sS --fail-with-body "$URL/chat/completions" -H 'content-type: application/json' -d "$BODY")
python3 - "$ANSWER" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
text = r["choices"][0]["message"]["content"]
u = r["usage"]
print(text.strip())
print(f"(usage: {u['prompt_tokens']} prompt + {u['completion_tokens']} completion tokens; "
      "answered by an attested worker through an attested proxy)")
if not text.strip() or u["completion_tokens"] <= 0:
    sys.exit("local: empty answer")
PY

if [ ${#PAYMENTS[@]} -gt 0 ]; then
  echo
  echo "== what it cost (read back from the local chain: $DIR/payments.json) =="
  # The proxy anchors its ledger, charges the client contract and hands the worker its payout
  # voucher within seconds; cocoon-host writes payments.json once the chain shows all of it.
  for _ in $(seq 1 240); do
    [ -f "$DIR/payments.json" ] && break
    kill -0 $HOST 2>/dev/null || { echo "local: cocoon-host exited"; wait $HOST; exit 1; }
    sleep 0.5
  done
  python3 - "$DIR/payments.json" <<'PY'
import json, sys
try:
    p = json.load(open(sys.argv[1]))
except FileNotFoundError:
    sys.exit("local: the payments did not settle within 120 s (see logs/proxy.log, logs/worker.log)")
ton = lambda n: f"{n / 1e9:.9f} TON"
print(f"client contract  {ton(p['client_balance_before_nano'])} -> {ton(p['client_balance_after_nano'])}"
      f"  (charged {p['charged_nano']} nanoton for {p['charged_tokens']} tokens, {p['requests']} request(s))")
print(f"worker owner     earned {p['worker_earned_nano']} nanoton ({p['paid_tokens']} tokens paid out)")
print(f"proxy contract   kept {p['proxy_kept_nano']} nanoton")
if p["charged_nano"] <= 0 or p["worker_earned_nano"] <= 0:
    sys.exit("local: nothing was charged or paid")
if p["charged_nano"] != p["worker_earned_nano"] + p["proxy_kept_nano"]:
    sys.exit("local: charged != worker earnings + proxy fees")
PY
fi

if [ "${COCOON_LOCAL_ONCE:-0}" = 1 ]; then
  exit 0
fi
echo
echo "The network keeps running: point any OpenAI client at $URL (Ctrl-C stops it)."
wait $HOST
