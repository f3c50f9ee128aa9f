#!/usr/bin/env bash
# Benchmark: inference through the full chain vs bare mistral.rs on the same GGUF, same prompt,
# greedy, 64 tokens (ci/bench_chain.py). Chain rounds first (network up), then the bare
# baseline in the same run with the network stopped, so both have the machine to themselves.
# Needs the release build (ci/local.sh or ci/test.sh builds it) and the cached model.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${COCOON_BENCH_ROUNDS:-5}
MODEL_FILE="$HOME/.cache/cocoon/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DIR=$(mktemp -d)
target/x86_64-unknown-linux-gnu/release/cocoon-host launch --local --dir "$DIR" --port 0 >"$DIR/launcher.out" 2>&1 &
HOST=$!
trap 'kill -TERM $HOST 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do [ -f "$DIR/urls.json" ] && break; sleep 0.5; done
URL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["client"])' "$DIR/urls.json")
MODEL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"])' "$DIR/urls.json")
python3 ci/bench_chain.py chain "$URL" "$MODEL" "$ROUNDS" > "$DIR/chain.json"
kill -TERM $HOST; wait $HOST || true
trap - EXIT
COCOON_TEST_GGUF="$MODEL_FILE" COCOON_BENCH_ROUNDS=$((ROUNDS + 1)) \
  cargo test --release -q -p cocoon-worker --test engine_mistralrs -- --nocapture >"$DIR/bare.log" 2>&1
python3 ci/bench_chain.py report "$DIR/chain.json" "$DIR/bare.log"
