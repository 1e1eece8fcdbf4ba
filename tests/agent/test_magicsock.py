"""MagicSock (agent/meshlet_agent/magicsock.py) against the real meshlet-derp, in one event loop.

Two nodes, alice and bob, share a one-region DERP map pointing at an
in-process relay (plain HTTP, STUN on an ephemeral port). Each MagicSock
gets a recording sink in place of the WireGuard pump. What a tailnet node
needs from it over DERP:

* netcheck finds the home region (STUN over the shared socket) and says so;
* WireGuard datagrams sent to a node key arrive at the other side's sink
  with the DERP pseudo source 127.3.3.40:<region>;
* a disco ping is answered with a pong on the path it came by, and its round
  trip is reported as "DERP(<region code>)";
* garbage (UDP or DERP, disco or not) is counted and changes nothing;
* after the relay restarts, traffic flows again.
"""

import asyncio
import functools
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet import disco
from meshlet.control.netmap import DERPRegion, Node
from meshlet.key import DiscoPrivate, NodePrivate
from meshlet.magic.classify import derp_addr, derp_region
from meshlet_agent.derpclient import DerpClient
from meshlet_agent.magicsock import MagicSock, PingError, derp_url, region_target
from meshlet.wire import format_addr
from meshlet_derp.config import Config
from meshlet_derp.server import DerpServer

REGION = 900


def wg_transport(counter: int, size: int = 64) -> bytes:
    """A WireGuard transport-data message (type 4): all MagicSock looks at is its shape."""
    return struct.pack("<IIQ", 4, 0x01020304, counter) + bytes(size)


class Sink:
    """Stands in for the pump: records what MagicSock delivers."""

    def __init__(self) -> None:
        self.received: "list[tuple[bytes, tuple[bytes, int]]]" = []
        self.flushes = 0
        self.arrived = asyncio.Event()

    def receive(self, data: bytes, src: "tuple[bytes, int]", now: int) -> None:
        self.received.append((data, src))
        self.arrived.set()

    def flush(self, now: int) -> None:
        self.flushes += 1

    async def wait_for(self, data: bytes, timeout_s: float = 10) -> "tuple[bytes, int]":
        async with asyncio.timeout(timeout_s):
            while True:
                for got, src in self.received:
                    if got == data:
                        return src
                self.arrived.clear()
                await self.arrived.wait()


async def _relay(key: NodePrivate, port: int = 0) -> DerpServer:
    cfg = Config(http=True, addr="127.0.0.1:%d" % port, metrics_addr="", stun=True, stun_port=0)
    cfg.validate()
    server = DerpServer(cfg, key)
    await server.start()
    return server


def _region(relay: DerpServer, region_id: int = REGION) -> DERPRegion:
    node: "dict[str, object]" = {
        "Name": "%da" % region_id,
        "RegionID": region_id,
        "HostName": "127.0.0.1",
        "IPv4": "127.0.0.1",
        "IPv6": "none",
        "DERPPort": relay.addr[1],
        "STUNPort": relay.stun_addrs[0][1] if relay.stun_addrs else -1,
        "InsecureForTests": True,
    }
    return DERPRegion(region_id, "lab" if region_id == REGION else "lab%d" % region_id, "Lab", [node])


class NodeUnderTest:
    def __init__(self, name: str) -> None:
        self.name = name
        self.key = NodePrivate.generate(os.urandom)
        self.disco = DiscoPrivate.generate(os.urandom)
        self.homes: "list[int]" = []
        self.sock = MagicSock(
            self.key, self.disco, port=0, derp_http=True, on_home_region=self.homes.append,
            derp_max_backoff_ms=200,
        )  # fmt: skip
        self.sink = Sink()
        self.sock.attach(self.sink, 64)

    def as_peer(self, home: int = REGION) -> Node:
        n = Node(1, self.key.public())
        n.disco_key = self.disco.public()
        n.home_derp = home
        return n


async def _pair(relay: DerpServer) -> "tuple[NodeUnderTest, NodeUnderTest]":
    alice, bob = NodeUnderTest("alice"), NodeUnderTest("bob")
    for me, other in ((alice, bob), (bob, alice)):
        await me.sock.start()
        me.sock.set_derp_map({REGION: _region(relay)})
        me.sock.set_peers({other.key.public(): other.as_peer()})
    for me in (alice, bob):
        async with asyncio.timeout(15):
            while me.sock.home_region != REGION:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(me.sock.wait_derp_connected(REGION), 10)
    return alice, bob


class _RelayedPair:
    """A relay with alice and bob at home on it (`_pair`); closes the nodes and the relay however
    the test ends."""

    def __init__(self) -> None:
        self.key = NodePrivate.generate(os.urandom)
        self.relay: DerpServer  # from __aenter__ on
        self.nodes: "list[NodeUnderTest]" = []

    async def __aenter__(self) -> "_RelayedPair":
        self.relay = await _relay(self.key)
        try:
            self.nodes = list(await _pair(self.relay))
        except BaseException:
            await self.relay.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for n in self.nodes:
            await n.sock.close()
        await self.relay.close()

    async def restart_relay(self) -> None:
        """Stops the relay and starts it again with the same key on the same port."""
        port = self.relay.addr[1]
        await self.relay.close()
        self.relay = await _relay(self.key, port)


def _with_pair(body: "Callable[[_RelayedPair, NodeUnderTest, NodeUnderTest], Awaitable[None]]") -> None:
    """Runs `body(pair, alice, bob)` on a fresh `_RelayedPair`."""

    async def main() -> None:
        async with _RelayedPair() as pair:
            await body(pair, pair.nodes[0], pair.nodes[1])

    asyncio.run(main())


def test_derp_urls_and_netcheck_targets_follow_the_derp_map() -> None:
    node: "dict[str, object]" = {"Name": "1a", "RegionID": 1, "HostName": "derp.example", "IPv4": "192.0.2.1",
                                 "STUNPort": 0}  # fmt: skip
    region = DERPRegion(1, "ex", "Example", [node])
    assert derp_url(node, http=False) == "https://derp.example/derp"
    assert derp_url({**node, "DERPPort": 8443}, http=False) == "https://derp.example:8443/derp"
    assert derp_url(node, http=True) == "http://derp.example:3340/derp"
    t = region_target(region, http=False)
    assert (t.stun_addrs, t.host, t.https_port, t.dial_host) == (
        [("192.0.2.1", 3478)],
        "derp.example",
        443,
        "192.0.2.1",
    )
    assert region_target(DERPRegion(1, "", "", [{**node, "STUNPort": -1}]), http=False).stun_addrs == []


def test_home_region_wireguard_both_ways_and_disco_ping_over_derp() -> None:
    async def body(pair: _RelayedPair, alice: NodeUnderTest, bob: NodeUnderTest) -> None:
        assert alice.homes == [REGION] and bob.homes == [REGION]

        # WireGuard, both ways, arriving from the DERP pseudo address.
        data = wg_transport(1)
        assert alice.sock.send(bob.key.public(), data)
        assert await bob.sink.wait_for(data) == derp_addr(REGION)
        back = wg_transport(2)
        assert bob.sock.send(alice.key.public(), back)
        assert await alice.sink.wait_for(back) == derp_addr(REGION)
        assert alice.sock.counters()["tx_derp_packets"] >= 1
        assert bob.sock.counters()["rx_derp_packets"] >= 1
        assert alice.sock.peer_relay(bob.key.public()) == "lab"

        # Disco ping over DERP: bob answers with a pong on the same path.
        result = await alice.sock.ping(bob.key.public(), timeout_s=5)
        assert result.via == "DERP(lab)" and result.region_id == REGION
        assert result.latency_s > 0
        assert bob.sock.counters()["tx_disco_pongs"] == 1

        # A ping to a node that is not a peer is refused, with a reason.
        with pytest.raises(PingError, match="not a peer"):
            await alice.sock.ping(NodePrivate.generate(os.urandom).public())

    _with_pair(body)


def test_garbage_is_counted_and_traffic_goes_on() -> None:
    async def body(pair: _RelayedPair, alice: NodeUnderTest, bob: NodeUnderTest) -> None:
        relay_url = "http://127.0.0.1:%d/derp" % pair.relay.addr[1]
        mallory = DerpClient(relay_url, NodePrivate.generate(os.urandom))
        try:
            mallory.start()
            await asyncio.wait_for(mallory.wait_connected(), 10)
            bob_key = bob.key.public()
            # Over DERP: junk, a disco packet from an unknown disco key, one that does not open.
            stranger = DiscoPrivate.generate(os.urandom)
            shared = disco.beforenm(stranger, bob.disco.public())
            unknown = disco.seal(shared, stranger.public(), os.urandom(24), disco.Ping(os.urandom(12)))
            forged = bytearray(
                disco.seal(shared, alice.disco.public(), os.urandom(24), disco.Ping(os.urandom(12)))
            )
            for junk in (b"", b"\xff" * 100, unknown, bytes(forged), disco.MAGIC + b"short"):
                mallory.send(bob_key, junk)
            # Over UDP, to the shared socket.
            udp = alice.sock.udp
            assert udp is not None and bob.sock.udp is not None
            for junk in (b"\x00", os.urandom(300), unknown, b"\x01" + bytes(147)):
                udp.sendto(junk, (bytes([127, 0, 0, 1]), bob.sock.udp.port))
            await asyncio.sleep(0.3)
            counters = bob.sock.counters()
            drops = sum(n for name, n in counters.items() if name.startswith("drop_"))
            assert drops >= 5, counters
            assert counters.get("drop_disco_unknown_sender", 0) >= 2, counters
            assert counters.get("drop_disco_bad", 0) >= 1, counters

            data = wg_transport(7)
            assert alice.sock.send(bob_key, data)
            assert await bob.sink.wait_for(data) == derp_addr(REGION)
            assert (await alice.sock.ping(bob_key)).via == "DERP(lab)"
        finally:
            await mallory.close()

    _with_pair(body)


def test_traffic_resumes_after_the_relay_restarts() -> None:
    async def body(pair: _RelayedPair, alice: NodeUnderTest, bob: NodeUnderTest) -> None:
        assert alice.sock.send(bob.key.public(), wg_transport(1))
        await bob.sink.wait_for(wg_transport(1))
        await pair.restart_relay()
        async with asyncio.timeout(20):
            n = 100
            while True:  # sends are dropped while the clients redial; keep trying
                n += 1
                data = wg_transport(n)
                alice.sock.send(bob.key.public(), data)
                try:
                    await bob.sink.wait_for(data, 0.2)
                    break
                except TimeoutError:
                    pass
        assert (await alice.sock.ping(bob.key.public())).via == "DERP(lab)"

    _with_pair(body)


def test_a_peer_whose_home_is_unknown_is_reached_via_our_home() -> None:
    async def body(pair: _RelayedPair, alice: NodeUnderTest, bob: NodeUnderTest) -> None:
        alice.sock.set_peers({bob.key.public(): bob.as_peer(home=0)})
        data = wg_transport(3)
        assert alice.sock.send(bob.key.public(), data)
        await bob.sink.wait_for(data)

    _with_pair(body)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), prefix=st.sampled_from([b"", disco.MAGIC, disco.MAGIC + bytes(32)]))
def test_any_bytes_from_derp_or_udp_are_counted_never_raised(data: bytes, prefix: bytes) -> None:
    """Whatever a relay or the network hands MagicSock, it classifies, counts or delivers; nothing raises."""
    alice, bob = _garbage_pair()
    packet = prefix + data
    if prefix == disco.MAGIC + bytes(32):  # a known sender key: the box itself is garbage
        packet = disco.MAGIC + alice.disco.public().raw + data
    bob.sock._on_derp(REGION, alice.key.public(), packet)
    bob.sock._on_disco(packet, None, 0, (bytes([127, 0, 0, 1]), 41641))
    assert sum(bob.sock.counters().values()) > 0


@functools.cache
def _garbage_pair() -> "tuple[NodeUnderTest, NodeUnderTest]":
    alice, bob = NodeUnderTest("alice"), NodeUnderTest("bob")
    bob.sock.set_peers({alice.key.public(): alice.as_peer()})  # not started: no sockets, no relay
    return alice, bob


def test_a_peer_homed_elsewhere_is_reached_through_its_region_dialled_on_demand() -> None:
    async def body() -> None:
        relays = [await _relay(NodePrivate.generate(os.urandom)) for _ in range(2)]
        regions = {REGION: _region(relays[0]), REGION + 1: _region(relays[1], REGION + 1)}
        alice, bob = NodeUnderTest("alice"), NodeUnderTest("bob")
        # Both relays are on loopback, so latency cannot pick: force the homes (ForcePreferredDERP).
        alice.sock.home.force_region = REGION
        bob.sock.home.force_region = REGION + 1
        try:
            for me, other, other_home in ((alice, bob, REGION + 1), (bob, alice, REGION)):
                await me.sock.start()
                me.sock.set_derp_map(regions)
                me.sock.set_peers({other.key.public(): other.as_peer(home=other_home)})
            async with asyncio.timeout(15):
                while (alice.sock.home_region, bob.sock.home_region) != (REGION, REGION + 1):
                    await asyncio.sleep(0.02)

            data = wg_transport(11)
            async with asyncio.timeout(10):
                while not alice.sock.send(bob.key.public(), data):  # region 901 is being dialled
                    await asyncio.sleep(0.05)
            assert await bob.sink.wait_for(data) == derp_addr(REGION + 1)
            back = wg_transport(12)
            async with asyncio.timeout(10):
                while not bob.sock.send(alice.key.public(), back):
                    await asyncio.sleep(0.05)
            assert await alice.sink.wait_for(back) == derp_addr(REGION)
            result = await alice.sock.ping(bob.key.public())
            assert result.region_id == REGION + 1

            # Idle for derpInactiveCleanupTime: the region that is not home is closed, home stays.
            assert alice.sock.derp_connected(REGION + 1)
            alice.sock.close_idle_regions(time.monotonic() + 61)
            assert not alice.sock.derp_connected(REGION + 1) and alice.sock.derp_connected(REGION)
        finally:
            for n in (alice, bob):
                await n.sock.close()
            for r in relays:
                await r.close()

    asyncio.run(body())


# --- direct paths (issue 7) -------------------------------------------------------------------


def _with_endpoints(node: NodeUnderTest) -> Node:
    """The peer as control would show it once it reported its endpoints (netcheck's discovery)."""
    n = node.as_peer()
    n.endpoints = [format_addr(*addr) for addr, _ in node.sock.endpoints]
    return n


class UdpBlock:
    """Stops UDP between the two MagicSocks in-process (as a firewall would): sends to the other's port
    are swallowed. DERP (TCP) is untouched."""

    def __init__(self, *nodes: NodeUnderTest) -> None:
        self.blocked = False
        ports = {n.sock.port for n in nodes}
        for n in nodes:
            udp = n.sock.udp
            assert udp is not None
            real = udp.sendto

            def sendto(data: bytes, dst: "tuple[bytes, int]", real: Any = real) -> None:
                if self.blocked and dst[1] in ports:
                    return
                real(data, dst)

            udp.sendto = sendto  # type: ignore[method-assign]


async def _until_source(
    sender: NodeUnderTest, receiver: NodeUnderTest, direct: bool, timeout_s: float = 30, start: float = 0.0
) -> float:
    """Sends WireGuard-shaped packets every 50 ms until one arrives over the wanted kind of path;
    returns the seconds since `start` (default: now) that took (reported, never asserted)."""
    start = start or time.monotonic()
    n = 1000 + int(time.monotonic() * 1000) % 100000
    async with asyncio.timeout(timeout_s):
        while True:
            n += 1
            data = wg_transport(n)
            sender.sock.send(receiver.key.public(), data)
            try:
                src = await receiver.sink.wait_for(data, 0.05)
            except TimeoutError:
                continue
            # Direct: over UDP, and the sender trusts the path (a stale one also gets copies while
            # DERP carries the traffic). DERP: over DERP.
            if direct and derp_region(src) is None and sender.sock.cur_addr(receiver.key.public()):
                return time.monotonic() - start
            if not direct and derp_region(src) is not None:
                return time.monotonic() - start


def test_two_nodes_go_direct_fall_back_to_derp_when_udp_dies_and_go_direct_again() -> None:
    async def body(pair: _RelayedPair, alice: NodeUnderTest, bob: NodeUnderTest) -> None:
        # Endpoint discovery: the STUN-reflexive address (loopback here) and the interface addresses.
        for n in (alice, bob):
            assert n.sock.endpoints, "no endpoints discovered"
            assert n.sock.report is not None and n.sock.report.udp
            assert (bytes([127, 0, 0, 1]), n.sock.port) in [a for a, _ in n.sock.endpoints]
        alice.sock.set_peers({bob.key.public(): _with_endpoints(bob)})
        bob.sock.set_peers({alice.key.public(): _with_endpoints(alice)})
        block = UdpBlock(alice, bob)

        # The first packets go via DERP while disco pings the candidates; a pong makes the path direct.
        t0 = time.monotonic()
        first = wg_transport(1)
        assert alice.sock.send(bob.key.public(), first)
        assert await bob.sink.wait_for(first) == derp_addr(REGION)
        t_direct = await _until_source(alice, bob, direct=True, start=t0)
        t1 = time.monotonic()
        bob.sock.send(alice.key.public(), wg_transport(2))
        t_back = await _until_source(bob, alice, direct=True, start=t1)
        print("\ntime to direct from the first packet: alice->bob %.3f s, bob->alice %.3f s" % (t_direct, t_back))
        cur = alice.sock.cur_addr(bob.key.public())
        assert cur, "no trusted direct path"
        assert alice.sock.counters().get("tx_call_me_maybe", 0) + bob.sock.counters().get(
            "rx_call_me_maybe", 0) >= 1  # fmt: skip
        res = await alice.sock.ping(bob.key.public())
        assert res.region_id == 0 and res.via == res.endpoint == cur, res

        # UDP dies: within the trust window (6.5 s) plus a heartbeat the packets go via DERP again.
        block.blocked = True
        t_fallback = await _until_source(alice, bob, direct=False)
        print("fallback to DERP after UDP was blocked: %.3f s" % t_fallback)
        assert alice.sock.cur_addr(bob.key.public()) == ""
        assert (await alice.sock.ping(bob.key.public())).via == "DERP(lab)"

        # UDP is back: the heartbeat's discovery round finds the path again.
        block.blocked = False
        t_again = await _until_source(alice, bob, direct=True)
        print("direct again after unblocking: %.3f s" % t_again)
        assert alice.sock.cur_addr(bob.key.public())

    _with_pair(body)


def test_a_call_me_maybe_makes_the_other_side_ping_back() -> None:
    """Only alice knows bob's endpoints; bob learns where to reach alice from her CallMeMaybe (via DERP)
    and from her pings, and goes direct too."""

    async def body(pair: _RelayedPair, alice: NodeUnderTest, bob: NodeUnderTest) -> None:
        alice.sock.set_peers({bob.key.public(): _with_endpoints(bob)})
        await _until_source(alice, bob, direct=True)
        t_back = await _until_source(bob, alice, direct=True)
        print("\nbob without alice's endpoints in its netmap goes direct in %.3f s" % t_back)
        assert bob.sock.counters().get("rx_call_me_maybe", 0) >= 1
        assert bob.sock.cur_addr(alice.key.public())

    _with_pair(body)


def test_call_me_maybe_over_udp_is_refused() -> None:
    alice, bob = _garbage_pair()
    shared = disco.beforenm(alice.disco, bob.disco.public())
    cmm = disco.seal(shared, alice.disco.public(), os.urandom(24), disco.CallMeMaybe([(bytes([192, 0, 2, 1]), 1)]))
    bob.sock._on_disco(cmm, None, 0, (bytes([192, 0, 2, 1]), 41641))
    assert bob.sock.counters().get("drop_call_me_maybe_not_via_derp", 0) >= 1
    ep = bob.sock.peer_endpoint(alice.key.public())
    assert ep is not None and (bytes([192, 0, 2, 1]), 1) not in ep.candidates


def test_our_nat_rebinding_is_reported_and_puts_every_direct_path_in_doubt() -> None:
    from meshlet_agent.netcheck import Report

    alice = NodeUnderTest("alice")
    bob = NodeUnderTest("bob")
    reported: "list[tuple[list[str], list[int]]]" = []
    bob.sock._on_endpoints = lambda eps, types: reported.append((eps, types))
    peer = alice.as_peer()
    peer.endpoints = ["10.0.0.2:41641"]
    bob.sock.set_peers({alice.key.public(): peer})
    ep = bob.sock.peer_endpoint(alice.key.public())
    assert ep is not None
    plan = ep.send(0)
    ep.pong(plan.actions[0].txid, 1)
    assert ep.best == (bytes([10, 0, 0, 2]), 41641)

    first = Report()
    first.global_v4 = (bytes([198, 51, 100, 7]), 41641)
    bob.sock._update_endpoints(first, None)
    assert reported[-1][0][0] == "198.51.100.7:41641" and reported[-1][1][0] == 2  # STUN first
    assert ep.best is not None  # the first report changes nothing for the paths

    moved = Report()
    moved.global_v4 = (bytes([198, 51, 100, 7]), 50000)
    moved.mapping_varies_by_dest_ip = True
    bob.sock._update_endpoints(moved, first.global_v4)
    eps, types = reported[-1]
    assert eps[0] == "198.51.100.7:50000" and types[0] == 2
    assert types[1] == 4 and eps[1].startswith("198.51.100.7:")  # STUN4LocalPort: the hard NAT guess
    assert ep.best is None  # rediscovery
    bob.sock._update_endpoints(moved, moved.global_v4)
    assert len(reported) == 2  # unchanged endpoints are not reported again
