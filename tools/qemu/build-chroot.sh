#!/bin/bash
# Build a foreign-arch Debian chroot for qemu-user (binfmt_misc) test runs.
#   build-chroot.sh OUT_DIR DEB_CACHE [arm64|armhf] [SUITE]
# Env: MIRROR, PKGS (comma list).  tools/qemu/chroot.py calls this with OUT_DIR
# keyed by a hash of this script and the package list; run it by hand only to debug.
# No kernel, no init: much faster to build than a full-system image (QEMU.md §2).
set -euo pipefail
OUT=${1:?usage: build-chroot.sh OUT_DIR DEB_CACHE [arm64|armhf] [SUITE]}
DEBS=${2:?usage: build-chroot.sh OUT_DIR DEB_CACHE [arm64|armhf] [SUITE]}
ARCH=${3:-arm64}
SUITE=${4:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PKGS=${PKGS:-python3,python3-nacl,python3-pytest,iproute2}
case "$ARCH" in arm64) QARCH=aarch64 ;; armhf) QARCH=arm ;; *) echo "unsupported arch $ARCH" >&2; exit 2 ;; esac
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e "/proc/sys/fs/binfmt_misc/qemu-$QARCH" ] || cat "/usr/lib/binfmt.d/qemu-$QARCH.conf" > /proc/sys/fs/binfmt_misc/register
mkdir -p "$DEBS"
DEBS=$(cd "$DEBS" && pwd)
rm -rf "$OUT" "$OUT.tmp"
# Trixie+ arm64 binaries use pointer authentication: qemu-user's default "max"
# CPU emulates it very slowly, so turn it off for the maintainer scripts too.
[ "$ARCH" = arm64 ] && export QEMU_CPU=${QEMU_CPU:-max,pauth=off}
mmdebstrap --mode=root --arch="$ARCH" --variant=apt --include="$PKGS" \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --skip=essential/unlink \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in '$DEBS' /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives '$DEBS'" \
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
  "$SUITE" "$OUT.tmp" "$MIRROR"
mv "$OUT.tmp" "$OUT"
