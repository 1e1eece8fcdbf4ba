"""The tailnet data plane (agent/meshlet_agent/dataplane.py).

First without root: the plaintext hooks the pump calls for every packet (the
MagicDNS intercept and the packet filter), with a stand-in engine.

Then two DataPlanes in two network namespaces, fed hand-written netmaps (no
control server), talking through a meshlet-derp relay in the hub:

    leaf a: dataplane_driver.py a         leaf b: dataplane_driver.py b
      a0: 100.64.0.1, fd7a:115c:a1e0::1     b0: 100.64.0.2, fd7a:115c:a1e0::2
                  \\                             /
       hub: meshlet-derp (TLS, self-signed, InsecureForTests; region 901; STUN)
            UDP forwarded between the leaves dropped when nftables is there

Checked: the home region is found and reported; ping through DERP; a
4 MiB TCP transfer with its SHA-256; a port the filter does not open is
dropped (and counted); MagicDNS queries to 100.100.100.100 and
fd7a:115c:a1e0::53 answered locally and "upstream" by a fake resolver; a
disco ping reported as DERP(lab); status in tailscale terms. Last, with UDP
between the leaves opened and each node's discovered endpoints in the other's
netmap: the path goes direct (CurAddr, a ping via the address, a TCP transfer
carried by UDP), and blocking UDP again falls back to DERP. Needs root and
iproute2; skips with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from dnslib import QTYPE, DNSRecord

from meshlet.control.netmap import NetMap
from meshlet.key import NodePrivate
from meshlet.packet import PROTO_UDP, parse, udp_packet
from meshlet_agent.dataplane import MAGIC_DNS_V4, DataPlane, parse_prefix

from meshlet_testing.lab import NETNS_PY, netns, skip_unless  # noqa: E402  (puts tools/lab on sys.path)
import tailnode  # noqa: E402  (tools/lab, on sys.path once netns is loaded)
import transfer  # noqa: E402

DRIVER = str(Path(__file__).with_name("dataplane_driver.py"))
REGION = 901
A_IP, B_IP = "100.64.0.1", "100.64.0.2"
A_IP6, B_IP6 = "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"
OPEN_PORT, CLOSED_PORT = 8000, 9000
TRANSFER_BYTES = 4 << 20


# --- the hooks, without root ----------------------------------------------------------


class FakeEngine:
    def __init__(self) -> None:
        self.injected: list[bytes] = []
        self.io_errors: dict[str, int] = {}

    def inject(self, packet: bytes) -> bool:
        self.injected.append(packet)
        return True


class Resolver:
    def __init__(self, local: bytes | None) -> None:
        self.local = local

    def answer_local(self, query: bytes) -> bytes | None:
        return self.local

    async def resolve(self, query: bytes) -> bytes:
        return b"upstream:" + query


def _plane(resolver: Any = None) -> tuple[DataPlane, FakeEngine]:
    dp = DataPlane(NodePrivate.generate(os.urandom), resolver=resolver)
    engine = FakeEngine()
    dp.engine = engine  # type: ignore[assignment]
    return dp, engine


def test_parse_prefix_reads_the_netmaps_addresses() -> None:
    assert parse_prefix("100.64.0.1/32") == (bytes([100, 64, 0, 1]), 32)
    assert parse_prefix("fd7a:115c:a1e0::1/128")[1] == 128
    assert parse_prefix("10.0.0.1") == (bytes([10, 0, 0, 1]), 32)
    for bad in ("100.64.0.1/33", "nonsense", "1.2.3.4/x"):
        with pytest.raises(ValueError):
            parse_prefix(bad)


def test_dns_to_100_100_100_100_is_answered_into_the_tun() -> None:
    me = bytes([100, 64, 0, 1])
    query = udp_packet(me, MAGIC_DNS_V4, 40000, 53, b"question")
    dp, engine = _plane(Resolver(b"answer"))
    assert dp.outbound(query, 0) is False  # consumed: not for WireGuard
    reply = parse(engine.injected[0])
    assert (reply.proto, reply.src, reply.dst, reply.src_port, reply.dst_port) == (
        PROTO_UDP, MAGIC_DNS_V4, me, 53, 40000,
    )  # fmt: skip
    assert engine.injected[0][reply.payload_offset :] == b"answer"


def test_dns_not_answered_locally_goes_upstream() -> None:
    async def body() -> None:
        me = bytes([100, 64, 0, 1])
        dp, engine = _plane(Resolver(None))
        assert dp.outbound(udp_packet(me, MAGIC_DNS_V4, 40001, 53, b"q"), 0) is False
        for _ in range(100):
            if engine.injected:
                break
            await asyncio.sleep(0.01)
        reply = parse(engine.injected[0])
        assert engine.injected[0][reply.payload_offset :] == b"upstream:q"

    asyncio.run(body())


def test_without_a_resolver_dns_is_dropped_and_counted() -> None:
    dp, engine = _plane(None)
    me = bytes([100, 64, 0, 1])
    assert dp.outbound(udp_packet(me, MAGIC_DNS_V4, 40000, 53, b"q"), 0) is False
    assert engine.injected == []
    assert dp.status()["Counters"]["dns_no_resolver"] == 1


def test_the_filter_denies_everything_until_the_first_netmap_and_counts_it() -> None:
    dp, _ = _plane()
    peer, me = bytes([100, 64, 0, 2]), bytes([100, 64, 0, 1])
    assert dp.outbound(udp_packet(me, peer, 5000, 6000, b"x"), 0) is True  # not DNS: on to WireGuard
    assert dp.inbound(udp_packet(peer, me, 6000, 5000, b"y"), 0) is False
    assert dp.inbound(b"\x45garbage", 0) is False
    counters = dp.status()["Counters"]
    assert counters["bad_packet_in"] == 1
    assert sum(n for k, n in counters.items() if k.startswith("filter_")) == 1


def test_a_filter_that_does_not_compile_keeps_the_last_good_one() -> None:
    dp, _ = _plane()
    nm = NetMap()
    nm.packet_filters = {
        "base": [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]
    }
    dp._addresses = [(bytes([100, 64, 0, 1]), 32)]
    dp._apply_filter(nm.packet_filter)
    good = dp.filter
    dp._apply_filter([{"SrcIPs": ["not an address"], "DstPorts": "nope"}])
    assert dp.filter is good
    assert dp.status()["Counters"]["bad_filter"] == 1


# --- two data planes in namespaces ----------------------------------------------------------


def _node(n: int, key: NodePrivate, disco: str | None, endpoints: list[str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "ID": n, "Key": key.public().to_text(), "Name": "node-%d.tailnet.test." % n,
        "Addresses": ["100.64.0.%d/32" % n, "fd7a:115c:a1e0::%d/128" % n], "HomeDERP": REGION,
        "Online": True, "MachineAuthorized": True,
    }  # fmt: skip
    if disco:
        doc["DiscoKey"] = disco
    if endpoints:
        doc["Endpoints"] = endpoints
    return doc


def _netmap(me: int, keys: dict[int, NodePrivate], discos: dict[int, str], ports: tuple[int, int],
            derp_map: dict[str, Any], endpoints: dict[int, list[str]] | None = None) -> dict[str, Any]:  # fmt: skip
    eps = endpoints or {}
    peers = [_node(n, k, discos.get(n), eps.get(n)) for n, k in keys.items() if n != me]
    rule = {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": ports[0], "Last": ports[1]}}]}
    return {"Node": _node(me, keys[me], discos.get(me)), "Peers": peers, "DERPMap": derp_map,
            "PacketFilter": [rule], "Domain": "tailnet.test"}  # fmt: skip


class DataPlaneLab:
    def __init__(self) -> None:
        self.star = netns.Star(["a", "b"], block_leaf_udp=shutil.which("nft") is not None)
        self.relay = tailnode.Relay(self.star, region_id=REGION)
        self.keys = {1: NodePrivate.generate(os.urandom), 2: NodePrivate.generate(os.urandom)}
        self.names = {1: "a", 2: "b"}
        self.discos: dict[int, str] = {}
        self.endpoints: dict[int, list[str]] = {}  # as control would spread them; empty: DERP only
        self.procs: dict[int, Any] = {}

    def write_netmaps(self, ports: tuple[int, int] = (OPEN_PORT, OPEN_PORT)) -> None:
        for n, name in self.names.items():
            doc = _netmap(n, self.keys, self.discos, ports, self.relay.derp_map(), self.endpoints)
            (self.star.dir / (name + ".netmap.json")).write_text(json.dumps(doc))

    def start(self) -> None:
        self.star.up()
        self.relay.start()
        self.write_netmaps()
        for n, name in self.names.items():
            path = self.star.dir / (name + ".key")
            path.write_text(self.keys[n].to_text())
            path.chmod(0o600)
            self.procs[n] = self.star.spawn(
                name, "driver-" + name, [sys.executable, DRIVER, str(self.star.dir), name]
            )
        for n, name in self.names.items():
            proc = self.procs[n]
            netns.wait_for(lambda: "ready" in proc.log() or not proc.alive(), 30, "driver " + name)
            assert proc.alive(), proc.log()
        # Control would hand out each node's disco key; here the test does.
        for n, name in self.names.items():
            self.discos[n] = self.request(name, {"cmd": "status"})["disco"]
        self.write_netmaps()
        for name in self.names.values():
            assert self.request(name, {"cmd": "reload"}) == {"ok": True}

    def request(self, name: str, req: dict[str, Any], timeout_s: float = 15) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(self.star.dir / (name + ".sock")))
            s.sendall(json.dumps(req).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def logs(self) -> str:
        return "\n".join("--- %s\n%s" % (p.name, tailnode.tail(p.log(), 60)) for p in self.procs.values())


@pytest.fixture(scope="module")
def lab() -> Iterator[DataPlaneLab]:
    skip_unless(
        netns.netns_missing(),
        None if os.path.exists("/dev/net/tun") else
        "/dev/net/tun is missing: modprobe tun (or pass the device into the container)",
    )  # fmt: skip
    lab = DataPlaneLab()
    try:
        lab.start()
        yield lab
    except BaseException:
        print(lab.logs())
        raise
    finally:
        lab.star.down()


def _ping_until_answered(lab: DataPlaneLab, where: str, ip: str, timeout_s: float = 30) -> None:
    """The first packets wait for a handshake through DERP; then every ping must be answered."""
    deadline = time.monotonic() + timeout_s
    while lab.star.run(where, "ping", "-c", "1", "-W", "2", ip, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise AssertionError("no answer to ping %s from %s\n%s" % (ip, where, lab.logs()))


@pytest.mark.netns
def test_home_region_is_found_and_reported(lab: DataPlaneLab) -> None:
    for name in ("a", "b"):
        netns.wait_for(lambda: lab.request(name, {"cmd": "status"})["HomeDERP"] == REGION, 30, "home region")
        assert lab.request(name, {"cmd": "status"})["homes"] == [REGION]


@pytest.mark.netns
def test_ping_and_a_tcp_transfer_through_derp(lab: DataPlaneLab) -> None:
    _ping_until_answered(lab, "a", B_IP)
    lab.star.run("a", "ping", "-c", "3", "-i", "0.2", "-W", "5", B_IP)
    lab.star.run("b", "ping", "-c", "3", "-i", "0.2", "-W", "5", A_IP)
    _ping_until_answered(lab, "a", B_IP6)

    sent, got = transfer.run(lab.star, "a", "b", B_IP, OPEN_PORT, TRANSFER_BYTES,
                             recv_name="recv", listen_s=10)  # fmt: skip
    assert got["bytes"] == sent["bytes"] == TRANSFER_BYTES
    assert got["sha256"] == sent["sha256"]

    st = lab.request("a", {"cmd": "status"})
    peer = st["Peer"][lab.keys[2].public().to_text()]
    assert peer["Relay"] == "lab" and peer["CurAddr"] == ""
    assert peer["TxBytes"] > TRANSFER_BYTES and peer["RxBytes"] > 0
    assert peer["Active"] and peer["Online"] and peer["LastHandshake"] != "0001-01-01T00:00:00Z"
    assert st["Counters"]["tx_derp_bytes"] > TRANSFER_BYTES


@pytest.mark.netns
def test_a_port_the_filter_does_not_open_is_dropped(lab: DataPlaneLab) -> None:
    _ping_until_answered(lab, "a", B_IP)
    listener = lab.star.spawn("b", "closed", [sys.executable, NETNS_PY, "recv", B_IP, str(CLOSED_PORT)])
    netns.wait_for(lambda: "listening" in listener.log(), 10, "listener")
    before = lab.request("b", {"cmd": "status"})["Counters"].get("filter_no_rule", 0)
    probe = "import socket; socket.create_connection((%r, %d), timeout=3)" % (B_IP, CLOSED_PORT)
    res = lab.star.run("a", sys.executable, "-c", probe, check=False)
    assert res.returncode != 0 and "timed out" in res.stderr, res.stderr
    after = lab.request("b", {"cmd": "status"})["Counters"].get("filter_no_rule", 0)
    assert after > before

    # Control opens the port: the new filter applies at once, nothing else is disturbed.
    lab.write_netmaps(ports=(OPEN_PORT, CLOSED_PORT))
    assert lab.request("b", {"cmd": "reload"}) == {"ok": True}
    sent = json.loads(lab.star.run("a", sys.executable, NETNS_PY, "send", B_IP, str(CLOSED_PORT),
                                   "65536", timeout=60).stdout)  # fmt: skip
    assert sent["bytes"] == 65536
    lab.write_netmaps()
    lab.request("b", {"cmd": "reload"})


def _dns(lab: DataPlaneLab, server: str, name: str) -> list[str]:
    family = "socket.AF_INET6" if ":" in server else "socket.AF_INET"
    query = DNSRecord.question(name, "A").pack().hex()
    script = (
        "import socket, sys; s = socket.socket(%s, socket.SOCK_DGRAM); s.settimeout(5);"
        " s.sendto(bytes.fromhex(%r), (%r, 53)); sys.stdout.write(s.recv(4096).hex())"
        % (family, query, server)
    )
    out = lab.star.run("a", sys.executable, "-c", script).stdout
    reply = DNSRecord.parse(bytes.fromhex(out))
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


@pytest.mark.netns
def test_magicdns_queries_are_answered_by_the_resolver(lab: DataPlaneLab) -> None:
    assert _dns(lab, "100.100.100.100", "peer-b.tailnet.test") == ["100.64.0.2"]
    assert _dns(lab, "100.100.100.100", "example.com") == ["192.0.2.99"]
    assert _dns(lab, "fd7a:115c:a1e0::53", "peer-b.tailnet.test") == ["100.64.0.2"]
    st = lab.request("a", {"cmd": "status"})
    assert st["dns"] == {"local": 2, "forwarded": 1}
    assert st["Counters"]["dns_answers"] == 3


@pytest.mark.netns
def test_netcheck_reports_udp_the_public_address_and_the_home(lab: DataPlaneLab) -> None:
    rep = lab.request("a", {"cmd": "netcheck"})
    assert rep["UDP"] is True and rep["PreferredDERP"] == REGION
    assert rep["GlobalV4"].startswith(lab.star.addr["a"] + ":")  # no NAT between the leaf and the hub
    assert rep["MappingVariesByDestIP"] is None  # one STUN server in the map: cannot tell
    assert str(REGION) in rep["RegionLatency"]


@pytest.mark.netns
def test_disco_ping_through_derp(lab: DataPlaneLab) -> None:
    res = lab.request("a", {"cmd": "ping", "peer": lab.keys[2].public().to_text()})
    assert res.get("via") == "DERP(lab)", res
    assert res["latency_ms"] > 0


def _cur_addr(lab: DataPlaneLab, where: str, peer: int) -> str:
    st = lab.request(where, {"cmd": "status"})
    return str(st["Peer"][lab.keys[peer].public().to_text()]["CurAddr"])


@pytest.mark.netns
def test_with_udp_between_the_leaves_the_path_goes_direct_and_falls_back_to_derp_when_blocked(
    lab: DataPlaneLab,
) -> None:
    """Last in this module: it opens UDP between the leaves and gives the nodes each other's endpoints
    (what control does with the endpoints each node reports), then closes it again."""
    can_block = shutil.which("nft") is not None
    try:
        if can_block:
            lab.star.set_leaf_udp(blocked=False)
        for n, name in lab.names.items():
            eps = netns.wait_for(lambda: lab.request(name, {"cmd": "status"})["endpoints"], 30, "endpoints")
            assert lab.star.addr[name] in " ".join(eps), eps  # the leaf's address, by STUN and locally
            lab.endpoints[n] = eps
        lab.write_netmaps()
        for name in lab.names.values():
            assert lab.request(name, {"cmd": "reload"}) == {"ok": True}

        start = time.monotonic()
        deadline = start + 30
        while not (_cur_addr(lab, "a", 2) and _cur_addr(lab, "b", 1)):
            lab.star.run("a", "ping", "-c", "1", "-W", "1", B_IP, check=False)
            if time.monotonic() > deadline:
                raise AssertionError("no direct path within 30 s\n" + lab.logs())
        print("\ndirect path between the leaves after %.2f s of pinging" % (time.monotonic() - start))
        cur = _cur_addr(lab, "a", 2)
        assert cur in lab.endpoints[2]
        res = lab.request("a", {"cmd": "ping", "peer": lab.keys[2].public().to_text()})
        assert res.get("via") == cur and res.get("endpoint") == cur, res

        before = lab.request("a", {"cmd": "status"})["Counters"].get("tx_derp_bytes", 0)
        sent, got = transfer.run(lab.star, "a", "b", B_IP, OPEN_PORT, TRANSFER_BYTES,
                                 recv_name="recv-direct", listen_s=10)  # fmt: skip
        assert got["sha256"] == sent["sha256"] and got["bytes"] == TRANSFER_BYTES
        st = lab.request("a", {"cmd": "status"})
        assert st["Counters"]["tx_udp_bytes"] > TRANSFER_BYTES
        assert st["Counters"].get("tx_derp_bytes", 0) - before < TRANSFER_BYTES // 10  # the bulk went direct

        if can_block:
            lab.star.set_leaf_udp(blocked=True)
            start = time.monotonic()
            while _cur_addr(lab, "a", 2):
                lab.star.run("a", "ping", "-c", "1", "-W", "1", B_IP, check=False)
                if time.monotonic() > start + 30:
                    raise AssertionError("still direct 30 s after UDP was blocked\n" + lab.logs())
            print("back on DERP %.2f s after UDP was blocked" % (time.monotonic() - start))
            _ping_until_answered(lab, "a", B_IP)
            res = lab.request("a", {"cmd": "ping", "peer": lab.keys[2].public().to_text()})
            assert res.get("via") == "DERP(lab)", res
    finally:
        if can_block:
            lab.star.set_leaf_udp(blocked=True)
        lab.endpoints = {}
        lab.write_netmaps()
        for name in lab.names.values():
            lab.request(name, {"cmd": "reload"})
