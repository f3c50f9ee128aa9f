#!/usr/bin/env bash
# Runs every fuzz target for a short time (default 15 s each). Longer runs: see docs/fuzzing.md.
# cargo-fuzz needs nightly-only flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-15}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
mkdir -p corpus
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  if [ -d "seeds/$target" ]; then cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true; fi
  log="$(mktemp)"
  if ! cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed (artifacts in fuzz/artifacts/$target)"
    exit 1
  fi
  echo "$target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
  rm -f "$log"
done
