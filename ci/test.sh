#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, every test, the main job,
# fuzz smoke run.
# Needs only a Rust toolchain; installs cargo-fuzz itself when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (workspace)"
cargo test --workspace --locked

step "main job (ci/demo.sh)"
ci/demo.sh

if [ "${COCOON_SKIP_FUZZ:-0}" != 1 ]; then
  step "fuzz smoke run"
  ci/fuzz-smoke.sh "${COCOON_FUZZ_SECONDS:-15}"
fi
