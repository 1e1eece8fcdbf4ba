"""The README's main commands stay true: the core tour runs and every exchange completes; the
tailnet demo (tools/demo/tailnet.py, run for real by tests/interop/test_demo_tailnet.py) documents
its options and, without root, stops at once with exit status 2 and the command to run instead."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_core_tour_completes_every_exchange() -> None:
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "demo", "core_tour.py"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert set(figures) == {"keys", "stun", "disco", "derp", "ts2021", "wireguard"}
    assert figures["stun"]["request_bytes"] == 40
    assert figures["disco"]["ping_bytes"] == 124
    assert figures["ts2021"]["initiation_bytes"] == 101 and figures["ts2021"]["response_bytes"] == 51
    assert figures["wireguard"]["datagram_bytes"][:2] == [148, 92]


TAILNET = os.path.join(ROOT, "tools", "demo", "tailnet.py")


def test_tailnet_demo_names_its_options() -> None:
    done = subprocess.run([sys.executable, TAILNET, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--json", "--keep", "--tsnet", "--via-derp"):
        assert option in done.stdout


def test_tailnet_demo_without_root_exits_2_and_says_how_to_run_it() -> None:
    argv = [sys.executable, TAILNET]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip(
                "running as root and setpriv (util-linux) is missing: cannot drop root for this check"
            )
        argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    if done.returncode != 2 and "Permission denied" in done.stderr:
        pytest.skip("this checkout is not readable by nobody: %s" % done.stderr.strip()[-200:])
    assert done.returncode == 2, done.stderr
    assert "needs root" in done.stderr and "sudo ./dev demo" in done.stderr, done.stderr
    assert done.stdout == ""
