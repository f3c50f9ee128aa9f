#!/usr/bin/env bash
# Installs what the guest-appliance build and tests need on Debian bookworm (idempotent):
#   - bookworm-backports as an apt source (QEMU 10 lives there),
#   - qemu-system-x86 from bookworm-backports (plain bookworm's 7.2 conflicts with the
#     preinstalled qemu-utils 10; see ../shared/ENVIRONMENT.md),
#   - cryptsetup-bin (veritysetup: cross-checks our dm-verity trees), erofs-utils (fsck.erofs:
#     checks and extracts the root disks cocoon-image writes), xz-utils and binutils
#     (cocoon-image reads module dependencies with `xz -dc` and strips binaries with `strip`),
#   - curl: cocoon-image downloads the pinned guest kernel packages (Debian trixie-backports,
#     image-builder/kernel.toml) by URL into ~/.cache/cocoon/kernel and checks their SHA-256;
#     no apt source is needed for the kernel and apt's own state is not touched.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "guest-deps: not root and no sudo; install qemu-system-x86 (bookworm-backports), cryptsetup-bin, erofs-utils, xz-utils, binutils, curl yourself" >&2
    exit 1
  fi
fi

have_all() {
  command -v qemu-system-x86_64 >/dev/null && command -v veritysetup >/dev/null &&
    command -v fsck.erofs >/dev/null &&
    command -v xz >/dev/null && command -v strip >/dev/null && command -v curl >/dev/null &&
    command -v dpkg-deb >/dev/null &&
    grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/
}
if have_all; then
  echo "guest-deps: all present ($(qemu-system-x86_64 --version | head -1))"
  exit 0
fi

if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "guest-deps: adding bookworm-backports to apt sources"
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
    $SUDO tee /etc/apt/sources.list.d/cocoon-bookworm-backports.sources >/dev/null
fi
$SUDO apt-get update -qq
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
$SUDO apt-get install -y -qq cryptsetup-bin erofs-utils xz-utils binutils curl >/dev/null
echo "guest-deps: installed ($(qemu-system-x86_64 --version | head -1))"
