"""The README's main command stays true: the core tour runs and every exchange completes."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_core_tour_completes_every_exchange() -> None:
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "demo", "core_tour.py"), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert set(figures) == {"keys", "stun", "disco", "derp", "ts2021", "wireguard"}
    assert figures["stun"]["request_bytes"] == 40
    assert figures["disco"]["ping_bytes"] == 124
    assert figures["ts2021"]["initiation_bytes"] == 101 and figures["ts2021"]["response_bytes"] == 51
    assert figures["wireguard"]["datagram_bytes"][:2] == [148, 92]
