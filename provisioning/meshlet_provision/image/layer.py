"""The meshlet layer: what `meshlet-provision image` adds to a Debian-family disk image.

One code path for both sources: a vendor image (--base) and the cached from-scratch base get
the same treatment, always on a copy.  Root filesystem (debugfs): meshlet and its wheels,
meshletd.service and meshlet-firstboot.service enabled by their wants symlinks,
/etc/default/meshletd from the board profile, the host name; with lab=True a root autologin
on the serial console and an SSH key for dropbear.  Boot partition (mtools): the enrollment
(meshlet/) and the cloud-init NoCloud files.
"""

from __future__ import annotations

import re
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import cloudinit, wheels
from .enrollment import SECRET_FILES, SETTINGS_FILE, Enrollment
from .errors import ImageError, PartitionTableError
from .ext4 import Ext4Fs
from .fat import FatFs
from .mbr import Partition, find_boot_and_root, read_table
from .progress import Progress

FIRSTBOOT_DIR = Path(__file__).resolve().parent / "firstboot"
WANTS = "/etc/systemd/system/multi-user.target.wants"
LIBDIR = "/usr/local/lib/meshlet"

MESHLETD_DROPIN = (
    "# Written by meshlet-provision image: the board profile's agent settings.\n"
    "[Service]\nEnvironmentFile=-/etc/default/meshletd\n"
)
AUTOLOGIN_DROPIN = (
    "# Lab images only (meshlet-provision image --lab): root is logged in on the serial console.\n"
    "[Service]\nExecStart=\n"
    "ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %I $TERM\n"
)


@dataclass(frozen=True)
class Layout:
    boot: Partition
    root: Partition
    python: str
    cmdline: str


def meshletd_unit() -> bytes:
    """The agent's own unit file (agent/meshlet_agent/systemd/meshletd.service)."""
    import meshlet_agent

    path = Path(meshlet_agent.__file__).resolve().parent / "systemd" / "meshletd.service"
    return path.read_bytes()


def inspect(image: Path) -> tuple[Partition, Partition]:
    """The boot and root partitions, checked by content (FAT boot sector, ext4 superblock magic)."""
    size = image.stat().st_size
    with open(image, "rb") as f:
        boot, root = find_boot_and_root(read_table(f, size))
        f.seek(boot.start + 510)
        if f.read(2) != b"\x55\xaa":
            raise PartitionTableError("partition %d is typed FAT but holds no FAT filesystem" % boot.number)
        f.seek(root.start + 1024 + 56)
        magic = f.read(2)
        if len(magic) < 2 or struct.unpack("<H", magic)[0] != 0xEF53:
            raise PartitionTableError(
                "partition %d is typed Linux but holds no ext2/3/4 filesystem (btrfs or f2fs roots are not supported)"
                % root.number
            )
    return boot, root


def image_python(root: Ext4Fs) -> str:
    """The image's Python 3 version ("3.11"), from /usr/lib/python3.N."""
    versions = sorted(
        (tuple(int(x) for x in m.group(1).split(".")), m.group(1))
        for name in root.listdir("/usr/lib")
        for m in [re.match(r"^python(3\.\d+)$", name)]
        if m
    )
    if not versions:
        raise ImageError(
            "the image has no Python 3 (/usr/lib/python3.N): use Raspberry Pi OS (Lite) or a Debian image, or --from-scratch"
        )
    return versions[-1][1]


def check_arch(root: Ext4Fs, arch: str) -> None:
    triplet = {"arm64": "aarch64-linux-gnu", "armhf": "arm-linux-gnueabihf"}.get(arch)
    if triplet is None:
        raise ImageError("board architecture %r is not supported: arm64 or armhf" % arch)
    if not root.exists("/usr/lib/" + triplet):
        raise ImageError(
            "the image is not an %s system (no /usr/lib/%s): pick the %s image for this board, or the board profile that matches the image"
            % (arch, triplet, "64-bit" if arch == "arm64" else "32-bit")
        )


def apply(
    image: Path,
    board: Any,
    enrollment: Enrollment,
    hostname: str,
    wifi: cloudinit.WifiConfig | None,
    cache_dir: Path,
    progress: Progress,
    lab_key: str | None = None,
) -> Layout:
    boot_part, root_part = inspect(image)
    root = Ext4Fs(image, root_part.start)
    boot = FatFs(image, boot_part.start)
    check_arch(root, board.arch)
    python = image_python(root)
    progress(
        "image: boot partition %d (%d MiB), root partition %d (%d MiB), Python %s"
        % (boot_part.number, boot_part.size >> 20, root_part.number, root_part.size >> 20, python)
    )

    house = wheels.wheelhouse(board.arch, python, cache_dir, progress)
    edit = root.edit()
    progress("root filesystem: unpacking %d wheels into /usr/local" % len(house.wheels))
    n = wheels.install(edit, house.wheels, python)
    edit.mkdir(LIBDIR)
    edit.write(LIBDIR + "/apt-packages", "".join(p + "\n" for p in house.apt_packages).encode())
    edit.put(FIRSTBOOT_DIR / "meshlet-firstboot", LIBDIR + "/meshlet-firstboot", 0o755)
    edit.write("/etc/systemd/system/meshletd.service", meshletd_unit())
    edit.write("/etc/systemd/system/meshletd.service.d/provision.conf", MESHLETD_DROPIN.encode())
    edit.put(FIRSTBOOT_DIR / "meshlet-firstboot.service", "/etc/systemd/system/meshlet-firstboot.service")
    edit.symlink(WANTS + "/meshletd.service", "/etc/systemd/system/meshletd.service")
    edit.symlink(WANTS + "/meshlet-firstboot.service", "/etc/systemd/system/meshlet-firstboot.service")
    edit.write("/etc/default/meshletd", board.env_file().encode())
    edit.write("/etc/hostname", (hostname + "\n").encode())
    edit.write("/etc/hosts", hosts_file(_read_or_empty(root, "/etc/hosts"), hostname).encode())
    if wifi is not None and root.exists("/etc/NetworkManager/system-connections"):
        nm = nm_connection(wifi)
        if nm is not None:
            edit.write("/etc/NetworkManager/system-connections/meshlet-wifi.nmconnection", nm.encode(), 0o600)
    if lab_key is not None:
        edit.write("/etc/systemd/system/serial-getty@.service.d/autologin.conf", AUTOLOGIN_DROPIN.encode())
        # A shell driven over the serial console wants no bracketed-paste escapes around its prompt.
        edit.write("/root/.inputrc", b"$include /etc/inputrc\nset enable-bracketed-paste off\n")
        edit.mkdir("/root/.ssh", 0o700)
        edit.write("/root/.ssh/authorized_keys", lab_key.encode(), 0o600)
    progress("root filesystem: writing %d files with debugfs" % n)
    edit.commit()

    progress("boot partition: enrollment and cloud-init files")
    for secret in SECRET_FILES + (SETTINGS_FILE,):
        boot.delete("/" + secret)
    for path, data in enrollment.boot_files(hostname).items():
        boot.write("/" + path, data)
    boot.write("/user-data", cloudinit.user_data(hostname).encode())
    boot.write("/network-config", cloudinit.network_config(wifi).encode())
    boot.write("/meta-data", cloudinit.meta_data(hostname, "meshlet-" + secrets.token_hex(8)).encode())
    cmdline = (
        boot.read("/cmdline.txt").decode(errors="replace").strip() if boot.exists("/cmdline.txt") else ""
    )
    if not cmdline:
        cmdline = default_cmdline(board)
        boot.write("/cmdline.txt", (cmdline + "\n").encode())
    return Layout(boot_part, root_part, python, cmdline)


def nm_connection(wifi: cloudinit.WifiConfig) -> str | None:
    """A NetworkManager keyfile for the Wi-Fi, for images that use NM without cloud-init
    (Raspberry Pi OS bookworm).  None when the SSID needs keyfile escaping (cloud-init's copy remains)."""
    if any(c in wifi.ssid + wifi.psk for c in ";\\\n\r"):
        return None
    return (
        "# Written by meshlet-provision image.\n"
        "[connection]\nid=meshlet-wifi\ntype=wifi\nautoconnect=true\n\n"
        "[wifi]\nmode=infrastructure\nssid=%s\n\n"
        "[wifi-security]\nkey-mgmt=wpa-psk\npsk=%s\n\n"
        "[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n" % (wifi.ssid, wifi.psk)
    )


def default_cmdline(board: Any) -> str:
    """Kernel arguments for the from-scratch image: root by label, the board's serial console."""
    console = str(board.qemu.get("console", "ttyAMA0")) if isinstance(board.qemu, dict) else "ttyAMA0"
    extra = str(board.qemu.get("append", "")) if isinstance(board.qemu, dict) else ""
    return (
        "root=LABEL=meshlet-root rw rootwait console=%s,115200 net.ifnames=0 %s" % (console, extra)
    ).strip()


def hosts_file(old: str, hostname: str) -> str:
    """/etc/hosts with 127.0.1.1 naming the new host (the Debian convention)."""
    lines = [l for l in old.splitlines() if not l.startswith("127.0.1.1")]
    if not any(l.startswith("127.0.0.1") for l in lines):
        lines.insert(0, "127.0.0.1\tlocalhost")
    at = next(i for i, l in enumerate(lines) if l.startswith("127.0.0.1")) + 1
    lines.insert(at, "127.0.1.1\t%s" % hostname)
    return "\n".join(lines) + "\n"


def _read_or_empty(fs: Ext4Fs, path: str) -> str:
    try:
        return fs.read(path).decode(errors="replace")
    except ImageError:
        return ""


BOOT_KERNELS = (
    "vmlinuz",
    "kernel8.img",
    "kernel_2712.img",
    "kernel7l.img",
    "kernel7.img",
    "kernel.img",
    "zImage",
    "Image",
)
BOOT_INITRDS = ("initrd.img", "initramfs8", "initramfs_2712", "initramfs7l", "initramfs7", "initramfs")


def extract_boot_files(
    image: Path, boot_part: Partition, dtb: str, dest: Path
) -> tuple[Path | None, Path | None, Path | None]:
    """Kernel, initrd and the board's device tree copied out of the boot partition (for QEMU -kernel/-initrd/-dtb)."""
    fat = FatFs(image, boot_part.start)
    names = {n.lower(): n for n in fat.listdir("/")}
    dest.mkdir(parents=True, exist_ok=True)

    def take(candidates: tuple[str, ...], where: str = "/") -> Path | None:
        for c in candidates:
            if c.lower() in names:
                out = dest / c
                fat.get(where + names[c.lower()], out)
                return out
        return None

    kernel = take(BOOT_KERNELS)
    initrd = take(BOOT_INITRDS)
    dtb_path = None
    if dtb:
        base = dtb.rsplit("/", 1)[-1]
        for where in ("/dtbs/", "/"):
            listing = {n.lower(): n for n in fat.listdir(where.rstrip("/") or "/")}
            if base.lower() in listing:
                dtb_path = dest / base
                fat.get(where + listing[base.lower()], dtb_path)
                break
    return kernel, initrd, dtb_path
