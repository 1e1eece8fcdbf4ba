"""The README's main command stays true: `./dev demo` (tools/demo/tailnet.py) builds a real tailnet.

Runs `tools/demo/tailnet.py --json` as a subprocess, as `./dev demo --json`
does: meshlet-control with its embedded DERP in a hub namespace, meshlet
agents "pi-kitchen" (enrolled with an enrollment code) and "laptop" (a
pre-auth key) in two leaves. Checks that both nodes are online with tailnet
addresses, that the laptop pinged pi-kitchen (through DERP or direct) and fetched its
tailnet-only page by MagicDNS name, that `meshlet down` gave the laptop's
namespace its resolv.conf back and the host's was never touched, and that
the demo left nothing behind: its namespaces, their /etc/netns entries,
processes and directory are gone once it exits. Needs root and network
namespaces; skips with the reason otherwise. About 10 s.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

from meshlet_testing.lab import netns, skip_unless  # noqa: E402  (puts tools/lab on sys.path)

DEMO = Path(__file__).resolve().parents[2] / "tools" / "demo" / "tailnet.py"
TIMEOUT_S = 300  # the demo bounds every step itself; this only guards against a hang


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs the demo; on a hang, SIGTERM (it then tears down) before anything harsher."""
    proc = subprocess.Popen(
        [sys.executable, str(DEMO), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail("tools/demo/tailnet.py hung for %d s:\n%s" % (TIMEOUT_S, err))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_demo_builds_a_tailnet_pings_and_fetches_by_name_and_leaves_nothing_behind() -> None:
    skip_unless(
        netns.netns_missing(),
        None if os.path.exists("/dev/net/tun") else "/dev/net/tun is missing: modprobe tun",
    )
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    done = run_demo("--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)

    nodes = {n["hostname"]: n for n in result["nodes"]}
    assert set(nodes) == {"pi-kitchen", "laptop"}
    for name, n in nodes.items():
        assert n["agent"] == "meshlet" and n["online"] is True and n["home_derp"] == 900, n
        assert n["fqdn"] == "%s.meshlet.internal." % name
        assert re.fullmatch(r"100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\.\d+\.\d+", n["ipv4"]), n
        assert n["ipv6"].startswith("fd7a:115c:a1e0:"), n
    assert result["enrolled"] == {"pi-kitchen": "enrollment code", "laptop": "pre-auth key"}

    assert result["ping"]["to"] == "pi-kitchen" and result["ping"]["line"].startswith("pong from pi-kitchen")
    fetch = result["fetch"]
    assert fetch["url"] == "http://pi-kitchen/" and fetch["from"] == "laptop"
    # pi-kitchen answered, and saw the request come from the laptop's tailnet address.
    assert fetch["page"].startswith("Hello from pi-kitchen to %s!" % nodes["laptop"]["ipv4"]), fetch
    assert result["lan"]["result"].startswith("nothing served"), result["lan"]
    path = result["path"]
    assert path["derp_region"] == 900
    assert (path["kind"], bool(path["cur_addr"])) in (("derp", False), ("direct", True)), path
    if path["kind"] == "derp":
        assert path["via"].startswith("DERP("), path

    dns = result["dns"]
    assert dns["points_at_magicdns"] and dns["restored_after_down"] and dns["host_untouched"], dns
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv

    # Torn down: namespaces, their /etc/netns entries, processes (by the PIDs it reported), its directory.
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = [ns for ns in result["lab"]["namespaces"] if re.search(r"^%s\b" % re.escape(ns), listed, re.M)]
    assert not left, "namespaces left behind: %s" % left
    assert not [d for d in result["lab"]["netns_etc"] if os.path.exists(d)]
    for name, pid in result["lab"]["pids"].items():
        assert not _still_running(pid, result["lab"]["dir"]), "%s (pid %d) still runs" % (name, pid)
    assert not os.path.exists(result["lab"]["dir"])


def _still_running(pid: int, lab_dir: str) -> bool:
    """True if `pid` is still one of the demo's processes (its command line names the lab directory)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return lab_dir.encode() in f.read()
    except OSError:
        return False
