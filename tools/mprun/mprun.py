"""Runs plain `def test_...():` functions under MicroPython (no pytest there).

Usage, from the repository root:

    micropython tools/mprun/mprun.py tests/core [more dirs or files]

Every `test_*.py` is imported and every callable named `test_*` in it is
called with no arguments, in sorted order. A test passes if it returns and
fails if it raises. The last line is pytest's plain summary,
"N passed, N failed", and the exit status is 1 if anything failed, so make
and CI can trust it. The core is imported from core/ and the helpers from
tests/support/, exactly as pytest sees them.

This file itself must stay runnable on MicroPython: no pathlib, no argparse,
no f-string tricks.
"""

import os
import sys


def _root() -> str:
    here = __file__
    for _ in range(3):  # tools/mprun/mprun.py -> repository root
        here = here.rsplit("/", 1)[0] if "/" in here else "."
    return here


def _is_dir(path: str) -> bool:
    try:
        return (os.stat(path)[0] & 0o170000) == 0o040000
    except OSError:
        return False


def _test_files(arg: str) -> "list[str]":
    if not _is_dir(arg):
        return [arg]
    names = sorted(n for n in os.listdir(arg) if n.startswith("test_") and n.endswith(".py"))
    return [arg.rstrip("/") + "/" + n for n in names]


def _run_file(path: str, verbose: bool) -> "tuple[int, int]":
    folder, name = path.rsplit("/", 1) if "/" in path else (".", path)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    modname = name[:-3]
    try:
        mod = __import__(modname)
    except Exception as e:  # a broken import fails the whole file, loudly
        print("FAIL", path, "(import)")
        sys.print_exception(e)  # type: ignore[attr-defined]
        return 0, 1
    passed = failed = 0
    for attr in sorted(dir(mod)):
        fn = getattr(mod, attr)
        if not attr.startswith("test_") or not callable(fn):
            continue
        try:
            fn()
        except Exception as e:
            failed += 1
            print("FAIL", modname + "." + attr)
            sys.print_exception(e)  # type: ignore[attr-defined]
        else:
            passed += 1
            if verbose:
                print("ok  ", modname + "." + attr)
    return passed, failed


def main(argv: "list[str]") -> int:
    verbose = "-v" in argv
    args = [a for a in argv if a != "-v"] or ["tests/core"]
    root = _root()
    for p in (root + "/core", root + "/tests/support"):
        if p not in sys.path:
            sys.path.insert(0, p)
    print("mprun:", sys.implementation.name, ".".join(str(v) for v in sys.implementation.version[:3]))
    passed = failed = 0
    for arg in args:
        for path in _test_files(arg):
            p, f = _run_file(path, verbose)
            passed += p
            failed += f
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
