#!/bin/bash
# The from-scratch base image's root tree: Debian (bookworm) for arm64 or armhf, built with
# mmdebstrap under qemu-user, no loop mounts.  meshlet_provision.image.scratch runs this and
# turns OUT/rootfs + OUT/boot into an MBR disk image; the image cache is keyed by a hash of
# this directory, so any change here means a new base image.
#   build-base.sh OUT ARCH SUITE MIRROR DEBCACHE
# Produces OUT/rootfs (the tree, for mke2fs -d) and OUT/boot/{vmlinuz,initrd.img,dtbs/,kernel.txt}.
set -euo pipefail
OUT=${1:?usage: build-base.sh OUT ARCH SUITE MIRROR DEBCACHE}
ARCH=${2:?arch}; SUITE=${3:?suite}; MIRROR=${4:?mirror}; DEBS=${5:?deb cache dir}
HERE=$(cd "$(dirname "$0")" && pwd)
case "$ARCH" in
  arm64) KPKG=linux-image-arm64; QARCH=aarch64 ;;
  armhf) KPKG=linux-image-armmp; QARCH=arm ;;
  *) echo "build-base.sh: unsupported arch $ARCH (arm64 or armhf)" >&2; exit 2 ;;
esac
# binfmt_misc: mount and register the static qemu handler (flag F) if not done yet.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$QARCH" ]; then
  cat "/usr/lib/binfmt.d/qemu-$QARCH.conf" > /proc/sys/fs/binfmt_misc/register
fi
PKGS=$(grep -v '^#' "$HERE/packages.txt" | grep -v '^$' | tr '\n' ',')$KPKG
mkdir -p "$OUT" "$DEBS"
ROOT="$OUT/rootfs"
rm -rf "$ROOT" "$OUT/boot"
echo "build-base: mmdebstrap $SUITE $ARCH (about 4 minutes under qemu-user)" >&2
# update-initramfs is a no-op during the install and runs once at the end with
# MODULES=list: initramfs-tools' defaults under qemu-user take 20 minutes.
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
  --essential-hook='printf "MODULES=list\nCOMPRESS=gzip\n" > "$1"/etc/initramfs-tools/conf.d/meshlet.conf' \
  --essential-hook="upload '$HERE/initramfs-hook' /etc/initramfs-tools/hooks/zz-meshlet" \
  --essential-hook='chmod 755 "$1"/etc/initramfs-tools/hooks/zz-meshlet' \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in '$DEBS' /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives '$DEBS'" \
  --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
  --customize-hook="upload '$HERE/lab-net' /usr/local/sbin/lab-net" \
  --customize-hook='chmod 755 "$1"/usr/local/sbin/lab-net' \
  --customize-hook="upload '$HERE/lab-net.service' /etc/systemd/system/lab-net.service" \
  --customize-hook="upload '$HERE/50-dhcp.network' /etc/systemd/network/50-dhcp.network" \
  --customize-hook='echo meshlet > "$1"/etc/hostname' \
  --customize-hook='printf "127.0.0.1 localhost\n127.0.1.1 meshlet\n" > "$1"/etc/hosts' \
  --customize-hook='printf "LABEL=meshlet-root / ext4 rw,noatime 0 1\nLABEL=bootfs /boot/firmware vfat rw,fmask=0177,dmask=0077,nofail,x-systemd.device-timeout=15s 0 2\n" > "$1"/etc/fstab' \
  --customize-hook='mkdir -p "$1"/boot/firmware' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd.service systemd-resolved.service lab-net.service' \
  --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer' \
  --customize-hook='rm -f "$1"/usr/sbin/update-initramfs; chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs' \
  --customize-hook='chroot "$1" update-initramfs -c -k all' \
  "$SUITE" "$ROOT" "$MIRROR"
# systemd-resolved's stub; in the tree it is a dangling link until boot, which mke2fs keeps.
ln -sf /run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
mkdir -p "$OUT/boot/dtbs"
cp -L "$ROOT"/boot/vmlinuz-* "$OUT/boot/vmlinuz"
cp -L "$ROOT"/boot/initrd.img-* "$OUT/boot/initrd.img"
KVER=$(basename "$ROOT"/boot/vmlinuz-* | sed 's/^vmlinuz-//')
echo "$KVER" > "$OUT/boot/kernel.txt"
# Raspberry Pi device trees only (QEMU's raspi machines and real Pis booted by U-Boot/firmware).
find "$ROOT/usr/lib/linux-image-$KVER" -name 'bcm2*.dtb' -exec cp {} "$OUT/boot/dtbs/" \; 2>/dev/null || true
echo "build-base: kernel $KVER, tree $(du -sm "$ROOT" | cut -f1) MB" >&2
