"""meshlet's userspace WireGuard (`meshlet wg up`) against Debian's wireguard-go, in network namespaces.

    namespace <p>a: meshlet, interface <p>wa     namespace <p>b: wireguard-go + wg, interface <p>wb
      veth 10.231.0.1/24                            veth 10.231.0.2/24
      tunnel 100.64.0.1/24, fd7a::1/64               tunnel 100.64.0.2/24, fd7a::2/64

Each test builds its own lab (tests/interop/netns.py) with a unique name
prefix and tears it down afterwards, stopping the processes it started by
their recorded PIDs. Needs root, /dev/net/tun, `ip`, `wireguard-go` and `wg`;
skips with the reason otherwise.
"""

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from meshlet_agent import localapi

pytestmark = [pytest.mark.interop, pytest.mark.netns]

from meshlet_testing.lab import NETNS_PY, netns, skip_unless  # noqa: E402  (puts tools/lab on sys.path)

PORT = 51820
A_TUN, B_TUN = "100.64.0.1", "100.64.0.2"
A_TUN6, B_TUN6 = "fd7a::1", "fd7a::2"
TRANSFER_BYTES = 20 * 1000 * 1000


@pytest.fixture(scope="module")
def netns_ok() -> None:
    skip_unless(netns.requirements_missing())


class Pair:
    """meshlet in namespace a and wireguard-go in namespace b, configured as each other's peer."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.a_if = lab.p + "wa"
        self.b_if = lab.p + "wb"
        self.a_priv, self.a_pub = netns.genkey()
        self.b_priv, self.b_pub = netns.genkey()
        self.meshlet: Any = None
        self.wggo: Any = None

    # --- start ------------------------------------------------------------------------

    def start(
        self,
        meshlet_endpoint: bool = True,
        wg_endpoint: bool = False,
        meshlet_psk: str | None = None,
        wg_psk: str | None = None,
        meshlet_peer_key: str | None = None,
    ) -> "Pair":
        self.start_wireguard_go(wg_endpoint, wg_psk)
        self.start_meshlet(meshlet_endpoint, meshlet_psk, meshlet_peer_key)
        return self

    def start_wireguard_go(self, endpoint: bool, psk: str | None) -> None:
        lab = self.lab
        self.wggo = lab.wireguard_go("b", self.b_if)
        key = lab.key_file("b.key", self.b_priv)
        lab.wg("b", "set", self.b_if, "private-key", key, "listen-port", str(PORT))
        self.wg_set_peer(endpoint, psk)
        lab.ip("b", "address", "add", B_TUN + "/24", "dev", self.b_if)
        lab.ip("b", "address", "add", B_TUN6 + "/64", "dev", self.b_if, "nodad")
        lab.ip("b", "link", "set", self.b_if, "mtu", "1420", "up")

    def wg_set_peer(self, endpoint: bool, psk: str | None = None, keepalive: int = 0) -> None:
        args = ["set", self.b_if, "peer", self.a_pub, "allowed-ips", A_TUN + "/32," + A_TUN6 + "/128"]
        if endpoint:
            args += ["endpoint", "%s:%d" % (self.lab.under["a"], PORT)]
        if psk:
            args += ["preshared-key", self.lab.key_file("b.psk", psk)]
        if keepalive:
            args += ["persistent-keepalive", str(keepalive)]
        self.lab.wg("b", *args)

    def start_meshlet(self, endpoint: bool, psk: str | None, peer_key: str | None) -> None:
        lab = self.lab
        lines = [
            "[Interface]",
            "PrivateKey = " + self.a_priv,
            "ListenPort = %d" % PORT,
            "Address = %s/24, %s/64" % (A_TUN, A_TUN6),
            "",
            "[Peer]",
            "PublicKey = " + (peer_key or self.b_pub),
            "AllowedIPs = %s/32, %s/128" % (B_TUN, B_TUN6),
        ]
        if endpoint:
            lines.append("Endpoint = %s:%d" % (lab.under["b"], PORT))
        if psk:
            lines.append("PresharedKey = " + psk)
        conf = lab.key_file(self.a_if + ".conf", "\n".join(lines))
        self.meshlet = lab.spawn(
            "a",
            "meshlet",
            [sys.executable, "-m", "meshlet_agent", "wg", "up", conf, "--ifname", self.a_if, "-v"],
        )
        sock = localapi.socket_path(self.a_if)
        netns.wait_for(
            lambda: (Path(sock).exists() and " up: " in self.meshlet.log()) or not self.meshlet.alive(),
            20,
            "meshlet to come up",
        )
        assert self.meshlet.alive(), "meshlet exited:\n" + self.meshlet.log()

    # --- inspect ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return localapi.request(self.a_if)

    def dropped(self) -> dict[str, int]:
        return dict(self.status()["dropped"])

    def wg_latest_handshake(self) -> int:
        out = self.lab.wg("b", "show", self.b_if, "latest-handshakes").split()
        return int(out[1]) if len(out) >= 2 else 0

    def wg_endpoint(self) -> str:
        out = self.lab.wg("b", "show", self.b_if, "endpoints").split()
        return out[1] if len(out) >= 2 else ""

    def ping(self, side: str, dst: str, count: int = 3, deadline_s: int = 10) -> None:
        res = self.lab.ping(side, dst, count, deadline_s)
        assert res.returncode == 0, "ping %s -> %s failed:\n%s%s\n--- meshlet log ---\n%s" % (
            side,
            dst,
            res.stdout,
            res.stderr,
            self.meshlet.log()[-4000:],
        )


@pytest.fixture
def pair(netns_ok: None, tmp_path: Path) -> Iterator[Pair]:
    lab = netns.Lab(workdir=str(tmp_path))
    try:
        lab.up()
        yield Pair(lab)
    finally:
        lab.down()


def transfer(
    pair: Pair, sender: str, mbps: float = 0, during: Any = None, timeout_s: float = 60
) -> dict[str, Any]:
    """Sends TRANSFER_BYTES over TCP through the tunnel; returns both ends' reports (sha256 must match)."""
    lab = pair.lab
    receiver = "b" if sender == "a" else "a"
    dst = B_TUN if receiver == "b" else A_TUN
    recv = lab.spawn(receiver, "recv", [sys.executable, NETNS_PY, "recv", dst, "5201"])
    netns.wait_for(lambda: "listening" in recv.log() or not recv.alive(), 10, "the receiver to listen")
    result: dict[str, Any] = {}

    def send() -> None:
        res = lab.run(
            sender,
            sys.executable,
            NETNS_PY,
            "send",
            dst,
            "5201",
            str(TRANSFER_BYTES),
            str(mbps),
            timeout=timeout_s,
            check=False,
        )
        result["send_rc"], result["send_out"] = res.returncode, res.stdout + res.stderr

    t = threading.Thread(target=send)
    t.start()
    if during is not None:
        during()
    t.join(timeout_s + 5)
    recv.popen.wait(10)
    assert result.get("send_rc") == 0, "sender failed: %s\n--- meshlet log ---\n%s" % (
        result.get("send_out"),
        pair.meshlet.log()[-4000:],
    )
    sent = json.loads(result["send_out"].strip().splitlines()[-1])
    got = json.loads(recv.log().strip().splitlines()[-1])
    assert got["bytes"] == sent["bytes"] == TRANSFER_BYTES
    assert got["sha256"] == sent["sha256"]
    return {"sent": sent, "received": got}


# --- handshakes, ping ---------------------------------------------------------------------


def test_meshlet_initiates(pair: Pair) -> None:
    pair.start(meshlet_endpoint=True, wg_endpoint=False)
    pair.ping("a", B_TUN)  # the first packet starts meshlet's handshake
    assert pair.wg_latest_handshake() > 0
    assert pair.wg_endpoint() == "%s:%d" % (pair.lab.under["a"], PORT)
    pair.ping("b", A_TUN)
    pair.ping("a", B_TUN6)
    pair.ping("b", A_TUN6)
    st = pair.status()
    (peer,) = st["peers"]
    assert peer["public_key"] == pair.b_pub
    assert peer["latest_handshake_unix_ms"] > 0 and peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
    assert "handshake completed" in pair.meshlet.log()

    # `meshlet wg show` speaks wg's format.
    show = subprocess.run(
        [sys.executable, "-m", "meshlet_agent", "wg", "show", pair.a_if],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith("interface: %s\n  public key: %s\n" % (pair.a_if, pair.a_pub))
    assert "peer: %s\n  endpoint: %s:%d\n" % (pair.b_pub, pair.lab.under["b"], PORT) in show.stdout
    assert re.search(r"latest handshake: (Now|\d+ seconds? ago)", show.stdout)
    assert "transfer: " in show.stdout

    # SIGTERM tears the interface down cleanly.
    assert pair.meshlet.stop() == 0, pair.meshlet.log()
    assert not Path(localapi.socket_path(pair.a_if)).exists()
    gone = subprocess.run(["ip", "-n", pair.lab.ns["a"], "link", "show", pair.a_if], capture_output=True)
    assert gone.returncode != 0
    assert "%s down" % pair.a_if in pair.meshlet.log()
    assert "Traceback" not in pair.meshlet.log()


def test_wireguard_go_initiates(pair: Pair) -> None:
    pair.start(meshlet_endpoint=False, wg_endpoint=True)
    pair.ping("b", A_TUN)  # meshlet has no endpoint: it answers the initiation and learns one
    (peer,) = pair.status()["peers"]
    assert peer["endpoint"] == "%s:%d" % (pair.lab.under["b"], PORT)
    assert peer["latest_handshake_unix_ms"] > 0
    pair.ping("a", B_TUN)
    pair.ping("a", B_TUN6)
    assert "Traceback" not in pair.meshlet.log()


# --- TCP through the tunnel ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sender", ["a", "b"], ids=["meshlet_to_wggo", "wggo_to_meshlet"])
def test_tcp_transfer_20mb(pair: Pair, sender: str) -> None:
    pair.start(meshlet_endpoint=True, wg_endpoint=True)
    pair.ping("a", B_TUN, count=1)
    report = transfer(pair, sender)
    mbps = TRANSFER_BYTES * 8 / report["received"]["seconds"] / 1e6 if report["received"]["seconds"] else 0
    print("20 MB %s: %.1f s, %.0f Mbit/s" % (sender, report["received"]["seconds"], mbps))
    assert "Traceback" not in pair.meshlet.log()


@pytest.mark.slow
@pytest.mark.parametrize("sender", ["a", "b"], ids=["meshlet_sends", "wggo_sends"])
def test_rekey_during_transfer(pair: Pair, sender: str) -> None:
    """wireguard-go forgets the peer mid-transfer and comes back with a new handshake; TCP survives.

    `wg set ... peer remove` then re-adding it is what a restarted peer looks
    like: its sessions are gone, packets under the old session are dropped
    there, and (with persistent-keepalive) it initiates at once. meshlet must
    answer while its own old session is still in use and move to the new one.
    """
    pair.start(meshlet_endpoint=True, wg_endpoint=True)
    pair.ping("a", B_TUN, count=1)
    first = pair.status()["peers"][0]["latest_handshake_unix_ms"]

    def rekey() -> None:
        time.sleep(1.5)
        pair.lab.wg("b", "set", pair.b_if, "peer", pair.a_pub, "remove")
        pair.wg_set_peer(endpoint=True, keepalive=25)

    report = transfer(pair, sender, mbps=40, during=rekey)  # paced: 20 MB takes about 4 s, rekey at 1.5 s
    assert report["sent"]["seconds"] > 2.0, "the transfer ended before the rekey: %r" % report
    assert pair.wg_latest_handshake() > 0  # a handshake after the re-add
    assert pair.status()["peers"][0]["latest_handshake_unix_ms"] > first
    log = pair.meshlet.log()
    assert "new session (rekey)" in log, log[-3000:]
    assert "Traceback" not in log


# --- failures that must stay failures, quietly ------------------------------------------


def _wait_drops(pair: Pair, reason: str, at_least: int, timeout_s: float) -> dict[str, int]:
    def enough() -> dict[str, int] | None:
        d = pair.dropped()
        return d if d.get(reason, 0) >= at_least else None

    try:
        result: dict[str, int] = netns.wait_for(
            enough, timeout_s, "%d drops for %s" % (at_least, reason), 0.2
        )
    except TimeoutError:
        raise AssertionError("drops: %r\n%s" % (pair.dropped(), pair.meshlet.log()[-3000:])) from None
    return result


def _assert_logged_once(pair: Pair, dropped: dict[str, int]) -> None:
    log = pair.meshlet.log()
    for reason in dropped:
        lines = [ln for ln in log.splitlines() if "dropping packets: %s " % reason in ln]
        assert len(lines) == 1, "reason %s logged %d times:\n%s" % (reason, len(lines), log[-3000:])
    assert "Traceback" not in log


@pytest.mark.slow
def test_wrong_preshared_key(pair: Pair) -> None:
    psk_a = subprocess.run(["wg", "genpsk"], capture_output=True, text=True, check=True).stdout.strip()
    psk_b = subprocess.run(["wg", "genpsk"], capture_output=True, text=True, check=True).stdout.strip()
    pair.start(meshlet_endpoint=True, wg_endpoint=False, meshlet_psk=psk_a, wg_psk=psk_b)
    res = pair.lab.ping("a", B_TUN, count=1, deadline_s=2)
    assert res.returncode != 0
    # wireguard-go answers the initiation (the PSK only enters after it); meshlet cannot verify the answer.
    # Retries come every 5 s: wait for the second to see that the reason is logged once, not per packet.
    dropped = _wait_drops(pair, "bad_tag", 2, 15)
    assert pair.meshlet.alive()
    assert pair.status()["peers"][0]["latest_handshake_unix_ms"] == 0
    assert pair.wg_latest_handshake() == 0
    _assert_logged_once(pair, dropped)
    print("dropped:", dropped)


@pytest.mark.slow
def test_wrong_peer_key(pair: Pair) -> None:
    _, wrong_pub = netns.genkey()
    pair.start(meshlet_endpoint=True, wg_endpoint=True, meshlet_peer_key=wrong_pub)
    res = pair.lab.ping("b", A_TUN, count=1, deadline_s=2)
    assert res.returncode != 0
    # wireguard-go's initiation reaches meshlet but carries a static key meshlet has no [Peer] for.
    dropped = _wait_drops(pair, "unknown_peer", 2, 15)
    assert pair.meshlet.alive()
    assert pair.status()["peers"][0]["latest_handshake_unix_ms"] == 0
    _assert_logged_once(pair, dropped)
    print("dropped:", dropped)


# --- roaming --------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["address", "port"])
def test_roaming_endpoint(pair: Pair, change: str) -> None:
    """wireguard-go's side moves; meshlet follows its authenticated packets to the new address.

    `address`: the veth address changes from .2 to .3. wireguard-go 0.0.20220316
    keeps its cached ("sticky") source .2 and its sends fail with ENETUNREACH
    until its endpoint is set again, so the test re-issues `wg set ... endpoint`
    (same value) to clear it; meshlet's side needs nothing. `port`: wireguard-go
    rebinds to another UDP port, as a NAT rebinding looks from outside.
    """
    lab = pair.lab
    pair.start(meshlet_endpoint=True, wg_endpoint=True)
    pair.ping("a", B_TUN)
    assert pair.status()["peers"][0]["endpoint"] == "%s:%d" % (lab.under["b"], PORT)
    if change == "address":
        new = "%s.3:%d" % (netns.UNDER, PORT)
        # Delete first: removing a primary address also removes the secondaries of its subnet.
        lab.ip("b", "address", "del", lab.under["b"] + "/24", "dev", lab.veth["b"])
        lab.ip("b", "address", "add", netns.UNDER + ".3/24", "dev", lab.veth["b"])
        pair.wg_set_peer(endpoint=True)
    else:
        new = "%s:%d" % (lab.under["b"], PORT + 1)
        lab.wg("b", "set", pair.b_if, "listen-port", str(PORT + 1))
    pair.ping("b", A_TUN)  # leaves from the new address; meshlet's replies must go there
    assert pair.status()["peers"][0]["endpoint"] == new
    pair.ping("a", B_TUN)
    log = pair.meshlet.log()
    assert "endpoint changed to " + new in log
    assert "Traceback" not in log


# --- the interface under meshlet's feet ---------------------------------------------------


def test_interface_deleted_exits_cleanly(pair: Pair) -> None:
    """`ip link del` of meshlet's interface: one clear error line, exit status 1, nothing left behind."""
    pair.start(meshlet_endpoint=True)
    pair.ping("a", B_TUN, count=1)
    pair.lab.ip("a", "link", "del", pair.a_if)
    assert pair.meshlet.popen.wait(10) == 1
    log = pair.meshlet.log()
    assert log.rstrip().splitlines()[-1].startswith("meshlet: interface %s vanished" % pair.a_if), log[-2000:]
    assert "Traceback" not in log
    assert not Path(localapi.socket_path(pair.a_if)).exists()
