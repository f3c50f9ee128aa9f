#!/usr/bin/env bash
# The GPU image variant's worker: cocoon-worker linked dynamically against glibc, so that it can
# load NVIDIA's libnvidia-ml at run time (a static program cannot dlopen). Same optimisation
# flags as the workspace's static build (.cargo/config.toml) minus crt-static; its own target
# directory, so the two flag sets never rebuild each other's artifacts. Put on a root disk with
# its libraries: cocoon-image build --role worker --root-disk
#   --root-packages image-builder/gpu-root.toml --service <this binary> (docs/gpu-attestation.md).
# Prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu-worker
RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build --release --locked -p cocoon-worker \
    --bin cocoon-worker --target-dir "$dir" >&2
bin=$dir/x86_64-unknown-linux-gnu/release/cocoon-worker
# The point of this build: an interpreter, so dlopen works.
readelf -l "$bin" | grep -q "Requesting program interpreter" || {
    echo "ci/build-gpu-worker.sh: $bin is not dynamically linked" >&2
    exit 1
}
echo "$PWD/$bin"
