#!/usr/bin/env bash
# Runs every fuzz target for a short time (default 15 s each), as many at once as there are
# CPUs (COCOON_FUZZ_JOBS overrides; each fuzzer is one process on one core, so two at a time on
# two cores fuzz as much as one after the other, in half the time). Longer runs: see
# docs/fuzzing.md. cargo-fuzz needs nightly-only flags; the stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-15}"
jobs="${COCOON_FUZZ_JOBS:-$(nproc)}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
cd fuzz
mkdir -p corpus
# Every target built once up front (all cores); each `cargo fuzz run` below then finds its
# binary current and only runs it.
cargo fuzz build >/dev/null 2>&1 || cargo fuzz build

# One target: its corpus seeded, run for $secs; prints one line, or the log's tail on failure.
run_one() {
  local target=$1 secs=$2 log
  mkdir -p "corpus/$target"
  if [ -d "seeds/$target" ]; then cp -n seeds/"$target"/* "corpus/$target/" 2>/dev/null || true; fi
  log="$(mktemp)"
  if ! cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed (artifacts in fuzz/artifacts/$target)"
    rm -f "$log"
    return 1
  fi
  echo "$target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
  rm -f "$log"
}
export -f run_one

# xargs runs up to $jobs at once and exits non-zero if any target failed (after the others).
cargo fuzz list | xargs -P "$jobs" -I{} bash -c 'run_one "$1" "$2"' _ {} "$secs"
