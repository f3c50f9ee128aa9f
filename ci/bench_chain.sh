#!/usr/bin/env bash
# Benchmark: inference through the full chain vs bare mistral.rs on the same GGUF, same prompt,
# greedy, 64 tokens (ci/bench_chain.py). Rounds through the chain (network up) interleave with
# rounds of bare mistral.rs in the engine test's paced mode; each runs while the other is idle.
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
cargo test --release -q -p cocoon-worker --test engine_mistralrs --no-run
python3 ci/bench_chain.py ab "$URL" "$MODEL" "$ROUNDS" "$MODEL_FILE"
kill -TERM $HOST; wait $HOST || true
trap - EXIT
