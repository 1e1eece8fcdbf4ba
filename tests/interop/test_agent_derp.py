"""Two meshlet agents on a network where DERP is the only path between them.

    leaf a: `meshlet daemon` "laptop"        leaf b: `meshlet daemon` "pi-kitchen"
                      \\                                 /
        hub: meshlet-control serve --derp none --derp-map-file map.json
             meshlet-derp (TLS, self-signed, InsecureForTests; region 901; STUN)
             nftables: UDP forwarded between the leaves is dropped

The relay runs as its own `meshlet-derp` process, not embedded in the control
server, so that each can be stopped on its own: with control gone the two
agents keep talking on their last netmap (DESIGN.md, failure behaviour), and
after a relay restart their traffic resumes once the DERP clients reconnect.

What is checked, in order, on one tailnet: `meshlet ping` by name through
DERP; MagicDNS on 100.100.100.100 answering the peer's name (a dnslib query
from the namespace, and `getent hosts` through the leaf's resolv.conf, which
the agent pointed at MagicDNS); a 4 MiB TCP transfer with its SHA-256; an ACL
policy admitting one port and not another; control stopped; the relay
restarted; `meshlet down` giving the namespace its resolv.conf back byte for
byte (and the host's never touched). Each leaf has its own
/etc/netns/<ns>/resolv.conf (netlab.Star), so the agents never see the
host's. Every process is stopped by its recorded PID, the namespaces and
their /etc/netns entries are deleted. Needs root, iproute2 and nftables;
skips with the reason otherwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.netns]

from meshlet_testing.lab import netns, skip_unless  # noqa: E402  (puts tools/lab on sys.path)
import meshletnode  # noqa: E402  (tools/lab, on sys.path once netns is loaded)
import tailnode  # noqa: E402
import transfer  # noqa: E402

REGION = 901
JOIN_S = 60
PING_S = 30
TRANSFER_BYTES = 4 << 20
HOST_RESOLV = "/etc/resolv.conf"


class DerpLab:
    """The namespaces, control, the relay and the two agents of this module."""

    def __init__(self) -> None:
        self.star = netns.Star(["a", "b"], block_leaf_udp=True)
        self.relay = tailnode.Relay(self.star, region_id=REGION)
        self.control = tailnode.Control(self.star, serve_args=self.relay.control_args())
        self.laptop = meshletnode.MeshletNode(self.star, "a", "laptop", verbose=True)
        self.kitchen = meshletnode.MeshletNode(self.star, "b", "pi-kitchen", verbose=True)
        self.servers: dict[int, Any] = {}
        self.host_resolv = Path(HOST_RESOLV).read_bytes()

    def start(self) -> None:
        self.star.up()
        self.lab_resolv = self.star.resolv_conf_path("a").read_bytes()
        self.relay.start()
        self.control.start()
        for node in (self.laptop, self.kitchen):
            node.start()
            node.up(self.control.url, authkey=self.control.keys_create()["key"])
        for node in (self.laptop, self.kitchen):
            node.wait_running(JOIN_S)
        self.laptop.wait_peers(["pi-kitchen"], JOIN_S)
        self.kitchen.wait_peers(["laptop"], JOIN_S)
        self.ips = {n["hostname"]: n["ipv4"] for n in self.control.node_list().values()}

    def serve(self, port: int) -> None:
        """An HTTP page on pi-kitchen's tailnet address, port `port` (once)."""
        if port not in self.servers:
            self.servers[port] = meshletnode.serve_http(
                self.star,
                "b",
                "page-%d" % port,
                self.ips["pi-kitchen"],
                port,
                "port %d to {remote_host}" % port,
            )

    def get(self, port: int, timeout_s: float = 5) -> str:
        return meshletnode.fetch(self.star, "a", "http://%s:%d/" % (self.ips["pi-kitchen"], port), timeout_s)

    def logs(self) -> str:
        return "\n".join("--- %s ---\n%s" % (p.name, meshletnode.tail(p.log(), 20)) for p in self.star.procs)

    def stop(self) -> None:
        self.star.down()


@pytest.fixture(scope="module")
def lab() -> Iterator[DerpLab]:
    skip_unless(netns.netns_missing(), netns.nft_missing())
    dl = DerpLab()
    try:
        dl.start()
        yield dl
    finally:
        dl.stop()
    # Nothing left behind: the leaves' /etc/netns entries, and the host's resolver as it was.
    assert not any(Path("/etc/netns", ns).exists() for ns in dl.star.ns.values())
    assert Path(HOST_RESOLV).read_bytes() == dl.host_resolv


def test_ping_by_name_goes_through_derp(lab: DerpLab) -> None:
    out = lab.laptop.wait_ping("pi-kitchen", PING_S)
    assert "DERP(" in out, out
    back = lab.kitchen.wait_ping("laptop", PING_S)
    assert "DERP(" in back, back
    # And no direct path exists to take instead: a datagram from leaf to leaf dies in the hub.
    before = lab.star.dropped_udp()
    probe = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', (%r, 41641))"
    lab.star.run("a", sys.executable, "-c", probe % lab.star.addr["b"])
    netns.wait_for(lambda: lab.star.dropped_udp() > before, 5, "the hub to drop leaf-to-leaf UDP")


def test_magicdns_answers_the_peers_name_on_100_100_100_100(lab: DerpLab) -> None:
    from dnslib import QTYPE, DNSRecord

    query = DNSRecord.question("pi-kitchen.meshlet.internal.", "A").pack()
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
        "s.sendto(bytes.fromhex(sys.argv[1]), ('100.100.100.100', 53))\n"
        "print(s.recv(4096).hex())\n"
    )
    res = lab.star.run("a", sys.executable, "-c", code, query.hex(), check=False)
    assert res.returncode == 0, res.stderr + lab.logs()
    reply = DNSRecord.parse(bytes.fromhex(res.stdout.strip()))
    answers = [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]
    assert answers == [lab.ips["pi-kitchen"]], reply

    # And through the leaf's own resolver, which the agent pointed at MagicDNS (short name: search domain).
    resolv = lab.star.resolv_conf_path("a").read_text()
    assert "nameserver 100.100.100.100" in resolv, resolv
    got = lab.star.run("a", "getent", "hosts", "pi-kitchen", check=False)
    assert got.returncode == 0 and got.stdout.split()[0] == lab.ips["pi-kitchen"], (got, resolv)


def test_tcp_transfer_arrives_intact_through_the_relay(lab: DerpLab) -> None:
    want, got = transfer.run(lab.star, "a", "b", lab.ips["pi-kitchen"], 5001, TRANSFER_BYTES,
                             timeout_s=300, recv_name="recv", listen_s=10, recv_wait_s=60)  # fmt: skip
    assert got["bytes"] == want["bytes"] == TRANSFER_BYTES
    assert got["sha256"] == want["sha256"] == transfer.expected_sha256(TRANSFER_BYTES)


def test_policy_admits_one_port_and_not_another(lab: DerpLab) -> None:
    lab.serve(8001)
    lab.serve(8002)
    assert lab.get(8001).startswith("port 8001 to %s" % lab.ips["laptop"])
    assert lab.get(8002).startswith("port 8002")  # both open before the policy
    policy = lab.star.dir / "only-8001.json"
    policy.write_text('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:8001"]}]}')
    lab.control.admin("policy", "set", str(policy))
    try:

        def denied() -> bool:
            try:
                lab.get(8002, timeout_s=3)
            except RuntimeError:
                return True
            return False

        netns.wait_for(denied, 40, "pi-kitchen's filter to drop connections to port 8002", 0.5)
        assert lab.get(8001).startswith("port 8001")  # the admitted port still works
    finally:
        lab.control.admin("policy", "clear")
    netns.wait_for(lambda: _ok(lambda: lab.get(8002, 3)), 40, "port 8002 admitted again", 0.5)


def test_agents_keep_talking_while_control_is_down(lab: DerpLab) -> None:
    lab.serve(8001)
    lab.control.stop()
    try:
        assert "DERP(" in lab.laptop.wait_ping("pi-kitchen", PING_S)
        assert lab.get(8001).startswith("port 8001")
        assert lab.laptop.status()["BackendState"] == "Running"
    finally:
        lab.control.start()


@pytest.mark.slow
def test_traffic_resumes_after_the_relay_restarts(lab: DerpLab) -> None:
    lab.serve(8001)
    lab.relay.stop()
    with pytest.raises((meshletnode.NodeError, subprocess.TimeoutExpired)):
        lab.laptop.ping("pi-kitchen", timeout=20)
    lab.relay.start()
    # The DERP clients redial with backoff; then both sides are known to the new relay again.
    lab.laptop.wait_ping("pi-kitchen", 90)
    netns.wait_for(lambda: _ok(lambda: lab.get(8001, 3)), 60, "a fetch after the relay restart", 0.5)


def test_down_gives_the_namespace_its_resolv_conf_back_byte_for_byte(lab: DerpLab) -> None:
    path = lab.star.resolv_conf_path("a")
    assert b"100.100.100.100" in path.read_bytes()
    lab.laptop.down()
    netns.wait_for(lambda: path.read_bytes() == lab.lab_resolv, 10, "the lab's resolv.conf back in %s" % path)
    assert lab.laptop.status()["BackendState"] == "Stopped"
    assert Path(HOST_RESOLV).read_bytes() == lab.host_resolv


def _ok(fn: Any) -> bool:
    try:
        fn()
    except RuntimeError:
        return False
    return True
