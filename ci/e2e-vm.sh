#!/usr/bin/env bash
# The guest appliance end to end under QEMU TCG with the simulated TDX platform:
#
#  1. reproducibility: build the proxy and worker images twice in different directories and
#     compare the SHA-256 of every artifact (listed in the log);
#  2. a tiny generated GGUF on a dm-verity model disk (cocoon-image tiny-gguf + model);
#  3. boot the proxy VM and the worker VM; the proxy pins the worker image hash and the RTMR3 of
#     its config, the host's cocoon-client pins the proxy image hash (from the freshly built
#     manifest) and its RTMR3; a chat completion comes back client → proxy VM → worker VM;
#  4. a client pinned to a manifest from a different build refuses the proxy;
#  5. one changed byte in the worker's config changes RTMR3 and the proxy refuses that worker;
#  6. one flipped byte in the model disk: the worker VM stops with exit 20 before serving;
#  7. a service that keeps failing is restarted with backoff, then init gives up (exit 31);
#  8. SIGTERM to the launcher powers the proxy VM off cleanly (exit 0);
#  9. the worker that serves in 3. is built with a root disk (`--root-disk`: the service, the GPU
#     variant's pinned NVIDIA user space (image-builder/gpu-root.toml) and an extra tree on
#     EROFS under dm-verity, the root hash on the measured command line; fsck.erofs
#     from erofs-utils extracts it and must find the same files), and a module listed on the root
#     disk is loaded after the switch; one flipped byte in the root disk: exit 22 before serving;
#     a root disk cut short: exit 21.
#     The crash and tampered-model checks boot the initramfs-only worker image.
# 10. that serving worker is the GPU variant's dynamically linked build (ci/build-gpu-worker.sh,
#     `--service`), with glibc from the pinned packages on its root disk; booted with
#     `[gpu] kind = "nvml"` it loads NVML, which finds no NVIDIA driver (no GPU under TCG): the
#     worker exits 4 naming that, the way it would on a host whose GPU is not set up.
#
# Figures (boot-to-ready, initramfs sizes, image build time) are printed as `figure:` lines.
# Environment: COCOON_BIN_DIR (default target/x86_64-unknown-linux-gnu/release), COCOON_GPU_WORKER
# (default: built by ci/build-gpu-worker.sh), QEMU from PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/${COCOON_BIN_DIR:-target/x86_64-unknown-linux-gnu/release}
GPU_WORKER=${COCOON_GPU_WORKER:-$(ci/build-gpu-worker.sh)}
W=$(mktemp -d /tmp/cocoon-e2e-vm.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 2
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    pkill -f "qemu-system-x86_64 -name cocoon-.*$W" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
say() { echo "e2e-vm: $*"; }
fail() {
    echo "e2e-vm: FAIL: $*" >&2
    for f in "$W"/*.out; do echo "---- $f" >&2; tail -40 "$f" >&2; done
    exit 1
}
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
# wait_for FILE PATTERN SECS
wait_for() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# ---- 1. images, twice, compared ------------------------------------------------------------
# The root disk's extra tree: a library-like file, a symlink, and a module list naming one
# module of the pinned kernel that nothing else loads (cocoon-init loads it after switching to
# the root disk, the way a GPU image variant is to load the NVIDIA modules).
KREL=$(sed -n 's/^release = "\(.*\)"/\1/p' image-builder/kernel.toml)
EXTRA_MODULE=kernel/drivers/char/hw_random/virtio-rng.ko.xz
mkdir -p "$W/extra/usr/lib/cocoon-extra" "$W/extra/etc/cocoon"
printf 'not a real library\n' >"$W/extra/usr/lib/cocoon-extra/libextra.so.1.2"
chmod 0644 "$W/extra/usr/lib/cocoon-extra/libextra.so.1.2"
ln -s libextra.so.1.2 "$W/extra/usr/lib/cocoon-extra/libextra.so.1"
printf '%s/%s\n' "$KREL" "$EXTRA_MODULE" >"$W/extra/etc/cocoon/modules"
build_image() { # ROLE OUT [ARGS...]
    local role=$1 out=$2
    shift 2
    "$BIN/cocoon-image" build --role "$role" --out "$out" --source-commit e2e "$@"
}
for kind in proxy worker worker-root; do
    role=${kind%-root}
    args=()
    if [ "$kind" = worker-root ]; then
        # The GPU variant's pinned user space (NVML, GSP firmware) too: downloaded once into
        # ~/.cache/cocoon/kernel and checked against image-builder/gpu-root.toml.
        args=(--root-disk --root-packages "$ROOT/image-builder/gpu-root.toml" --root-extra "$W/extra"
            --service "$GPU_WORKER")
        # The module itself comes from the kernel tree the earlier builds unpacked.
        src=$(find "${HOME}/.cache/cocoon/kernel" -path "*/$KREL/$EXTRA_MODULE" | head -1)
        [ -n "$src" ] || fail "no $EXTRA_MODULE in the unpacked kernel under ~/.cache/cocoon/kernel"
        mkdir -p "$W/extra/lib/modules/$KREL/$(dirname "$EXTRA_MODULE")"
        cp "$src" "$W/extra/lib/modules/$KREL/$EXTRA_MODULE"
    fi
    t=$(now)
    build_image $role "$W/a/$kind" "${args[@]}" >"$W/build-$kind.log" 2>&1 ||
        { cat "$W/build-$kind.log"; fail "cocoon-image build --role $role ${args[*]}"; }
    say "figure: image build ($kind, after binaries) $(elapsed "$t") s"
    mkdir -p "$W/b/elsewhere"
    (cd "$W/b/elsewhere" && build_image $role "../../b2/$kind" "${args[@]}" >/dev/null 2>&1) ||
        fail "second build of $kind"
    files="vmlinuz initramfs.cpio.gz cmdline manifest.json"
    [ "$kind" = worker-root ] && files="$files root.img"
    for f in $files; do
        a=$(sha256sum "$W/a/$kind/$f" | cut -d' ' -f1)
        b=$(sha256sum "$W/b2/$kind/$f" | cut -d' ' -f1)
        echo "  $a  $kind/$f"
        [ "$a" = "$b" ] || fail "$kind/$f differs between builds ($a vs $b)"
    done
    say "figure: initramfs ($kind) $(stat -c %s "$W/a/$kind/initramfs.cpio.gz") bytes"
done
say "figure: root disk (worker-root: EROFS + hash tree) $(stat -c %s "$W/a/worker-root/root.img") bytes"
grep -q "cocoon.root=" "$W/a/worker-root/cmdline" || fail "the root-disk image's command line names no root disk"
# An independent reader: fsck.erofs (erofs-utils) checks the filesystem and extracts it; the
# files must be the ones the build put there (the extra tree as is, the stripped service).
fsck.erofs --extract="$W/fsck" "$W/a/worker-root/root.img" >"$W/fsck.log" 2>&1 ||
    { cat "$W/fsck.log"; fail "fsck.erofs on the root disk"; }
for p in usr/lib/cocoon-extra/libextra.so.1.2 etc/cocoon/modules "lib/modules/$KREL/$EXTRA_MODULE"; do
    cmp "$W/extra/$p" "$W/fsck/$p" || fail "fsck.erofs extracted a different $p"
done
[ "$(readlink "$W/fsck/usr/lib/cocoon-extra/libextra.so.1")" = libextra.so.1.2 ] || fail "symlink on the root disk"
strip --strip-all -o "$W/worker.stripped" "$GPU_WORKER"
cmp "$W/worker.stripped" "$W/fsck/bin/cocoon-worker" || fail "the root disk's service binary differs from the stripped GPU worker build"
[ -x "$W/fsck/bin/cocoon-worker" ] || fail "service binary not executable on the root disk"
readelf -l "$W/fsck/bin/cocoon-worker" | grep -q "interpreter: /lib64/ld-linux-x86-64.so.2" ||
    fail "the root disk's worker is not the dynamically linked GPU build"
grep -q "dynamically linked objects find their loader and libraries" "$W/build-worker-root.log" ||
    fail "cocoon-image did not check the root disk's libraries"
# The same build refuses a dynamically linked service without its libraries (no
# --root-packages), naming the first one missing, and outside a root disk altogether.
if build_image worker "$W/nolibs" --root-disk --service "$GPU_WORKER" >"$W/nolibs.log" 2>&1; then
    fail "a dynamically linked worker without its libraries was built"
fi
grep -q "needs the dynamic loader /lib64/ld-linux-x86-64.so.2" "$W/nolibs.log" || fail "no-libraries build: $(tail -3 "$W/nolibs.log")"
if build_image worker "$W/noroot" --service "$GPU_WORKER" >"$W/noroot.log" 2>&1; then
    fail "a dynamically linked worker was put in an initramfs"
fi
grep -q "dynamically linked; build it with crt-static, or put it on a root disk" "$W/noroot.log" || fail "initramfs build: $(tail -3 "$W/noroot.log")"
# The pinned packages' files, against the .debs unpacked here by dpkg-deb (not by cocoon-image).
for deb in "$HOME"/.cache/cocoon/kernel/libnvidia-ml1_550.163.01-2_amd64.deb "$HOME"/.cache/cocoon/kernel/firmware-nvidia-gsp_550.163.01-2_amd64.deb; do
    dpkg-deb -x "$deb" "$W/debs"
done
cmp "$W/debs/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.550.163.01" "$W/fsck/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.163.01" ||
    fail "NVML on the root disk differs from the pinned package's"
[ "$(readlink "$W/fsck/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1")" = libnvidia-ml.so.550.163.01 ] || fail "libnvidia-ml.so.1 link"
diff -r "$W/debs/usr/lib/firmware/nvidia/550.163.01" "$W/fsck/lib/firmware/nvidia/550.163.01" >/dev/null ||
    fail "GSP firmware on the root disk differs from the pinned package's"
for d in dev proc sys run tmp; do [ -d "$W/fsck/$d" ] || fail "no /$d mount point on the root disk"; done
say "root disk: fsck.erofs extracts the same files ($(find "$W/fsck" | wc -l) entries)"
"$BIN/cocoon-image" verify-root --image "$W/a/worker-root" >/dev/null || fail "cocoon-image verify-root on the built image"
say "reproducible: both builds identical"
# An auditor's recomputation from the artifacts alone gives the manifest's RTMR1/RTMR2 (the
# guests below are then accepted under exactly the manifest's image hash, which covers them).
for role in proxy worker worker-root; do
    d=$W/a/$role
    got=$("$BIN/cocoon-measure" compute --kernel "$d/vmlinuz" --initrd "$d/initramfs.cpio.gz" \
        --cmdline "$(cat "$d/cmdline")" --qemu-header unpatched --memory 2G --json |
        python3 -c "import json,sys; d=json.load(sys.stdin); print(d['rtmr1'], d['rtmr2'])")
    want=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['registers']['rtmr']; print(r[1], r[2])" "$d/manifest.json")
    [ "$got" = "$want" ] || fail "cocoon-measure compute ($role): $got, manifest: $want"
done
say "cocoon-measure compute reproduces RTMR1/RTMR2 of both manifests"
# The release manifest content each build writes (measurement.json) signs and verifies as is,
# and a diff between the two roles names what differs.
PUB=$("$BIN/cocoon-measure" manifest keygen --out "$W/publisher.key")
"$BIN/cocoon-measure" manifest sign --manifest "$W/a/proxy/measurement.json" --key "$W/publisher.key" --out "$W/proxy.signed.json"
"$BIN/cocoon-measure" manifest verify --signed "$W/proxy.signed.json" --publisher-key "$PUB" >/dev/null ||
    fail "signed measurement.json does not verify"
set +e
# "another proxy build": the worker's build record relabelled as a proxy (other initramfs and
# cmdline, same kernel), so the diff must blame RTMR2 on those artifacts.
python3 - "$W/a/worker/manifest.json" "$W/other-proxy.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["role"] = "proxy"
json.dump(m, open(sys.argv[2], "w"))
PY
"$BIN/cocoon-measure" manifest diff "$W/a/proxy/manifest.json" "$W/other-proxy.json" >"$W/diff.txt"
rc=$?
set -e
[ $rc = 1 ] && grep -q "rtmr2 differs" "$W/diff.txt" && grep -q "initramfs.cpio.gz changed" "$W/diff.txt" || fail "manifest diff between roles (exit $rc): $(cat "$W/diff.txt")"
say "signed release manifest verifies; diff names the register and the artifact: $(grep -m1 -A1 "rtmr2 differs" "$W/diff.txt" | tr '\n' ' ' | head -c 200)"
PIMG=$(json "$W/a/proxy/manifest.json" "['image_hash']")
# The worker that serves is the root-disk build; the initramfs-only build boots in 6 and 7.
WIMG=$(json "$W/a/worker-root/manifest.json" "['image_hash']")

# ---- 2. model disk ------------------------------------------------------------------------
"$BIN/cocoon-image" tiny-gguf --out "$W/tiny.gguf" --seed 7 >/dev/null
"$BIN/cocoon-image" model --gguf "$W/tiny.gguf" --out "$W/model" --name tiny >/dev/null 2>&1 ||
    fail "cocoon-image model"
M=$W/model/model.json

# ---- 3. configs ---------------------------------------------------------------------------
STATE=$W/state
"$BIN/cocoon-host" sim-platform --state-dir "$STATE" >/dev/null
mkdir -p "$W/cfg"
cp "$STATE/sim-root.der" "$W/cfg/sim-root.der"

# Service configs come from `cocoon-host config` (the services' own config types): `--mode
# sim-vm` is the simulated platform cocoon-init copies from fw_cfg, RTMR3 starting from the
# runtime log cocoon-init wrote, peers trusted under the simulated root on the config disk.
worker_files() { # DIR MAX_RESTARTS EXTRA_ARG
    mkdir -p "$1"
    cat >"$1/init.toml" <<EOF
role = "worker"
[network]
address = "10.0.2.15/24"
gateway = "10.0.2.2"
[model]
file_name = "tiny.gguf"
data_blocks = $(json "$M" "['data_blocks']")
root_hash = "$(json "$M" "['root_hash']")"
salt = "$(json "$M" "['salt']")"
[service]
args = ["--config", "/run/cocoon/config/service.toml"$3]
env = { RUST_LOG = "info", NO_COLOR = "1" }
max_restarts = $2
EOF
    "$BIN/cocoon-host" config worker --mode sim-vm --name vm-worker --proxy 10.0.2.2:19101 \
        --capacity 4 --image "$PIMG" --model tiny --gguf /run/cocoon/models/tiny.gguf \
        --max-completion-tokens 64 --out "$1/service.toml" || fail "cocoon-host config worker"
}
vm_toml() { # FILE NAME ROLE FILES_DIR MODEL_IMG [IMAGE_DIR]
    cat >"$1" <<EOF
name = "$2"
role = "$3"
image = "${6:-$W/a/$3}"
tee = "sim"
cpus = 2
memory = "2G"
state_dir = "$STATE"

[guest.files]
"init.toml" = "$4/init.toml"
"service.toml" = "$4/service.toml"
"sim-root.der" = "$W/cfg/sim-root.der"
EOF
    if [ "$3" = worker ]; then
        cat >>"$1" <<EOF

[disks]
model = "$5"
model_verity = "$W/model/model.verity"
EOF
    else
        cat >>"$1" <<EOF

[[network.forwards]]
name = "workers"
host = 19101
guest = 9101

[[network.forwards]]
name = "clients"
host = 19102
guest = 9102
EOF
    fi
}
# launch_refused VM_TOML INSTANCE OUT CODE WHAT: the guest stops by itself with cocoon-init exit
# CODE, so the launcher exits 1.
launch_refused() {
    local rc
    set +e
    "$BIN/cocoon-host" launch "$1" --instance "$2" >"$3" 2>&1
    rc=$?
    set -e
    [ $rc = 1 ] || fail "$5: launcher exit $rc, expected 1"
    grep -q "\"code\":$4" "$3" || fail "$5: no exit $4 on the console"
}
config_sha() { # VM_TOML INSTANCE
    local sha
    sha=$("$BIN/cocoon-host" launch "$1" --instance "$2" --print 2>&1 | sed -n 's/.*config disk  sha256 \([0-9a-f]*\).*/\1/p')
    [ -n "$sha" ] || fail "no config disk digest from --print $1"
    echo "$sha"
}
config_rtmr3() { # VM_TOML INSTANCE
    local sha
    sha=$(config_sha "$1" "$2")
    "$BIN/cocoon-measure" eventlog expect-config --config-sha256 "$sha" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['rtmr3'])"
}

worker_files "$W/cfg/worker" 5 ""
vm_toml "$W/worker.toml" worker worker "$W/cfg/worker" "$W/model/model.img" "$W/a/worker-root"
WRTMR3=$(config_rtmr3 "$W/worker.toml" 1)
mkdir -p "$W/cfg/proxy"
cat >"$W/cfg/proxy/init.toml" <<EOF
role = "proxy"
[network]
address = "10.0.2.15/24"
gateway = "10.0.2.2"
[service]
args = ["--config", "/run/cocoon/config/service.toml"]
env = { RUST_LOG = "info", NO_COLOR = "1" }
EOF
"$BIN/cocoon-host" config proxy --mode sim-vm --name vm-proxy --worker-listen 0.0.0.0:9101 \
    --client-listen 0.0.0.0:9102 --admin-listen 127.0.0.1:9100 --max-prompt-tokens 4096 \
    --default-balance-nano 1000000000000 --image "$WIMG" --rtmr3 "$WRTMR3" \
    --model-pin "tiny=$(json "$M" "['image_sha256']")" --out "$W/cfg/proxy/service.toml" ||
    fail "cocoon-host config proxy"
vm_toml "$W/proxy.toml" proxy proxy "$W/cfg/proxy"
PRTMR3=$(config_rtmr3 "$W/proxy.toml" 0)
say "expected rtmr3: worker $WRTMR3, proxy $PRTMR3"

# ---- boot both ----------------------------------------------------------------------------
t=$(now)
"$BIN/cocoon-host" launch "$W/proxy.toml" --instance 0 >"$W/proxy.out" 2>&1 &
PROXY=$!
PIDS+=("$PROXY")
wait_for "$W/proxy.out" "cocoon-host: ready" 180 || fail "proxy VM not ready"
say "figure: proxy VM boot-to-ready (TCG) $(elapsed "$t") s"
t=$(now)
"$BIN/cocoon-host" launch "$W/worker.toml" --instance 1 >"$W/worker.out" 2>&1 &
WORKER=$!
PIDS+=("$WORKER")
wait_for "$W/worker.out" "cocoon-host: ready" 300 || fail "worker VM not ready"
say "figure: worker VM (root disk) boot-to-ready incl. model load (TCG) $(elapsed "$t") s"
grep -q '"stage":"root"' "$W/worker.out" || fail "the worker did not switch to its root disk"
grep '"from":"root disk"' "$W/worker.out" | grep -q '"loaded":1' ||
    fail "the module listed on the root disk was not loaded: $(grep -o '"stage":"modules[^}]*' "$W/worker.out" | tr '\n' ' ')"
say "figure: root disk checked at boot: $(grep -o '"verified_bytes":[0-9]*' "$W/worker.out") bytes in $(grep -o '"verify_ms":[0-9]*' "$W/worker.out") ms (TCG)"

# ---- client on the host -------------------------------------------------------------------
client_toml() { # DIR IMAGE RTMR3 PORT
    mkdir -p "$1"
    cp "$STATE/sim-root.der" "$1/"
    "$BIN/cocoon-host" config client --mode sim-vm --listen "127.0.0.1:$4" --proxy 127.0.0.1:19102 \
        --image "$2" --rtmr3 "$3" --worker-image "$WIMG" --worker-rtmr3 "$WRTMR3" \
        --out "$1/client.toml" || fail "cocoon-host config client"
}
client_toml "$W/client" "$PIMG" "$PRTMR3" 18181
"$BIN/cocoon-client" serve --config "$W/client/client.toml" >"$W/client.out" 2>&1 &
PIDS+=("$!")
wait_for "$W/client.out" "ready" 30 || fail "client not ready"
grep -q "proxy verified" "$W/client.out" || fail "client did not verify the proxy"
OUT=$(curl -sS --max-time 120 http://127.0.0.1:18181/v1/chat/completions -H 'content-type: application/json' \
    -d '{"model":"tiny","messages":[{"role":"user","content":"hello"}],"max_tokens":12,"temperature":0}')
echo "$OUT" | python3 -c '
import json, sys
r = json.load(sys.stdin)
text = r["choices"][0]["message"]["content"]
u = r["usage"]
assert text, "empty completion"
assert u["completion_tokens"] > 0 and u["prompt_tokens"] > 0, u
print("e2e-vm: completion from the tiny model on the dm-verity disk:", len(text), "chars,", u)
' || fail "chat completion through the VMs: $OUT"

# ---- 4. a manifest from a different build is refused ---------------------------------------
# The worker image's manifest stands in for "another build": right format, other registers.
client_toml "$W/client-wrong" "$WIMG" "$PRTMR3" 18182
"$BIN/cocoon-client" serve --config "$W/client-wrong/client.toml" >"$W/client-wrong.out" 2>&1 &
PIDS+=("$!")
wait_for "$W/client-wrong.out" "ready" 30 || fail "second client did not start"
CODE=$(curl -s -o "$W/wrong.json" -w '%{http_code}' --max-time 60 http://127.0.0.1:18182/v1/chat/completions \
    -H 'content-type: application/json' -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}]}')
grep -qi "image" "$W/client-wrong.out" "$W/wrong.json" || fail "refusal does not name the image ($CODE)"
[ "$CODE" != 200 ] || fail "a client pinned to another build's manifest got an answer"
say "client pinned to another manifest refused the proxy (HTTP $CODE): $(head -c 200 "$W/wrong.json")"

# ---- 4b. a signed manifest pins the proxy's runtime configuration through the client -------
# The release manifest names the proxy image and, from the proxy's config disk digest, its
# RTMR3; a client that pins only the publisher key gets both. A manifest listing another
# configuration (here the worker's config digest under the proxy role) is refused by RTMR3.
PSHA=$(config_sha "$W/proxy.toml" 0)
WSHA=$(config_sha "$W/worker.toml" 1)
for m in pinned:$PSHA otherconf:$WSHA; do
    "$BIN/cocoon-measure" manifest from-images --image "$W/a/proxy" --publisher "cocoon e2e-vm" \
        --config-sha256 "proxy=${m#*:}" --out "$W/${m%%:*}.json" >/dev/null 2>&1 || fail "manifest from-images (${m%%:*})"
    "$BIN/cocoon-measure" manifest sign --manifest "$W/${m%%:*}.json" --key "$W/publisher.key" \
        --out "$W/${m%%:*}.signed.json" >/dev/null || fail "manifest sign (${m%%:*})"
done
client_manifest_toml() { # DIR SIGNED_MANIFEST PORT
    mkdir -p "$1"
    cp "$STATE/sim-root.der" "$1/"
    cp "$2" "$1/manifest.json"
    "$BIN/cocoon-host" config client --mode sim-vm --listen "127.0.0.1:$3" --proxy 127.0.0.1:19102 \
        --manifest manifest.json --publisher-key "$PUB" --manifest-role proxy \
        --worker-image "$WIMG" --worker-rtmr3 "$WRTMR3" \
        --out "$1/client.toml" || fail "cocoon-host config client (manifest)"
}
client_manifest_toml "$W/client-pinned" "$W/pinned.signed.json" 18183
"$BIN/cocoon-client" serve --config "$W/client-pinned/client.toml" >"$W/client-pinned.out" 2>&1 &
PIDS+=("$!")
wait_for "$W/client-pinned.out" "ready" 30 || fail "manifest-pinned client did not start"
CODE=$(curl -s -o "$W/pinned-answer.json" -w '%{http_code}' --max-time 120 http://127.0.0.1:18183/v1/chat/completions \
    -H 'content-type: application/json' -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}],"max_tokens":4}')
[ "$CODE" = 200 ] || fail "client pinned through the manifest's RTMR3: HTTP $CODE $(head -c 300 "$W/pinned-answer.json")"
client_manifest_toml "$W/client-otherconf" "$W/otherconf.signed.json" 18184
"$BIN/cocoon-client" serve --config "$W/client-otherconf/client.toml" >"$W/client-otherconf.out" 2>&1 &
PIDS+=("$!")
wait_for "$W/client-otherconf.out" "ready" 30 || fail "second manifest-pinned client did not start"
CODE=$(curl -s -o "$W/otherconf.json" -w '%{http_code}' --max-time 60 http://127.0.0.1:18184/v1/chat/completions \
    -H 'content-type: application/json' -d '{"model":"tiny","messages":[{"role":"user","content":"hi"}]}')
[ "$CODE" != 200 ] || fail "a client whose manifest lists another proxy configuration got an answer"
grep -qi "rtmr3" "$W/client-otherconf.out" "$W/otherconf.json" || fail "refusal does not name rtmr3 ($CODE)"
say "manifest RTMR3 pins enforced through the client: listed config answered, other config refused (HTTP $CODE)"

# The remaining checks need the proxy only: free the CPU the worker VM takes under TCG.
kill -INT "$WORKER"
wait "$WORKER" || true

# ---- 5. one changed config byte: RTMR3 changes, the proxy refuses --------------------------
worker_files "$W/cfg/worker-changed" 5 ""
"$BIN/cocoon-host" config edit --role worker "$W/cfg/worker-changed/service.toml" --set capacity=5 \
    --out "$W/cfg/worker-changed/service.toml" || fail "cocoon-host config edit"
vm_toml "$W/worker-changed.toml" worker-changed worker "$W/cfg/worker-changed" "$W/model/model.img" "$W/a/worker-root"
CHANGED=$(config_rtmr3 "$W/worker-changed.toml" 2)
[ "$CHANGED" != "$WRTMR3" ] || fail "a changed config did not change RTMR3"
"$BIN/cocoon-host" launch "$W/worker-changed.toml" --instance 2 >"$W/worker-changed.out" 2>&1 &
CHANGED_PID=$!
PIDS+=("$CHANGED_PID")
wait_for "$STATE/instance-0/console.log" "rtmr3 mismatch" 300 || fail "proxy did not refuse the reconfigured worker"
say "proxy refused the reconfigured worker: $(grep -m1 -o 'rtmr3 mismatch[^"]*' "$STATE/instance-0/console.log" | head -c 160)"
kill -INT "$CHANGED_PID"
wait "$CHANGED_PID" || true

# ---- 6. tampered model disk --------------------------------------------------------------
cp "$W/model/model.img" "$W/tampered.img"
python3 - "$W/tampered.img" <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x01
open(p, "wb").write(b)
EOF
vm_toml "$W/worker-tampered.toml" worker-tampered worker "$W/cfg/worker" "$W/tampered.img"
launch_refused "$W/worker-tampered.toml" 3 "$W/worker-tampered.out" 20 "tampered model"
say "tampered model refused: $(grep -m1 -o 'model disk does not match[^"]*' "$W/worker-tampered.out" | head -c 160)"

# ---- 6b. tampered root disk ---------------------------------------------------------------
# The host flips one byte of the filesystem; the measured command line still names the
# original root hash, so dm-verity refuses the disk before anything runs from it.
# root_copy NAME HOW: a copy of the root-disk image in $W/NAME whose root.img the host changed
# (HOW = flip: one byte in the middle of the filesystem; cut: the last hash-tree block gone)
# and whose manifest.json it rewrote to match (the launcher's check is a convenience, not a
# defence).
root_copy() {
    cp -r "$W/a/worker-root" "$W/$1"
    python3 - "$W/$1" "$2" <<'EOF'
import hashlib, json, os, sys
d, how = sys.argv[1], sys.argv[2]
blocks = int(open(os.path.join(d, "cmdline")).read().split("cocoon.root=")[1].split(":")[0])
p = os.path.join(d, "root.img")
b = bytearray(open(p, "rb").read())
if how == "flip":
    b[blocks * 4096 // 2] ^= 0x01
elif how == "cut":
    b = b[:-4096]
else:
    sys.exit(f"root_copy: unknown change {how!r}")
open(p, "wb").write(b)
m = json.load(open(os.path.join(d, "manifest.json")))
m["artifacts"]["root.img"] = {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
EOF
}
root_copy root-tampered flip
if "$BIN/cocoon-image" verify-root --image "$W/root-tampered" >"$W/verify-root.out" 2>&1; then
    fail "cocoon-image verify-root accepted the tampered root disk"
fi
grep -q "does not match the command line's root hash" "$W/verify-root.out" || fail "verify-root: $(cat "$W/verify-root.out")"
vm_toml "$W/root-tampered.toml" root-tampered worker "$W/cfg/worker" "$W/model/model.img" "$W/root-tampered"
launch_refused "$W/root-tampered.toml" 5 "$W/root-tampered.out" 22 "tampered root disk"
if grep -q '"stage":"service' "$W/root-tampered.out"; then fail "tampered root disk: a service started"; fi
say "tampered root disk refused: $(grep -m1 -o 'root disk does not match[^"]*' "$W/root-tampered.out" | head -c 200)"
# A host that cuts the disk short: dm-verity refuses to map a hash device smaller than the
# tree the command line implies.
root_copy root-short cut
vm_toml "$W/root-short.toml" root-short worker "$W/cfg/worker" "$W/model/model.img" "$W/root-short"
launch_refused "$W/root-short.toml" 7 "$W/root-short.out" 21 "root disk cut short"
grep -q "the disk is shorter than the data and hash tree" "$W/root-short.out" || fail "short root disk: the reason does not say the disk is short"
if grep -q '"stage":"service' "$W/root-short.out"; then fail "short root disk: a service started"; fi
say "root disk cut short refused (exit 21): $(grep -m1 -o '"code":21,"reason":"[^"]*' "$W/root-short.out" | head -c 160)"

# ---- 6c. NVML on the GPU variant, without a GPU ---------------------------------------------
# The same root-disk image: the dynamically linked worker loads libnvidia-ml from the disk, and
# NVML's initialisation finds no NVIDIA driver (nvidia.ko is not built yet, and TCG has no GPU):
# the worker exits 4 naming that before it listens, and init gives up (no restarts configured).
worker_files "$W/cfg/worker-nvml" 0 ""
printf '\n[gpu]\nkind = "nvml"\n' >>"$W/cfg/worker-nvml/service.toml"
vm_toml "$W/worker-nvml.toml" worker-nvml worker "$W/cfg/worker-nvml" "$W/model/model.img" "$W/a/worker-root"
launch_refused "$W/worker-nvml.toml" 6 "$W/worker-nvml.out" 31 "NVML without a driver"
grep -q '"stage":"service-exit","status":"exit 4"' "$W/worker-nvml.out" || fail "NVML without a driver: the worker did not exit 4"
grep -q 'cannot initialise nvml (libnvidia-ml.so.1): NVIDIA driver is not loaded' "$W/worker-nvml.out" ||
    fail "NVML without a driver: $(grep -m3 -i 'nvml\|gpu' "$W/worker-nvml.out" | head -c 400)"
say "GPU variant: the dynamically linked worker loaded NVML from its root disk and stopped (exit 4): $(grep -m1 -o 'cannot initialise nvml[^"]*' "$W/worker-nvml.out" | head -c 160)"

# ---- 7. restart with backoff, then give up ------------------------------------------------
worker_files "$W/cfg/worker-crash" 2 ', "--no-such-flag"'
vm_toml "$W/worker-crash.toml" worker-crash worker "$W/cfg/worker-crash" "$W/model/model.img"
launch_refused "$W/worker-crash.toml" 4 "$W/worker-crash.out" 31 "crashing service"
[ "$(grep -c '"stage":"restart"' "$W/worker-crash.out")" = 2 ] || fail "expected 2 restarts"
grep -q '"in_ms":1000' "$W/worker-crash.out" && grep -q '"in_ms":2000' "$W/worker-crash.out" ||
    fail "expected backoff 1 s then 2 s"
say "crashing service restarted after 1 s and 2 s, then init gave up (exit 31)"

# ---- 8. SIGTERM: clean power-off ----------------------------------------------------------
kill -TERM "$PROXY"
set +e
wait "$PROXY"
rc=$?
set -e
[ $rc = 0 ] || fail "proxy launcher exit $rc after SIGTERM, expected 0"
grep -q '"stage":"exit","code":0' "$STATE/instance-0/console.log" || fail "proxy guest did not report a clean stop"
grep -q '"stage":"service-exit","status":"exit 0"' "$STATE/instance-0/console.log" ||
    fail "the proxy service did not stop on SIGTERM by itself (init had to kill it)"
say "SIGTERM: proxy VM powered off cleanly"
say "ok"
