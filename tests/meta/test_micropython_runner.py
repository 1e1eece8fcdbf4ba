"""tools/mprun/mprun.py keeps its promise: a truthful summary line and exit status.

./dev test trusts mprun's exit status to fail the build when a core test fails
under MicroPython, so that status is tested here on tiny throwaway test dirs
(not on tests/core, which ./dev test already runs): 0 when everything passed,
1 when anything failed (an import error counts), and 1 when nothing ran at all.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MPRUN = ROOT / "tools" / "mprun" / "mprun.py"
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

_PASSING = '''
from meshlet import stun  # the runner puts core/ on the path


def test_one():
    assert stun.is_stun(stun.build_binding_request(bytes(12)))


def test_two():
    assert 1 + 1 == 2


def helper_not_a_test():
    raise AssertionError("only test_* functions run")
'''

_FAILING = '''
def test_fine():
    pass


def test_boom():
    assert 1 == 2, "boom"
'''

_BROKEN_IMPORT = '''
import no_such_module_anywhere


def test_never_runs():
    pass
'''


def _run(folder: Path, *args: str) -> "tuple[int, list[str]]":
    if not os.access(MICROPYTHON, os.X_OK):
        pytest.skip("no micropython next to %s (pip install -e '.[dev]' provides it)" % sys.executable)
    proc = subprocess.run(
        [MICROPYTHON, str(MPRUN), *args, str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines, "mprun printed nothing"
    return proc.returncode, lines


def _dir(tmp_path: Path, name: str, files: "dict[str, str]") -> Path:
    d = tmp_path / name
    d.mkdir()
    for fname, text in files.items():
        (d / fname).write_text(text)
    return d


def test_all_passing_exits_0(tmp_path):
    d = _dir(tmp_path, "ok", {"test_mp_ok.py": _PASSING})
    rc, lines = _run(d, "-v")
    assert lines[0].startswith("mprun: micropython "), lines
    assert lines[-1] == "2 passed, 0 failed", lines
    assert "ok   test_mp_ok.test_one" in lines, lines
    assert rc == 0


def test_a_failure_exits_1_and_names_the_test(tmp_path):
    d = _dir(tmp_path, "mixed", {"test_mp_ok2.py": _PASSING, "test_mp_fail.py": _FAILING})
    rc, lines = _run(d)
    assert lines[-1] == "3 passed, 1 failed", lines
    assert "FAIL test_mp_fail.test_boom" in lines, lines
    assert any("boom" in line for line in lines), lines
    assert rc == 1


def test_an_import_error_counts_as_a_failure(tmp_path):
    d = _dir(tmp_path, "broken", {"test_mp_broken.py": _BROKEN_IMPORT})
    rc, lines = _run(d)
    assert any(line.startswith("FAIL") and "(import)" in line for line in lines), lines
    assert lines[-1] == "0 passed, 1 failed", lines
    assert rc == 1


def test_nothing_ran_exits_1(tmp_path):
    d = _dir(tmp_path, "empty", {"helper.py": "x = 1\n"})
    rc, lines = _run(d)
    assert lines[-1] == "0 passed, 0 failed", lines
    assert rc == 1
