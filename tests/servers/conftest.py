"""Shared set-up for the relay's tests: the test client module is importable by name.

pytest runs with --import-mode=importlib, so sibling modules are not on
sys.path by themselves; this folder is added so tests can
`import derp_testclient` (a helper, not a test file).
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
