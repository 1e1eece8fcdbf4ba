"""The pure-Python suites under real aarch64 CPython 3.11 (Debian bookworm), through qemu-user.

Catches what only another architecture shows (byte order, word size,
Debian's python3-nacl/-cryptography builds instead of PyPI wheels) at
qemu-user speed instead of a boot: the chroot is Debian's own arm64
python3 with the distribution packages a Raspberry Pi OS user would
install (tools/qemu/chroot.py), built once per recipe in the image cache.

Python packages: Debian's python3, pytest and hypothesis; meshlet's own
dependencies as PyPI's aarch64 wheels (pyproject's list), as the
provisioned arm64 image has them. With bookworm's python3-nacl 1.5 and
python3-cryptography 38 instead, 80 tests fail (no crypto_secretbox_easy;
memoryviews refused by ChaCha20Poly1305): docs/qemu.md, "Findings".

What runs: all of tests/core, and the agent unit tests that need no root,
network namespace or TUN device (AGENT_UNIT below; the others make
interfaces, which qemu-user would create in the host kernel). One test,
one pytest run inside the chroot on a copy of the sources (nothing is
written into the checkout); its summary line is printed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Agent tests that are pure asyncio/loopback/unit: no root, no netns, no TUN.
AGENT_UNIT = (
    "test_controlclient.py", "test_controlloop.py", "test_derpclient.py", "test_dns_resolver.py",
    "test_statestore.py", "test_udp.py", "test_wgconfig.py", "test_wgengine.py",
)  # fmt: skip
SOURCES = ("core", "agent", "servers", "host", "provisioning", "pyproject.toml")
TEST_DIRS = ("tests/core", "tests/support", "tests/vectors")
PYTHONPATH = "/src/core:/src/agent:/src/servers:/src/host:/src/provisioning:/src/tests/support"


def _copy_sources(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        else:
            shutil.copy2(src, dst / name)
    for name in TEST_DIRS:
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    (dst / "tests" / "agent").mkdir(parents=True)
    for name in AGENT_UNIT:
        shutil.copy2(REPO / "tests" / "agent" / name, dst / "tests" / "agent" / name)
    for extra in ("tests/agent/conftest.py", "tests/conftest.py"):
        if (REPO / extra).exists():
            shutil.copy2(REPO / extra, dst / extra)


def test_core_and_agent_unit_tests_pass_on_aarch64_cpython(image_cache: Path, tmp_path: Path) -> None:
    import chroot

    reason = chroot.requirements_missing()
    if reason:
        pytest.skip(reason)
    root = chroot.build_chroot("arm64", cache=str(image_cache), progress=print)
    overlay = chroot.pypi_overlay("arm64", "3.11", cache=str(image_cache))
    src = tmp_path / "src"
    _copy_sources(src)
    res = chroot.run_in_chroot(
        root,
        ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5", "tests/core", "tests/agent"],
        binds=((str(src), "/src"), (str(overlay), "/pypi")),
        env={"PYTHONPATH": "/pypi:" + PYTHONPATH},
        cwd="/src",
        read_only_binds=False,
    )
    out = res.stdout + res.stderr
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    arch = chroot.run_in_chroot(root, ["python3", "-c", "import platform; print(platform.machine(), platform.python_version())"])
    print("aarch64 chroot (%s): %s" % (arch.stdout.strip(), summary[-1] if summary else "no summary"))
    assert arch.stdout.startswith("aarch64 3.11"), arch.stdout + arch.stderr
    assert res.returncode == 0, out[-6000:]
