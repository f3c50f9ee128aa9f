#!/usr/bin/env bash
# Differential check of the local TON chain (cocoon-tonsim, tycho-executor) against the official
# emulator (@ton/sandbox, npm): the same scenario (tonsim/fixtures/reference/scenario.js and
# `cargo run -p cocoon-tonsim --example scenario`: deploys, top-up, charge, replays, wrong key,
# wrong address, worker payout) runs in both, and ci/ton_differential.py compares exit code,
# skip reason, aborted, total fees, inbound and outbound values of every contract transaction,
# and each contract's final data hash and balance. Any disagreement fails, naming step, account
# and field.
# Needs node + npm (npm registry reachable on the first run), python3, a Rust toolchain. npm
# packages go to a cache outside the repo, installed with `npm ci` from the committed lockfile
# tonsim/fixtures/reference/package-lock.json (exact versions and integrity hashes).
# Exit codes: 0 all equal, 1 a disagreement, 2 bad input, other: a tool failed.
set -euo pipefail
cd "$(dirname "$0")/.."

REF=tonsim/fixtures/reference
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cocoon/ton-reference"
ci/npm-cached.sh "$REF" "$CACHE" @ton/sandbox
for tool in node npm python3 cargo; do
  command -v "$tool" >/dev/null || { echo "ton-differential: $tool not found" >&2; exit 3; }
done

# Both sides use the repo's committed contract code (the Rust side embeds the same files).
export COCOON_TON_CONTRACTS="$PWD/ton/contracts"
OUT="$(mktemp -d)"
NODE_PATH="$CACHE/node_modules" node "$REF/scenario.js" >"$OUT/sandbox.json"
if [ "${COCOON_PREBUILT:-0}" = 1 ]; then
  target/x86_64-unknown-linux-gnu/release/examples/scenario >"$OUT/tonsim.json"
else
  cargo run --quiet --release --locked -p cocoon-tonsim --example scenario >"$OUT/tonsim.json"
fi

if python3 ci/ton_differential.py "$OUT/sandbox.json" "$OUT/tonsim.json"; then
  rm -rf "$OUT"
else
  rc=$?
  echo "ton-differential: both runs kept in $OUT" >&2
  exit "$rc"
fi
