"""The typing promise of STYLE §5.7: the core and the agent pass `mypy --strict`.

The file list and strictness live in pyproject.toml ([tool.mypy]); this test
only runs it, so `./dev test` fails when a change loses the types.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_mypy_strict_passes() -> None:
    mypy = os.path.join(os.path.dirname(sys.executable), "mypy")
    if not os.path.exists(mypy):
        pytest.skip("mypy is not installed in this environment: run ./dev setup")
    done = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
