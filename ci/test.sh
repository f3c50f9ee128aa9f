#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, lints, every test (release build,
# one build for everything), the end-to-end run with the official OpenAI SDK and the real model,
# the main jobs (ci/local.sh once, ci/demo.sh), and a fuzz smoke run.
# Needs a Rust toolchain and python3 with pip (PyPI reachable); installs cargo-fuzz, the
# openai package (in a venv under target/) and, through ci/guest-deps.sh, QEMU, veritysetup
# and the bookworm-backports apt source itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }
MODEL="$HOME/.cache/cocoon/models/SmolLM2-135M-Instruct.Q4_1.gguf"

step "system packages for the guest appliance (ci/guest-deps.sh)"
ci/guest-deps.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "release build (binaries)"
cargo build --workspace --release --locked --bins

step "end to end: OpenAI SDK -> cocoon-client -> proxy -> worker (real model)"
ci/e2e.sh

step "fault tests: worker killed mid-stream / before the first byte, app disconnect (ci/e2e-faults.sh)"
ci/e2e-faults.sh

step "trust attacks: reconfigured proxy and worker images refused (ci/e2e_attacks.py)"
python3 ci/e2e_attacks.py target/x86_64-unknown-linux-gnu/release "$(mktemp -d)"

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
