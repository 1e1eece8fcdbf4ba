"""NAT topologies in network namespaces: an "internet" hub and, per agent, a LAN behind a NAT router.

The shapes follow shared/lab/natlab.sh (checked there with nat_probe.py and
coturn), rebuilt on `netlab.Star` so that `meshletnode.MeshletNode`,
`tailnode.Control` and `tailnode.Relay` run in it unchanged:

    hub <p>h  "the internet": 10.232.<i+1>.1/24 towards slot i, 10.232.254.1/32 on lo
              (the second STUN/DERP address), IPv4 forwarding, no NAT
       |
    slot i, by kind:
      none       leaf on the hub link itself: 10.232.<i+1>.2 is its public address
      home       leaf 192.168.<i+1>.2 -> router <p><leaf>r (nftables masquerade,
                 endpoint-independent mapping: Linux keeps the source port when
                 it is free, one mapping for every destination) -> hub
      symmetric  same, `masquerade fully-random`: a new random port per
                 destination (MappingVariesByDestIP, "hard NAT")
      double     leaf -> home router <p><leaf>r (masquerade) -> CGNAT segment
                 198.18.<i+1>.0/24 -> carrier router <p><leaf>g (masquerade) -> hub

Every NAT router also drops new connections to itself from its WAN side, as a
home router's firewall does; without that, hole punching between two Linux
routers stalls for 30 s (`NatLab.masquerade` says why).
      blocked    home router that drops every UDP packet forwarded from the
                 LAN: only TCP (DERP over TLS, control) gets out

The carrier segment uses 198.18.0.0/15 (RFC 2544 benchmarking), not the real
CGNAT range 100.64.0.0/10, because 100.64.0.0/10 is the tailnet's own range:
a CGNAT address there would collide with the agents' tailnet addresses and
routes. Every LAN is its own 192.168.<i+1>.0/24, so an agent that tries a
peer's LAN address (netmap endpoints include local addresses) reaches nothing
instead of itself. The hub's addresses are RFC 1918, so tsnet treats an
http:// control URL there as a private host (tailnode's note).

Leaves are the LAN namespaces (where the agents run); `Star.ns[leaf]`,
`Star.spawn`, `Star.run` and `Star.resolv_conf_path` work on them as on any
`Star` (own /etc/netns/<ns>/resolv.conf, so the host's is never touched).
Routers are reached with `router_run(leaf, ...)`. Everything is named from
one unique prefix and torn down by `down()`: processes by recorded PID, then
the namespaces (and with them every nftables table and conntrack entry).

    lab = NatLab({"a": "home", "b": "symmetric"}).up()
    lab.public_addr("a")         # 10.232.1.2: what a STUN server sees (the router's WAN address)
    lab.flush_conntrack("a")     # forget every NAT mapping of a's router(s)
    lab.remap("a")               # ... and map to new ports from now on (a router reboot)
    lab.block_between("a", "b")  # drop UDP between the two slots in the hub (DERP over TCP still works)
    lab.down()

`NatMesh` adds the tailnet (control + a second DERP/STUN region + one meshlet
agent per slot, started in parallel) and the measurements the tests and
tools/bench/direct_paths.py share: `ping_until_direct` (a `PathTrace`),
`cur_addr`, `netcheck`, `transfer` (transfer.py: TCP with SHA-256); `PathWatch` samples a
peer's CurAddr in a thread while the network changes.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Callable

from netlab import Star, unique_prefix
from netlab import nft_missing as nft_missing  # re-exported: natlab.nft_missing

KINDS = ("none", "home", "symmetric", "double", "blocked")
SECOND_HUB_ADDR = "10.232.254.1"
"""A second hub address (on its loopback) for the second STUN/DERP server: the mapping test needs
STUN answers from two different server IPs."""
LAN = "192.168"
CGNAT = "198.18"
HUB_TABLE = "natlab_hub"


class NatLab(Star):
    """A hub and one NAT-ed LAN per slot; slots map leaf name -> kind (one of KINDS)."""

    def __init__(self, slots: dict[str, str], prefix: str | None = None, workdir: str | None = None) -> None:
        for leaf, kind in slots.items():
            if kind not in KINDS:
                raise ValueError("slot %s: kind %r is not one of %s" % (leaf, kind, ", ".join(KINDS)))
        super().__init__(
            list(slots), prefix=prefix or unique_prefix("nl"), workdir=workdir
        )
        self.kinds = dict(slots)
        self.routers: dict[str, list[str]] = {}  # leaf -> router namespaces, LAN side first
        self.lan_addr: dict[str, str] = {}
        self._blocks: set[tuple[str, str]] = set()
        self._masq_if: dict[str, str] = {}  # router namespace -> its WAN interface

    # --- addresses --------------------------------------------------------------------------

    def index(self, leaf: str) -> int:
        return self.leaves.index(leaf) + 1

    def wan_addr(self, leaf: str) -> str:
        """The slot's address on the hub link: its public address (the leaf's own for `none`)."""
        return "%s.%d.2" % (self.SUBNET, self.index(leaf))

    def public_addr(self, leaf: str) -> str:
        return self.wan_addr(leaf)

    # --- set-up -----------------------------------------------------------------------------

    def masquerade(self, ns: str, out_if: str, symmetric: bool) -> None:
        """Source NAT out of `out_if`, and a home router's firewall: nothing new in from that side.

        The input rule matters for hole punching: without it a peer's early
        ping to the router's own address is delivered locally (no socket:
        ICMP port unreachable) and its conntrack entry is confirmed; that
        entry holds the router's port 41641 towards the peer, so our own
        ping to the peer a moment later is remapped to a random port and
        both sides wait for each other at the wrong ports until the stale
        entry times out. Dropped in the input hook, the entry is never
        confirmed (the behaviour of OpenWrt's wan zone, input REJECT).
        """
        self._masq_if[ns] = out_if
        self.nft(ns, (
            "table ip natlab {\n"
            "  chain post {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            "    oifname \"%s\" masquerade%s\n"
            "  }\n"
            "  chain input {\n"
            "    type filter hook input priority filter; policy accept;\n"
            "    iifname \"%s\" ct state new counter drop\n"
            "  }\n"
            "}\n" % (out_if, " fully-random" if symmetric else "", out_if)
        ))  # fmt: skip

    def drop_udp_from(self, ns: str, lan_if: str) -> None:
        self.nft(ns, (
            "table ip natlab_fw {\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter; policy accept;\n"
            "    iifname \"%s\" meta l4proto udp counter drop\n"
            "  }\n"
            "}\n" % lan_if
        ))  # fmt: skip

    def build(self) -> None:
        """The hub and each slot's LAN, routers and NATs (`Star.up` calls it)."""
        p = self.p
        hub = self.add_ns("h", key="hub")
        self.forward(hub)
        self.run("hub", "ip", "addr", "add", SECOND_HUB_ADDR + "/32", "dev", "lo")
        for leaf in self.leaves:
            i, kind = self.index(leaf), self.kinds[leaf]
            hub_side = "%s.%d.1/24" % (self.SUBNET, i)
            wan = self.wan_addr(leaf) + "/24"
            lan_net = "%s.%d" % (LAN, i)
            leaf_ns = self.add_ns(leaf, key=leaf)
            if kind == "none":
                self.add_link(hub, "%sh%d" % (p, i), hub_side, leaf_ns, "%sl%d" % (p, i), wan)
                self.default_route(leaf_ns, "%s.%d.1" % (self.SUBNET, i))
                self.lan_addr[leaf] = self.wan_addr(leaf)
                self.routers[leaf] = []
            else:
                home = self.add_ns("%sr" % leaf)
                self.forward(home)
                self.add_link(
                    home, "%sn%d" % (p, i), lan_net + ".1/24", leaf_ns, "%sl%d" % (p, i), lan_net + ".2/24"
                )
                self.default_route(leaf_ns, lan_net + ".1")
                self.lan_addr[leaf] = lan_net + ".2"
                if kind == "double":
                    carrier = self.add_ns("%sg" % leaf)
                    self.forward(carrier)
                    cg = "%s.%d" % (CGNAT, i)
                    self.add_link(
                        carrier, "%sd%d" % (p, i), cg + ".1/24", home, "%sc%d" % (p, i), cg + ".2/24"
                    )
                    self.default_route(home, cg + ".1")
                    self.masquerade(home, "%sc%d" % (p, i), symmetric=False)
                    self.add_link(hub, "%sh%d" % (p, i), hub_side, carrier, "%sw%d" % (p, i), wan)
                    self.default_route(carrier, "%s.%d.1" % (self.SUBNET, i))
                    self.masquerade(carrier, "%sw%d" % (p, i), symmetric=False)
                    self.routers[leaf] = [home, carrier]
                else:
                    self.add_link(hub, "%sh%d" % (p, i), hub_side, home, "%sw%d" % (p, i), wan)
                    self.default_route(home, "%s.%d.1" % (self.SUBNET, i))
                    self.masquerade(home, "%sw%d" % (p, i), symmetric=kind == "symmetric")
                    if kind == "blocked":
                        self.drop_udp_from(home, "%sn%d" % (p, i))
                    self.routers[leaf] = [home]
            self.own_resolv_conf(leaf, self.lab_resolv_conf(leaf))

    # --- changing the network under running agents ---------------------------------------------

    def router_run(
        self, leaf: str, *args: str, which: int = -1, check: bool = True
    ) -> "subprocess.CompletedProcess[str]":
        """Runs a command in one of the slot's routers (default the outermost one)."""
        ns = self.routers[leaf][which]
        res = subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise RuntimeError(
                "%s in %s failed (%d): %s%s" % (" ".join(args), ns, res.returncode, res.stdout, res.stderr)
            )
        return res

    def flush_conntrack(self, leaf: str) -> int:
        """Deletes every conntrack entry (so every NAT mapping) in the slot's routers; how many routers."""
        if shutil.which("conntrack") is None:
            raise RuntimeError("`conntrack` is not installed: apt-get install conntrack")
        for which in range(len(self.routers[leaf])):
            self.router_run(leaf, "conntrack", "-F", which=which, check=False)  # exits 1 when already empty
        return len(self.routers[leaf])

    def remap(self, leaf: str, ports: str = "20000-29999") -> None:
        """The outermost router starts mapping to ports in `ports` and forgets every mapping it had.

        A flush alone would change nothing that a peer sees: the router keeps
        the source port when it is free, and after a flush it is. With a new
        port range the agent's next packet leaves from a new public port, as
        after a router reboot or a carrier NAT's timeout, and the peer's NAT,
        which knows only the old one, drops it. TCP connections through the router die too, as in
        a reboot: mid-stream pickup (nf_conntrack_tcp_loose) is turned off first, so their next
        packets are invalid to the fresh conntrack table and leave un-NATed.
        """
        for which in range(len(self.routers[leaf])):
            self.router_run(leaf, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0", which=which)
        ns = self.routers[leaf][-1]
        out_if = self._masq_if[ns]
        self.router_run(leaf, "nft", "flush", "chain", "ip", "natlab", "post")
        self.router_run(leaf, "nft", "add", "rule", "ip", "natlab", "post", "oifname", out_if,
                        "meta", "l4proto", "udp", "masquerade", "to", ":" + ports)  # fmt: skip
        self.router_run(leaf, "nft", "add", "rule", "ip", "natlab", "post", "oifname", out_if, "masquerade")
        self.flush_conntrack(leaf)

    def block_between(self, a: str, b: str, blocked: bool = True) -> None:
        """Drops (or lets through again) UDP forwarded by the hub between slots a and b.

        The hub sees the slots' public addresses, so this cuts the direct path
        whatever the NATs did; UDP to the hub itself (STUN) and TCP (DERP) pass.
        """
        key = (min(a, b), max(a, b))
        if blocked:
            self._blocks.add(key)
        else:
            self._blocks.discard(key)
        hub = self.ns["hub"]
        subprocess.run(
            ["ip", "netns", "exec", hub, "nft", "delete", "table", "ip", HUB_TABLE], capture_output=True
        )
        if not self._blocks:
            return
        rules = "".join(
            "    ip saddr %s ip daddr %s meta l4proto udp counter drop\n"
            "    ip saddr %s ip daddr %s meta l4proto udp counter drop\n"
            % (self.wan_addr(x), self.wan_addr(y), self.wan_addr(y), self.wan_addr(x))
            for x, y in sorted(self._blocks)
        )
        self.nft(hub, (
            "table ip %s {\n"
            "  chain forward {\n"
            "    type filter hook forward priority filter; policy accept;\n"
            "%s"
            "  }\n"
            "}\n" % (HUB_TABLE, rules)
        ))  # fmt: skip


# --- a tailnet on the NAT lab: control + two STUN/DERP regions + one agent per slot -----------

RELAY_REGION = 901


class NatMesh:
    """A `NatLab`, `meshlet-control serve` (region 900, embedded DERP + STUN on 10.232.1.1) and a
    standalone `meshlet-derp` (region 901, DERP + STUN on SECOND_HUB_ADDR) in the hub, and one
    `meshlet daemon` per slot, named "<leaf>-<kind>".

    Two regions at two hub addresses give every agent STUN answers from two server IPs, which
    netcheck's mapping test needs (MappingVariesByDestIP). Agents are started in parallel.
    """

    def __init__(
        self, slots: dict[str, str], verbose: bool = True, prefix: str | None = None,
        agents: list[str] | None = None,
    ) -> None:  # fmt: skip
        """`agents`: the slots that get a meshlet daemon (default all; others are for tsnet nodes)."""
        import meshletnode
        import tailnode

        self.lab = NatLab(slots, prefix=prefix)
        self.relay = tailnode.Relay(self.lab, region_id=RELAY_REGION, host=SECOND_HUB_ADDR)
        self.control = tailnode.Control(self.lab, serve_args=("--derp-map-file", str(self.relay.map_file)))
        self.nodes = {
            leaf: meshletnode.MeshletNode(self.lab, leaf, "%s-%s" % (leaf, kind), verbose=verbose)
            for leaf, kind in slots.items()
            if agents is None or leaf in agents
        }
        self.ips: dict[str, str] = {}

    def name(self, leaf: str) -> str:
        return self.nodes[leaf].name

    def start(self, join_s: float = 90.0) -> "NatMesh":
        self.lab.up()
        try:
            self.relay.write_map()
            self.relay.start()
            self.control.start()
            self.start_nodes(list(self.nodes), join_s)
        except BaseException:
            self.lab.down()
            raise
        return self

    def start_nodes(self, leaves: list[str], join_s: float = 90.0) -> None:
        """Starts and logs in these slots' agents in parallel; waits until each sees all the others."""
        from concurrent.futures import ThreadPoolExecutor

        keys = [self.control.keys_create()["key"] for _ in leaves]

        def one(leaf: str, key: str) -> None:
            node = self.nodes[leaf]
            node.start()
            node.up(self.control.url, authkey=key)
            node.wait_running(join_s)

        with ThreadPoolExecutor(max_workers=len(leaves)) as pool:
            for f in [pool.submit(one, leaf, key) for leaf, key in zip(leaves, keys)]:
                f.result()
        names = [n.name for n in self.nodes.values() if n.alive()]
        for leaf in leaves:
            self.nodes[leaf].wait_peers([n for n in names if n != self.nodes[leaf].name], join_s)
        self.ips.update({n["hostname"]: n["ipv4"] for n in self.control.node_list().values()})

    def stop(self) -> None:
        self.lab.down()

    def ip(self, leaf: str) -> str:
        return self.ips[self.nodes[leaf].name]

    # --- measuring ------------------------------------------------------------------------------

    def ping_once(self, src: str, dst: str, timeout_s: float = 2.0) -> dict[str, object]:
        """One disco ping from `src` to `dst` (MeshletNode.ping_once).

        {"via", "latency_ms", "endpoint"?} or {"error"}."""
        out: dict[str, object] = self.nodes[src].ping_once(self.ip(dst), timeout_s)
        return out

    def ping_until_direct(self, src: str, dst: str, within_s: float, interval_s: float = 0.2) -> "PathTrace":
        """Pings `dst` from `src` until a pong comes over a direct path or `within_s` passes."""
        import time

        trace = PathTrace()
        start = time.monotonic()
        while time.monotonic() - start < within_s:
            pong = self.ping_once(src, dst)
            trace.add(time.monotonic() - start, pong)
            if pong.get("endpoint"):
                break
            time.sleep(interval_s)
        return trace

    def cur_addr(self, src: str, dst: str) -> tuple[str, str]:
        """(CurAddr, Relay) of `dst` in `src`'s status: the direct address or "", the region."""
        return self.nodes[src].cur_addr(self.nodes[dst].name)

    def netcheck(self, leaf: str) -> dict[str, object]:
        import json as _json

        out: dict[str, object] = _json.loads(self.nodes[leaf].cli("netcheck", "--json", timeout=40).stdout)
        return out

    def transfer(self, src: str, dst: str, nbytes: int, port: int, mbps: float = 0.0,
                 timeout_s: float = 120.0) -> tuple[dict[str, object], dict[str, object]]:  # fmt: skip
        """A TCP stream of `nbytes` from `src` to `dst`'s tailnet address; (sender's, receiver's) reports."""
        import transfer

        want: dict[str, object]
        got: dict[str, object]
        host = self.ip(dst)
        want, got = transfer.run(self.lab, src, dst, host, port, nbytes, mbps=mbps, timeout_s=timeout_s)
        return want, got

    def logs(self, lines: int = 30) -> str:
        import meshletnode

        return "\n".join(
            "--- %s ---\n%s" % (p.name, meshletnode.tail(p.log(), lines)) for p in self.lab.procs
        )


class PathTrace:
    """The pongs of a ping series with their times (s since the first ping)."""

    def __init__(self) -> None:
        self.pongs: list[tuple[float, dict[str, object]]] = []

    def add(self, t: float, pong: dict[str, object]) -> None:
        self.pongs.append((t, pong))

    @property
    def direct(self) -> bool:
        return any(p.get("endpoint") for _, p in self.pongs)

    @property
    def time_to_direct(self) -> float | None:
        for t, p in self.pongs:
            if p.get("endpoint"):
                return t
        return None

    @property
    def last_via(self) -> str:
        for _, p in reversed(self.pongs):
            if "via" in p:
                return str(p["via"])
        return ""

    def vias(self) -> list[str]:
        return [str(p.get("via") or p.get("error") or "?") for _, p in self.pongs]

    def path(self) -> str:
        """One of "direct", "DERP" or "none" (no pong at all)."""
        if self.direct:
            return "direct"
        return "DERP" if self.last_via.startswith("DERP(") else "none"


class PathWatch:
    """Samples `src`'s view of the path to `dst` (CurAddr) every `interval_s` in a thread.

    Used as `with PathWatch(mesh, "a", "b") as watch:` around a change of the network, then
    `watch.first_after(t, lambda cur: cur == "")` says when the path went to DERP.
    """

    def __init__(self, mesh: NatMesh, src: str, dst: str, interval_s: float = 0.1) -> None:
        import threading
        import time

        self.mesh, self.src, self.dst, self.interval_s = mesh, src, dst, interval_s
        self.samples: list[tuple[float, str]] = []  # (monotonic time, CurAddr)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._clock = time.monotonic

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                cur, _ = self.mesh.cur_addr(self.src, self.dst)
            except (OSError, ValueError, KeyError):
                cur = "?"
            self.samples.append((self._clock(), cur))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PathWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def now(self) -> str:
        return self.samples[-1][1] if self.samples else "?"

    def first_after(self, t0: float, pred: "Callable[[str], bool]") -> float | None:
        """Seconds from `t0` to the first sample at or after it for which `pred(CurAddr)` holds."""
        for t, cur in self.samples:
            if t >= t0 and pred(cur):
                return t - t0
        return None

    def history(self) -> list[str]:
        """The CurAddr changes, as "t+1.2s 10.232.2.2:41641" lines (t relative to the first sample)."""
        out: list[str] = []
        last = None
        t_first = self.samples[0][0] if self.samples else 0.0
        for t, cur in self.samples:
            if cur != last:
                out.append("t+%.1fs %s" % (t - t_first, cur or "DERP"))
                last = cur
        return out
