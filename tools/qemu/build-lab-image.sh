#!/bin/bash
# Build a plain Debian ARM guest for QEMU (run as root, Debian host): the lab image
# the runner boots when no provisioned image (meshlet-provision image) is given.
#   build-lab-image.sh OUT_DIR DEB_CACHE SSH_KEY [arm64|armhf] [SUITE]
# Produces OUT_DIR/{vmlinuz,initrd.img,rootfs.ext4,dtbs/,build.json}; tools/qemu/labimage.py
# calls it with OUT_DIR keyed by a hash of this script, guest/ and the package list.
# Env: MIRROR (default http://deb.debian.org/debian), EXTRA_PKGS (comma list),
#      ROOT_PW (default "root"), KEEP_ROOTFS=1 keeps the unpacked tree,
#      SLACK_MB (free space added to the ext4 image, default 512).
# Needs: mmdebstrap, arch-test, qemu-user-static (binfmt_misc is mounted and the
# qemu-aarch64/qemu-arm handlers registered here if missing), e2fsprogs >= 1.43.
set -euo pipefail
OUT=${1:?usage: build-lab-image.sh OUT_DIR DEB_CACHE SSH_KEY [arm64|armhf] [SUITE]}
DEBS=${2:?usage: build-lab-image.sh OUT_DIR DEB_CACHE SSH_KEY [arm64|armhf] [SUITE]}
SSH_KEY=${3:?usage: build-lab-image.sh OUT_DIR DEB_CACHE SSH_KEY [arm64|armhf] [SUITE]}
ARCH=${4:-arm64}
SUITE=${5:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT_PW=${ROOT_PW:-root}
SLACK_MB=${SLACK_MB:-512}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT" "$DEBS"
OUT=$(cd "$OUT" && pwd)
DEBS=$(cd "$DEBS" && pwd)

case "$ARCH" in
  arm64) KPKG=linux-image-arm64; QARCH=aarch64 ;;
  armhf) KPKG=linux-image-armmp; QARCH=arm ;;
  *) echo "unsupported arch $ARCH" >&2; exit 2 ;;
esac

need() { command -v "$1" >/dev/null || { echo "missing $1 (apt-get install $2)" >&2; exit 2; }; }
need mmdebstrap mmdebstrap; need arch-test arch-test; need mkfs.ext4 e2fsprogs
need "qemu-$QARCH-static" qemu-user-static

# binfmt_misc: mount and register the static handler (flag F) if not done yet.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$QARCH" ]; then
  cat "/usr/lib/binfmt.d/qemu-$QARCH.conf" > /proc/sys/fs/binfmt_misc/register
fi

PKGS="systemd-sysv,udev,kmod,iproute2,iputils-ping,procps,python3,python3-nacl,dropbear,netcat-openbsd,wireguard-tools,$KPKG"
[ -n "${EXTRA_PKGS:-}" ] && PKGS="$PKGS,$EXTRA_PKGS"

ROOT="$OUT/rootfs"
rm -rf "$ROOT" "$OUT/rootfs.ext4.tmp"
t0=$(date +%s)
# The .deb cache in $OUT/debs is reused by later builds (sync-in/sync-out).
mmdebstrap --mode=root --arch="$ARCH" --variant=apt \
  --include="$PKGS" \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --skip=essential/unlink \
  --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs' \
  --essential-hook='printf "#!/bin/sh\nexit 0\n" > "$1"/usr/sbin/update-initramfs; chmod 755 "$1"/usr/sbin/update-initramfs' \
  --essential-hook='mkdir -p "$1"/etc/initramfs-tools/conf.d "$1"/etc/initramfs-tools/hooks' \
  --essential-hook='printf "MODULES=list\nCOMPRESS=gzip\n" > "$1"/etc/initramfs-tools/conf.d/lab.conf' \
  --essential-hook="upload '$HERE/guest/initramfs-hook' /etc/initramfs-tools/hooks/zz-lab" \
  --essential-hook='chmod 755 "$1"/etc/initramfs-tools/hooks/zz-lab' \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in '$DEBS' /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives '$DEBS'" \
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
  --customize-hook="upload '$HERE/guest/lab-init' /usr/local/sbin/lab-init" \
  --customize-hook="upload '$HERE/guest/lab-net' /usr/local/sbin/lab-net" \
  --customize-hook="upload '$HERE/guest/lab-job' /usr/local/sbin/lab-job" \
  --customize-hook="upload '$HERE/guest/lab-net.service' /etc/systemd/system/lab-net.service" \
  --customize-hook="upload '$HERE/guest/lab-job.service' /etc/systemd/system/lab-job.service" \
  --customize-hook='chmod 755 "$1"/usr/local/sbin/lab-init "$1"/usr/local/sbin/lab-net "$1"/usr/local/sbin/lab-job' \
  --customize-hook='echo meshlet-guest > "$1"/etc/hostname' \
  --customize-hook='printf "127.0.0.1 localhost\n127.0.1.1 meshlet-guest\n" > "$1"/etc/hosts' \
  --customize-hook='printf "LABEL=meshlet-root / ext4 rw,noatime 0 1\n" > "$1"/etc/fstab' \
  --customize-hook='ln -sf /run/resolv.conf "$1"/etc/resolv.conf' \
  --customize-hook="echo 'root:$ROOT_PW' | chroot \"\$1\" chpasswd" \
  --customize-hook='chroot "$1" systemctl enable lab-net.service lab-job.service' \
  --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-timesyncd.service' \
  --customize-hook='mkdir -p "$1"/root/.ssh && chmod 700 "$1"/root/.ssh' \
  --customize-hook='rm -f "$1"/usr/sbin/update-initramfs; chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs' \
  --customize-hook='chroot "$1" update-initramfs -c -k all' \
  "$SUITE" "$ROOT" "$MIRROR"
t1=$(date +%s)

# SSH key for the host side (dropbear accepts OpenSSH authorized_keys).
cp "$SSH_KEY.pub" "$ROOT/root/.ssh/authorized_keys"

# Kernel + initrd next to the image (QEMU boots them directly, no bootloader).
cp -L "$ROOT"/boot/vmlinuz-* "$OUT/vmlinuz"
cp -L "$ROOT"/boot/initrd.img-* "$OUT/initrd.img"
KVER=$(basename "$ROOT"/boot/vmlinuz-* | sed 's/^vmlinuz-//')
# Device trees (for -M raspi3b / raspi2b experiments), only the Pi ones.
mkdir -p "$OUT/dtbs"
find "$ROOT/usr/lib/linux-image-$KVER" -name 'bcm2*.dtb' -exec cp {} "$OUT/dtbs/" \; 2>/dev/null || true

used_mb=$(du -sm "$ROOT" | cut -f1)
size_mb=$(( used_mb + used_mb / 5 + SLACK_MB ))
mkfs.ext4 -q -F -L meshlet-root -E root_owner=0:0 -d "$ROOT" "$OUT/rootfs.ext4.tmp" "${size_mb}M"
mv "$OUT/rootfs.ext4.tmp" "$OUT/rootfs.ext4"
t2=$(date +%s)
[ "${KEEP_ROOTFS:-0}" = 1 ] || rm -rf "$ROOT"

cat > "$OUT/build.json" <<JSON
{"arch": "$ARCH", "suite": "$SUITE", "kernel": "$KVER",
 "rootfs_mb": $used_mb, "image_mb": $size_mb,
 "mmdebstrap_s": $((t1 - t0)), "mkfs_s": $((t2 - t1))}
JSON
cat "$OUT/build.json"
