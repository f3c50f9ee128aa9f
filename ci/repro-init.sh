#!/usr/bin/env bash
# Reproducibility from source: builds cocoon-init (PID 1 of every guest image) with the `dist`
# profile from two copies of the committed tree in different directories, with different
# target directories, and compares the binaries' SHA-256. (ci/e2e-vm.sh separately shows that
# the image builder turns the same binaries into identical images.) The worker and proxy use
# the same profile and flags; building mistral.rs twice more does not fit CI's time budget.
set -euo pipefail
cd "$(dirname "$0")/.."
W=$(mktemp -d /tmp/cocoon-repro.XXXXXX)
trap 'rm -rf "$W"' EXIT
for d in one two/deeper; do
  mkdir -p "$W/$d/src"
  git archive HEAD | tar -x -C "$W/$d/src"
  (cd "$W/$d/src" && cargo build --quiet --locked --profile dist -p cocoon-init --target-dir "$W/$d/target")
done
a=$(sha256sum "$W/one/target/x86_64-unknown-linux-gnu/dist/cocoon-init" | cut -d' ' -f1)
b=$(sha256sum "$W/two/deeper/target/x86_64-unknown-linux-gnu/dist/cocoon-init" | cut -d' ' -f1)
echo "  $a  cocoon-init (build 1: $W/one)"
echo "  $b  cocoon-init (build 2: $W/two/deeper)"
[ "$a" = "$b" ] || { echo "repro-init: FAIL: cocoon-init differs between the two builds" >&2; exit 1; }
echo "repro-init: cocoon-init is bit-identical across build directories"
