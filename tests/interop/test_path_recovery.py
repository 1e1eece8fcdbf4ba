"""A direct path that breaks under a running TCP transfer: the agents recover without the transfer failing.

    hub: meshlet-control serve (region 900) + meshlet-derp (region 901), as in test_nat_matrix.py
    slot a: "a-home" behind a home NAT router     slot b: "b-home" behind another one

Each case starts from a direct path (a ping until a pong comes over UDP),
then runs a paced TCP stream from a to b through the tunnel and, a
couple of seconds in, breaks the network under it:

* the NAT forgets its mappings: a's router flushes its conntrack table and
  maps to a new port range from now on (natlab.NatLab.remap), as after a
  router reboot; a's TCP connections through it (DERP) die too. The stream
  must arrive intact (SHA-256): a must notice its NAT rebound at its next
  re-STUN and redial its DERP connections, else b's relayed packets go to
  a dead connection for 120 s. The path afterwards is direct again (through
  a's new public port) or DERP.
* the direct path is cut: the hub drops UDP between the two routers (DERP
  over TCP still passes). a's view of the path must fall back to DERP
  (CurAddr empty) and the stream must arrive intact; once the hub lets UDP
  through again the path must upgrade back to direct.

How long each step took is printed (`-s`) and kept out of the assertions
(no wall-clock ceilings in tests); tools/bench/direct_paths.py measures it.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any, Iterator

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

from meshlet_testing.lab import netns, skip_unless  # noqa: E402  (puts tools/lab on sys.path)
import natlab  # noqa: E402  (tools/lab, on sys.path once netns is loaded)
import transfer  # noqa: E402

STREAM_BYTES = 3 << 20
STREAM_MBPS = 3.0  # ~8 s of traffic: the break lands in the middle of it
BREAK_AFTER_S = 2.0
SETTLE_S = 40.0
"""A generous bound for each state change to show up (it is not what is measured)."""


@pytest.fixture(scope="module")
def mesh() -> Iterator[natlab.NatMesh]:
    skip_unless(
        netns.netns_missing(),
        natlab.nft_missing(),
        None if shutil.which("conntrack") else
        "`conntrack` is not installed (the NAT is flushed with it): apt-get install conntrack",
    )  # fmt: skip
    m = natlab.NatMesh({"a": "home", "b": "home"})
    try:
        m.start()
        yield m
    finally:
        m.stop()


def go_direct(mesh: natlab.NatMesh) -> str:
    """Pings until a is direct to b. After a remap that can take a's next periodic re-STUN (20-26 s):
    until then a's endpoints in the netmap and in its CallMeMaybe still name the dead mapping."""
    trace = mesh.ping_until_direct("a", "b", SETTLE_S)
    assert trace.direct, (trace.vias(), mesh.logs(20))
    return str(trace.pongs[-1][1]["endpoint"])


def stream_while(mesh: natlab.NatMesh, port: int, during: Any) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Runs the paced stream a -> b, calls `during()` BREAK_AFTER_S in; (sent, received, during's result)."""
    out: dict[str, Any] = {}

    def send() -> None:
        try:
            out["result"] = mesh.transfer("a", "b", STREAM_BYTES, port, mbps=STREAM_MBPS, timeout_s=180)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            out["error"] = e

    t = threading.Thread(target=send)
    t.start()
    time.sleep(BREAK_AFTER_S)
    res = during()
    t.join(200)
    assert "error" not in out, "%s\n%s" % (out.get("error"), mesh.logs(25))
    sent, got = out["result"]
    return sent, got, res


def expected_sha() -> str:
    return transfer.expected_sha256(STREAM_BYTES)


def test_transfer_survives_the_nat_forgetting_its_mappings(mesh: natlab.NatMesh) -> None:
    go_direct(mesh)
    mesh.ping_until_direct("b", "a", 20)
    before = mesh.cur_addr("b", "a")[0]
    with natlab.PathWatch(mesh, "b", "a") as watch:
        t_break = [0.0]

        def remap() -> None:
            t_break[0] = time.monotonic()
            mesh.lab.remap("a", "20000-29999")

        sent, got, _ = stream_while(mesh, 5301, remap)
        assert sent["sha256"] == got["sha256"] == expected_sha()
        assert got["bytes"] == STREAM_BYTES
        # Afterwards: direct through a's new public port, or DERP; never the dead mapping.
        after = mesh.ping_until_direct("b", "a", 15)
        time.sleep(0.3)
    cur, relay = mesh.cur_addr("b", "a")
    print("remap: b saw a at %s before; after: %s (relay %s); history %s; stream %.1f s"
          % (before, cur or "DERP", relay, watch.history(), got["seconds"]))  # fmt: skip
    if after.direct:
        ip, _, port = cur.rpartition(":")
        assert ip == mesh.lab.public_addr("a") and 20000 <= int(port) <= 29999, (cur, watch.history())
    else:
        assert cur == "" and relay, (cur, relay)


def test_blocked_direct_path_falls_back_to_derp_and_upgrades_when_unblocked(mesh: natlab.NatMesh) -> None:
    go_direct(mesh)
    with natlab.PathWatch(mesh, "a", "b") as watch:
        t_block = [0.0]

        def block() -> float:
            t_block[0] = time.monotonic()
            mesh.lab.block_between("a", "b")
            netns.wait_for(lambda: watch.now() == "", SETTLE_S, "a's path to b to fall back to DERP", 0.1)
            return time.monotonic()

        try:
            sent, got, _ = stream_while(mesh, 5302, block)
        finally:
            mesh.lab.block_between("a", "b", blocked=False)
        t_unblock = time.monotonic()
        assert sent["sha256"] == got["sha256"] == expected_sha()
        fallback_s = watch.first_after(t_block[0], lambda cur: cur == "")
        assert fallback_s is not None, watch.history()
        # Traffic keeps the session active, so heartbeats find the direct path again.
        mesh.ping_once("a", "b")
        netns.wait_for(
            lambda: watch.now() not in ("", "?"), SETTLE_S, "a's path to b to be direct again", 0.1
        )
        upgrade_s = watch.first_after(t_unblock, lambda cur: cur not in ("", "?"))
    assert watch.now().rpartition(":")[0] == mesh.lab.public_addr("b"), watch.history()
    print("blocked: fell back to DERP after %.1f s, direct again %.1f s after unblocking; history %s"
          % (fallback_s, upgrade_s or -1, watch.history()))  # fmt: skip
