#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, every test (release build,
# one build for everything), the end-to-end run with the official OpenAI SDK and the real model,
# the main jobs (ci/local.sh once, ci/demo.sh), and a fuzz smoke run.
# Needs a Rust toolchain and python3 with pip (PyPI reachable); installs cargo-fuzz, the
# openai package (in a venv under target/) and, through ci/guest-deps.sh, QEMU, veritysetup
# and the bookworm-backports apt source itself.
set -euo pipefail
cd "$(dirname "$0")/.."

T0=$SECONDS
step() { printf '\n== [%dm%02ds] %s ==\n' $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60)) "$*"; }
trap 'printf "\n== ci/test.sh: %dm%02ds in all ==\n" $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60))' EXIT
MODEL="$HOME/.cache/cocoon/models/SmolLM2-135M-Instruct.Q4_1.gguf"

# A fresh clone has no target/: use a cache directory outside the clone (same machine, later
# runs) when one can be made. A cache, never a requirement: without it, everything builds cold.
CACHE_DIR=${COCOON_CI_CACHE:-$HOME/.cache/cocoon/ci-target}
if [ ! -e target ] && [ "${COCOON_CI_CACHE:-}" != none ] && mkdir -p "$CACHE_DIR/target" "$CACHE_DIR/fuzz-target" 2>/dev/null; then
  # Bounded: a cache past 60 GiB starts over.
  if [ "$(du -sk "$CACHE_DIR" 2>/dev/null | cut -f1)" -gt $((60 * 1024 * 1024)) ]; then
    echo "ci: cache $CACHE_DIR over 60 GiB, emptying it"
    rm -rf "${CACHE_DIR:?}/target" "${CACHE_DIR:?}/fuzz-target"
    mkdir -p "$CACHE_DIR/target" "$CACHE_DIR/fuzz-target"
  fi
  ln -s "$CACHE_DIR/target" target
  [ -e fuzz/target ] || ln -s "$CACHE_DIR/fuzz-target" fuzz/target
  echo "ci: target/ -> $CACHE_DIR/target (cache across runs on this machine)"
fi

step "system packages for the guest appliance (ci/guest-deps.sh)"
ci/guest-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "licences of every crate in the shipped binaries (ci/licenses.py, docs/licenses.md)"
python3 ci/licenses.py --self-test
python3 ci/licenses.py

# Binaries, tests and examples in one invocation: one feature resolution (dev-dependencies
# included), so `cargo test` below and the scripts reuse every artifact instead of building
# tokio's dependents (mistral.rs among them) a second time with other features.
step "release build (binaries, tests, examples)"
cargo build --workspace --release --locked --bins --tests --examples
# The scripts below use these artifacts instead of running cargo with their own package sets.
export COCOON_PREBUILT=1

step "end to end: OpenAI SDK -> cocoon-client -> proxy -> worker (real model)"
ci/e2e.sh

step "fault tests: worker killed mid-stream / before the first byte, app disconnect (ci/e2e-faults.sh)"
ci/e2e-faults.sh

step "end-to-end encryption with real processes: canary, receipts vs ledger, key rotation (ci/e2e_sealed.py)"
python3 ci/e2e_sealed.py target/x86_64-unknown-linux-gnu/release "$(mktemp -d)"

step "trust attacks: reconfigured proxy and worker images refused (ci/e2e_attacks.py)"
python3 ci/e2e_attacks.py target/x86_64-unknown-linux-gnu/release "$(mktemp -d)"

step "GPU worker: dynamically linked build that can load NVML (ci/build-gpu-worker.sh)"
COCOON_GPU_WORKER=$(ci/build-gpu-worker.sh)
export COCOON_GPU_WORKER

step "guest appliance: reproducible images, TCG boots of proxy and worker VMs (ci/e2e-vm.sh)"
ci/e2e-vm.sh

step "reproducible from source: cocoon-init built twice in different directories (ci/repro-init.sh)"
ci/repro-init.sh

step "cargo test --release (workspace; mistral.rs engine tests use the fetched model)"
COCOON_TEST_GGUF="$MODEL" cargo test --workspace --release --locked

step "TON differential: @ton/sandbox vs cocoon-tonsim, same scenario (ci/ton-differential.sh)"
ci/ton-differential.sh

step "main job: ci/local.sh (once)"
COCOON_LOCAL_ONCE=1 COCOON_PORT=0 COCOON_LOCAL_DIR="$(mktemp -d)" ci/local.sh

step "trust-core demo: ci/demo.sh"
ci/demo.sh

if [ "${COCOON_SKIP_FUZZ:-0}" != 1 ]; then
  step "fuzz smoke run"
  ci/fuzz-smoke.sh "${COCOON_FUZZ_SECONDS:-15}"
fi
