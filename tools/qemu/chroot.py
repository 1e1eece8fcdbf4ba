"""A foreign-arch Debian chroot run through qemu-user: real aarch64 CPython on this x86 host.

Cheap arch coverage (shared/lab/QEMU.md §2, §5): the pure-Python tests run
under Debian's own aarch64 python3 and its python3-nacl/-cryptography/...
packages, which is what a Raspberry Pi OS install gets, at 6-9x the host
time instead of a whole boot. Interfaces (TUN, routes) would be made in the
host kernel, so tests that need them belong in a full-system guest
(runner.py), not here.

    root = build_chroot("arm64")                         # cached: cache.py
    res = run_in_chroot(root, ["python3", "-V"], binds=[(REPO, "/src")])

Each run is one `unshare --mount` process: /proc, /sys, /dev, a tmpfs /tmp
and the binds are mounted in a private mount namespace that dies with it,
so an interrupted run leaves no mount behind on the host.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Callable

from cache import HERE, cache_dir, debs_dir, recipe_key
from meshlet_provision.image import binfmt
from meshlet_provision.image.errors import ImageError

# Debian's packages for everything meshlet imports, and the test tools.
PACKAGES = (
    "python3", "python3-nacl", "python3-cryptography", "python3-h2", "python3-h11",
    "python3-zstandard", "python3-dnslib", "python3-segno", "python3-serial",
    "python3-pytest", "python3-hypothesis", "iproute2",
)  # fmt: skip
BUILD_TIMEOUT_S = 1800


class ChrootError(RuntimeError):
    """The chroot could not be built or entered; the message names the fix."""


def ensure_binfmt(arch: str) -> None:
    """qemu-user for `arch` registered (the image builder's helper; its error as a ChrootError)."""
    try:
        binfmt.ensure_binfmt(arch)
    except ImageError as e:
        raise ChrootError(str(e)) from None


def requirements_missing() -> str | None:
    """Why a chroot cannot be built or run here, or None; the reason names the fix."""
    if os.geteuid() != 0:
        return "needs root (mmdebstrap --mode=root, chroot, mounts): run the tests as root"
    for exe, pkg in (("mmdebstrap", "mmdebstrap"), ("arch-test", "arch-test"),
                     ("qemu-aarch64-static", "qemu-user-static"), ("unshare", "util-linux")):  # fmt: skip
        if not _which(exe):
            return "`%s` is not installed: apt-get install %s" % (exe, pkg)
    return None


def build_chroot(
    arch: str = "arm64", suite: str = "bookworm", cache: str | None = None,
    packages: tuple[str, ...] = PACKAGES, progress: Callable[[str], None] | None = None,
) -> Path:  # fmt: skip
    """The chroot for this recipe, built with mmdebstrap if the cache has none (2-3 min cold)."""
    root = cache_dir(cache)
    script = HERE / "build-chroot.sh"
    key = recipe_key([script], arch, suite, ",".join(packages))
    out = root / ("chroot-%s-%s-%s" % (arch, suite, key))
    if (out / "usr" / "bin" / "python3").exists():
        return out
    ensure_binfmt(arch)
    if progress:
        progress("building the %s %s chroot in %s (2-3 min)" % (arch, suite, out))
    t0 = time.monotonic()
    env = {**os.environ, "PKGS": ",".join(packages)}
    log = root / (out.name + ".log")
    with open(log, "wb") as f:
        res = subprocess.run([str(script), str(out), str(debs_dir(root, arch, suite)), arch, suite],
                             stdout=f, stderr=subprocess.STDOUT, env=env, timeout=BUILD_TIMEOUT_S)  # fmt: skip
    if res.returncode != 0:
        raise ChrootError("building the %s chroot failed (exit %d); see %s" % (arch, res.returncode, log))
    (out / ".meshlet-build-seconds").write_text("%.1f\n" % (time.monotonic() - t0))
    return out


# The provisioned arm64 image runs meshlet on PyPI's aarch64 wheels of its dependencies (Debian's
# python3 underneath), and so does this chroot: bookworm's own packages are older than the code
# needs (python3-nacl 1.5 has no crypto_secretbox_easy; python3-cryptography 38 refuses
# memoryviews and has no public_bytes_raw), see docs/qemu.md.
WHEEL_PLATFORMS = {"arm64": ("manylinux2014_aarch64", "manylinux_2_28_aarch64", "manylinux_2_34_aarch64")}


def project_requirements() -> tuple[str, ...]:
    """[project].dependencies of the checkout's pyproject.toml."""
    import tomllib

    with open(HERE.parent.parent / "pyproject.toml", "rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return tuple(deps)


def pypi_overlay(
    arch: str = "arm64", python: str = "3.11", cache: str | None = None,
    requirements: tuple[str, ...] | None = None,
) -> Path:  # fmt: skip
    """PyPI wheels for `arch` unpacked into one directory, to put first on the chroot's PYTHONPATH.

    What the provisioned arm64 image does for the same packages (unpacked wheels in
    /usr/local/lib/python3.11/dist-packages), downloaded once per requirement list.
    """
    import sys
    import zipfile

    requirements = requirements if requirements is not None else project_requirements()
    root = cache_dir(cache)
    key = recipe_key([], arch, python, ",".join(requirements))
    out = root / ("pypi-%s-py%s-%s" % (arch, python, key))
    if (out / ".complete").exists():
        return out
    wheels = out.with_name(out.name + "-wheels")
    wheels.mkdir(parents=True, exist_ok=True)
    plat = [a for p in WHEEL_PLATFORMS[arch] for a in ("--platform", p)]
    res = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *plat, "--python-version", python,
         "--implementation", "cp", "-d", str(wheels), *requirements],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if res.returncode != 0:
        raise ChrootError("pip download for %s failed (is PyPI reachable?): %s" % (arch, res.stderr.strip()[-500:]))
    out.mkdir(exist_ok=True)
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(out)
    (out / ".complete").write_text("\n".join(requirements) + "\n")
    return out


def run_in_chroot(
    root: Path, argv: list[str], binds: tuple[tuple[str, str], ...] = (), env: dict[str, str] | None = None,
    cwd: str = "/", timeout: float = 1800, read_only_binds: bool = True,
) -> "subprocess.CompletedProcess[str]":  # fmt: skip
    """Runs `argv` inside the chroot (qemu-user via binfmt); binds are (host path, chroot path)."""
    arch = "arm64" if _elf_machine(root / "usr" / "bin" / "env") == 0xB7 else "armhf"
    ensure_binfmt(arch)
    lines = [
        "set -e",
        "R=%s" % shlex.quote(str(root)),
        'mount -t proc proc "$R/proc"',
        'mount -t sysfs sys "$R/sys"',
        'mount --rbind /dev "$R/dev"',
        'mount -t tmpfs tmpfs "$R/tmp"',
    ]
    for src, dst in binds:
        d = shlex.quote(str(root) + dst)
        lines.append("mkdir -p %s && mount --bind %s %s" % (d, shlex.quote(src), d))
        if read_only_binds:
            lines.append("mount -o remount,bind,ro %s" % d)
    full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}  # fmt: skip
    if arch == "arm64":
        # Pointer authentication is very slow under qemu-user's default "max" CPU (QEMU.md §2).
        full_env.setdefault("QEMU_CPU", "max,pauth=off")
    envs = " ".join(shlex.quote("%s=%s" % kv) for kv in full_env.items())
    lines.append('cd "$R" && exec chroot "$R" /usr/bin/env -i %s sh -c %s' % (
        envs, shlex.quote("cd %s && exec %s" % (shlex.quote(cwd), shlex.join(argv)))))
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(lines)],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _elf_machine(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(20)
    return int.from_bytes(head[18:20], "little")


def _which(exe: str) -> bool:
    return any(os.access(os.path.join(d, exe), os.X_OK) for d in os.environ.get("PATH", "").split(":") if d)
