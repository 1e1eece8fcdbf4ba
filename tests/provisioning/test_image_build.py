"""Provisioning a small "Raspberry Pi OS-like" image end to end, without loop mounts.

The base image is made here: an MBR written by meshlet_provision.image.mbr, a FAT boot
partition (mkfs.fat, with config.txt/cmdline.txt/kernel8.img as the Pi firmware expects)
and an ext4 root (mke2fs -d) holding just enough of a Debian system to be recognised
(/usr/lib/python3.11, /usr/lib/aarch64-linux-gnu, /etc/hosts).  The result is inspected
with mtools and debugfs, as the builder itself works.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
from meshlet_provision.image import Enrollment, ImageError, WifiConfig, build_image, wheels
from meshlet_provision.image.ext4 import Ext4Fs
from meshlet_provision.image.fat import FatFs
from meshlet_provision.image.mbr import (
    SECTOR,
    TYPE_FAT32_LBA,
    TYPE_LINUX,
    build_mbr,
    find_boot_and_root,
    read_table,
)

pytestmark = pytest.mark.skipif(
    not all(
        shutil.which(t) or os.path.exists("/usr/sbin/" + t) or os.path.exists("/sbin/" + t)
        for t in ("mcopy", "debugfs", "mke2fs", "mkfs.fat")
    ),
    reason="needs mtools, e2fsprogs and dosfstools",
)

AUTHKEY = "mlt-auth-0123456789abcdef"
SERVER = "http://10.0.2.2:8080"
BOOT_AT, BOOT_SIZE, ROOT_AT, ROOT_SIZE = 1 << 20, 32 << 20, 33 << 20, 96 << 20


def make_pi_like_image(tmp: Path, arch_triplet: str = "aarch64-linux-gnu") -> Path:
    tree = tmp / "tree"
    for d in (
        "usr/lib/python3.11",
        "usr/lib/python3",
        "usr/lib/" + arch_triplet,
        "etc/systemd/system/multi-user.target.wants",
        "boot/firmware",
        "etc/NetworkManager/system-connections",
        "var/lib",
        "root",
    ):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n127.0.1.1\traspberrypi\n"
    )
    (tree / "etc/hostname").write_text("raspberrypi\n")
    img = tmp / "raspios-like.img"
    with open(img, "wb") as f:
        f.truncate(ROOT_AT + ROOT_SIZE)
        f.write(
            build_mbr(
                [
                    (TYPE_FAT32_LBA, BOOT_AT // SECTOR, BOOT_SIZE // SECTOR, False),
                    (TYPE_LINUX, ROOT_AT // SECTOR, ROOT_SIZE // SECTOR, False),
                ],
                0x1234ABCD,
            )
        )
    fat = FatFs.mkfs(img, BOOT_AT, BOOT_SIZE)
    fat.write("/config.txt", b"arm_64bit=1\nenable_uart=1\n")
    fat.write(
        "/cmdline.txt",
        b"console=serial0,115200 console=tty1 root=PARTUUID=1234abcd-02 rootfstype=ext4 rootwait\n",
    )
    fat.write("/kernel8.img", b"\x00fake kernel" * 100)
    fat.write("/initramfs8", b"fake initramfs")
    fat.write("/bcm2711-rpi-4-b.dtb", b"\xd0\x0d\xfe\xed fake dtb")
    Ext4Fs.mkfs_from_dir(img, ROOT_AT, ROOT_SIZE, tree)
    return img


def make_fake_wheel(dest: Path) -> Path:
    """A tiny stand-in for the meshlet wheel: one package, one console script, one data script."""
    whl = dest / "meshletfake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("meshletfake/__init__.py", "def main():\n    return 0\n")
        z.writestr(
            "meshletfake-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: meshletfake\nVersion: 1.0\n"
        )
        z.writestr(
            "meshletfake-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(
            "meshletfake-1.0.dist-info/entry_points.txt", "[console_scripts]\nmeshlet = meshletfake:main\n"
        )
        z.writestr("meshletfake-1.0.dist-info/RECORD", "")
        info = zipfile.ZipInfo("meshletfake-1.0.data/scripts/meshlet-helper")
        info.external_attr = 0o755 << 16
        z.writestr(info, "#!python\nprint('hi')\n")
    return whl


@pytest.fixture
def offline_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No PyPI in unit tests: the wheelhouse is one fake wheel (the real one is test_real_wheels)."""
    whl = make_fake_wheel(tmp_path)

    def fake(arch: str, python: str, cache_dir: Path, progress: object) -> wheels.Wheelhouse:
        return wheels.Wheelhouse((whl,), ("python3-nacl",) if arch == "armhf" else ())

    monkeypatch.setattr(wheels, "wheelhouse", fake)


def provision(tmp_path: Path, enrollment: Enrollment, **kw: object) -> tuple[object, Path, list[str]]:
    base = make_pi_like_image(tmp_path)
    lines: list[str] = []
    result = build_image(
        "rpi-4b",
        tmp_path / "out" / "pi.img",
        base=base,
        enrollment=enrollment,
        cache_dir=tmp_path / "cache",
        progress=lines.append,
        **kw,
    )  # type: ignore[arg-type]
    return result, base, lines


def test_base_image_gets_meshlet_units_env_and_enrollment(tmp_path: Path, offline_wheels: None) -> None:
    result, base, lines = provision(tmp_path, Enrollment(SERVER, AUTHKEY), hostname="pi-kitchen")
    img = result.path  # type: ignore[attr-defined]
    assert stat.S_IMODE(img.stat().st_mode) == 0o600  # it holds the key
    assert any("copying" in l and "100%" in l for l in lines)

    with open(img, "rb") as f:
        boot, root = find_boot_and_root(read_table(f, img.stat().st_size))
    fs = Ext4Fs(img, root.start)
    wants = fs.listdir("/etc/systemd/system/multi-user.target.wants")
    assert stat.S_ISLNK(wants["meshletd.service"]) and stat.S_ISLNK(wants["meshlet-firstboot.service"])
    assert b"ExecStart=/usr/bin/env meshlet daemon" in fs.read("/etc/systemd/system/meshletd.service")
    assert b"EnvironmentFile=-/etc/default/meshletd" in fs.read(
        "/etc/systemd/system/meshletd.service.d/provision.conf"
    )
    assert fs.read("/etc/default/meshletd").startswith(b"# meshlet agent defaults for Raspberry Pi 4")
    assert fs.read("/etc/hostname") == b"pi-kitchen\n"
    assert b"127.0.1.1\tpi-kitchen" in fs.read("/etc/hosts") and b"raspberrypi" not in fs.read("/etc/hosts")
    mode, uid, gid = fs.stat("/usr/local/lib/meshlet/meshlet-firstboot")  # type: ignore[misc]
    assert (stat.S_IMODE(mode), uid, gid) == (0o755, 0, 0)
    # The wheel, unpacked: package, console script, data script with the image's python.
    assert fs.read("/usr/local/lib/python3.11/dist-packages/meshletfake/__init__.py").startswith(b"def main")
    script = fs.read("/usr/local/bin/meshlet")
    assert script.startswith(b"#!/usr/bin/python3") and b"from meshletfake import main" in script
    assert fs.read("/usr/local/bin/meshlet-helper").startswith(b"#!/usr/bin/python3\n")
    assert stat.S_IMODE(fs.stat("/usr/local/bin/meshlet")[0]) == 0o755  # type: ignore[index]
    # The secret is on the boot partition only.
    fat = FatFs(img, boot.start)
    assert fat.read("/meshlet/authkey") == (AUTHKEY + "\n").encode()
    assert b"MESHLET_LOGIN_SERVER=http://10.0.2.2:8080" in fat.read("/meshlet/enroll.env")
    assert not fs.exists("/usr/local/lib/meshlet/authkey")
    assert b'hostname: "pi-kitchen"' in fat.read("/user-data")
    assert fat.read("/meta-data").startswith(b'instance-id: "meshlet-')
    assert b"wifis" not in fat.read("/network-config")
    # The vendor's files are untouched.
    assert fat.read("/cmdline.txt").startswith(b"console=serial0")
    assert result.cmdline.startswith("console=serial0")  # type: ignore[attr-defined]
    assert result.boot_files.kernel.read_bytes().startswith(b"\x00fake kernel")  # type: ignore[attr-defined]
    assert result.boot_files.dtb.name == "bcm2711-rpi-4-b.dtb"  # type: ignore[attr-defined]
    # No lab autologin unless asked.
    assert not fs.exists("/etc/systemd/system/serial-getty@.service.d/autologin.conf")
    # The filesystems are clean after debugfs and mtools edited them.
    subprocess.run(["e2fsck", "-fn", "%s?offset=%d" % (img, root.start)], check=True, capture_output=True)
    # The base image was only read.
    assert FatFs(base, boot.start).listdir("/meshlet") == []


def test_enrollment_code_and_wifi_and_lab(tmp_path: Path, offline_wheels: None) -> None:
    code = (
        "meshlet://enroll?server=http%3A%2F%2F10.0.2.2%3A8080&key=mkey:" + "ab" * 32 + "&authkey=" + AUTHKEY
    )
    result, _, _ = provision(
        tmp_path, Enrollment.from_code(code), wifi=WifiConfig('Home "Net"', "s3cret: pass#1", "DE"), lab=True
    )
    img = result.path  # type: ignore[attr-defined]
    fat = FatFs(img, result.boot_partition.start)  # type: ignore[attr-defined]
    assert fat.read("/meshlet/enroll-code").decode().strip() == code
    assert not fat.exists("/meshlet/authkey")
    net = fat.read("/network-config").decode()
    assert '"Home \\"Net\\""' in net and '"s3cret: pass#1"' in net and 'regulatory-domain: "DE"' in net
    fs = Ext4Fs(img, result.root_partition.start)  # type: ignore[attr-defined]
    nm = "/etc/NetworkManager/system-connections/meshlet-wifi.nmconnection"
    assert b'ssid=Home "Net"\n' in fs.read(nm) and stat.S_IMODE(fs.stat(nm)[0]) == 0o600  # type: ignore[index]
    assert b"--autologin root" in fs.read("/etc/systemd/system/serial-getty@.service.d/autologin.conf")
    assert stat.S_IMODE(fs.stat("/root/.ssh")[0]) == 0o700  # type: ignore[index]
    assert stat.S_IMODE(fs.stat("/root/.ssh/authorized_keys")[0]) == 0o600  # type: ignore[index]
    assert result.ssh_key is not None and result.ssh_key.exists()  # type: ignore[attr-defined]
    assert fs.read("/etc/hostname") == b"rpi-4b\n"


def test_interactive_login_leaves_no_secret(tmp_path: Path, offline_wheels: None) -> None:
    result, _, _ = provision(tmp_path, Enrollment(SERVER))
    fat = FatFs(result.path, result.boot_partition.start)  # type: ignore[attr-defined]
    assert sorted(fat.listdir("/meshlet")) == ["enroll.env"]


def test_xz_base_is_stream_decompressed(tmp_path: Path, offline_wheels: None) -> None:
    base = make_pi_like_image(tmp_path)
    xz = tmp_path / "raspios-like.img.xz"
    with open(base, "rb") as fin, lzma.open(xz, "wb", preset=0) as fout:
        shutil.copyfileobj(fin, fout)
    lines: list[str] = []
    result = build_image(
        "rpi-4b",
        tmp_path / "pi.img",
        base=xz,
        enrollment=Enrollment(SERVER, AUTHKEY),
        cache_dir=tmp_path / "cache",
        progress=lines.append,
    )
    assert any(l.startswith("decompressing raspios-like.img.xz: 100%") for l in lines)
    assert result.path.stat().st_size == base.stat().st_size
    assert FatFs(result.path, BOOT_AT).read("/config.txt") == b"arm_64bit=1\nenable_uart=1\n"
    cut = tmp_path / "cut.img.xz"
    cut.write_bytes(xz.read_bytes()[: xz.stat().st_size // 2])
    with pytest.raises(ImageError, match="download is incomplete"):
        build_image(
            "rpi-4b",
            tmp_path / "cut.img",
            base=cut,
            enrollment=Enrollment(SERVER, AUTHKEY),
            cache_dir=tmp_path / "cache",
        )
    assert not (tmp_path / "cut.img.partial").exists()


def test_refuses_wrong_arch_and_non_debian(tmp_path: Path, offline_wheels: None) -> None:
    base = make_pi_like_image(tmp_path)
    with pytest.raises(ImageError, match="not an armhf system"):
        build_image(
            "rpi-2",
            tmp_path / "x.img",
            base=base,
            enrollment=Enrollment(SERVER, AUTHKEY),
            cache_dir=tmp_path / "c",
        )
    assert not (tmp_path / "x.img").exists() and not (tmp_path / "x.img.partial").exists()
    with pytest.raises(ImageError, match="no MBR signature"):
        garbage = tmp_path / "garbage.img"
        garbage.write_bytes(b"\x01" * 4096)
        build_image(
            "rpi-4b",
            tmp_path / "y.img",
            base=garbage,
            enrollment=Enrollment(SERVER, AUTHKEY),
            cache_dir=tmp_path / "c",
        )


def test_cli_json(tmp_path: Path, offline_wheels: None, capsys: pytest.CaptureFixture[str]) -> None:
    from meshlet_provision.cli import main

    base = make_pi_like_image(tmp_path)
    keyfile = tmp_path / "key"
    keyfile.write_text(AUTHKEY + "\n")
    rc = main(
        [
            "image",
            "--board",
            "rpi-4b",
            "--base",
            str(base),
            "--out",
            str(tmp_path / "o.img"),
            "--login-server",
            SERVER,
            "--authkey",
            "file:%s" % keyfile,
            "--cache",
            str(tmp_path / "c"),
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["path"] == str(tmp_path / "o.img") and doc["python"] == "3.11" and doc["cache_hit"] is False
    assert "meshlet-provision image: copying raspios-like.img: 100%" in err
    rc = main(
        [
            "image",
            "--board",
            "rpi-4b",
            "--base",
            str(base),
            "--out",
            str(tmp_path / "p.img"),
            "--cache",
            str(tmp_path / "c"),
        ]
    )
    assert rc == 1 and "give --enroll-code CODE, or --login-server URL" in capsys.readouterr().err


@pytest.mark.slow
def test_real_wheels_arm64(tmp_path: Path) -> None:
    """The real wheelhouse: this checkout's meshlet wheel and PyPI's aarch64 wheels (needs PyPI)."""
    cache = Path(os.environ.get("MESHLET_IMAGE_CACHE") or "/var/tmp/meshlet-images")
    try:
        house = wheels.wheelhouse("arm64", "3.11", cache, lambda line: None)
    except ImageError as e:
        pytest.skip("no wheels: %s" % e)
    names = " ".join(p.name for p in house.wheels)
    assert (
        "meshlet-" in names
        and "aarch64" in names
        and "cryptography" in names
        and "PyNaCl" in names.replace("pynacl", "PyNaCl")
    )
    result, _, _ = provision(tmp_path, Enrollment(SERVER, AUTHKEY))
    fs = Ext4Fs(result.path, result.root_partition.start)  # type: ignore[attr-defined]
    assert b"from meshlet_agent.cli import main" in fs.read("/usr/local/bin/meshlet")
    assert fs.exists("/usr/local/lib/python3.11/dist-packages/nacl/_sodium.abi3.so")
