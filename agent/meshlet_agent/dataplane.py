"""The data plane of one tailnet node: TUN, WireGuard, filter, MagicDNS intercept, MagicSock.

    apps ──> TUN meshlet0 ──> Engine (wgengine.py) ──> Device (core WireGuard) ──> MagicSock ──> DERP / UDP
             100.x/32            │ outbound hook: UDP to 100.100.100.100:53 or fd7a:115c:a1e0::53
             fd7a:…/128          │   -> the resolver; its answer is written back into the TUN
             routes 100.64/10,   │   anything else: the filter notes the flow (replies may come back in)
             fd7a:115c:a1e0::/48 │ inbound hook: the packet filter from the netmap (check_inbound)

`apply_netmap(nm)` is the one way in for configuration, called after every
netmap change: it diffs what it is given against what it applied last, so an
unchanged peer keeps its WireGuard session and a netmap with only a new
Online flag costs nothing. WireGuard's key is the node key; a peer's
AllowedIPs are the node's `AllowedIPs`; its endpoint is the DERP pseudo
address of its home region (`127.3.3.40:<region>`): MagicSock routes by
node key anyway, the address is what `wg show`-style status prints.

The filter comes from `nm.packet_filter`. Until the first netmap it denies
every inbound packet (replies to our own flows too: there are none yet); a
rule set that does not compile keeps the last good filter and is counted
(`bad_filter`), since dropping every packet because control sent something
new would cut the node off.

Counters (in `status()["Counters"]`): the engine's drops, MagicSock's, and
this module's own (`filter_<reason>`, `dns_*`, `bad_packet_in/out`).
"""

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

from meshlet.control.netmap import NetMap, Node
from meshlet.errors import ProtocolError
from meshlet.filter import Filter
from meshlet.key import DiscoPrivate, DiscoPublic, NodePrivate, NodePublic
from meshlet.magic.classify import derp_addr
from meshlet.packet import PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, parse, udp_packet
from meshlet.wg.device import Device, PeerConfig
from meshlet.wire import parse_ip

from .magicsock import DEFAULT_PORT, MagicSock, PingError, PingResult
from .peerstatus import ZERO_TIME
from .tun import Tun, TunError
from .udp import UdpError
from .wgconfig import Prefix
from .wgengine import Engine, now_ms, unix_ms

log = logging.getLogger("meshlet_agent.dataplane")

__all__ = ["DataPlane", "DataPlaneError", "PingError", "PingResult", "parse_prefix"]

DEFAULT_IFNAME = "meshlet0"
DEFAULT_MTU = 1280
"""Tailscale's TUN MTU: fits inside a 1280-byte IPv6 path after WireGuard and DERP overhead."""
MAGIC_DNS_V4 = bytes([100, 100, 100, 100])
MAGIC_DNS_V6 = bytes.fromhex("fd7a115ca1e0000000000000" + "00000053")
TAILNET_ROUTES: list[Prefix] = [(bytes([100, 64, 0, 0]), 10), (bytes.fromhex("fd7a115ca1e0" + "00" * 10), 48)]
ACTIVE_S = 180
"""A peer counts as Active while its last handshake is this recent (a session is only kept up by traffic)."""
_MAX_DNS_TASKS = 64
_NO_FLOW_PROTOS = frozenset({PROTO_TCP, PROTO_ICMP, PROTO_ICMPV6})


class DataPlaneError(Exception):
    """The data plane could not start; the message names the problem and the fix."""


class Resolver(Protocol):
    """MagicDNS as the data plane uses it (dns/)."""

    def answer_local(self, query: bytes) -> bytes | None: ...

    async def resolve(self, query: bytes) -> bytes: ...


def parse_prefix(text: str) -> Prefix:
    """ "100.64.0.1/32" -> (address bytes, 32); a bare address gets its full length.

    Raises:
        ValueError: not an address or prefix.
    """
    addr, _, bits = text.partition("/")
    try:
        ip = parse_ip(addr)
    except ProtocolError:
        raise ValueError("%r is not an IP address" % text) from None
    width = 8 * len(ip)
    if not bits:
        return ip, width
    if not bits.isdigit() or int(bits) > width:
        raise ValueError("%r has a bad prefix length" % text)
    return ip, int(bits)


def _rfc3339(unix_ms_: int) -> str:
    if not unix_ms_:
        return ZERO_TIME
    t = time.gmtime(unix_ms_ // 1000)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (t[:6] + (unix_ms_ % 1000,))


class DataPlane:
    """One node's data plane. See docs/agent-internals.md for the contract.

    Args:
        node_private: the node key; WireGuard's static key and the DERP identity.
        ifname: the TUN interface's name.
        mtu: the TUN's MTU.
        port: the shared UDP port (0 = any; a taken port falls back to any).
        resolver: MagicDNS; without it, queries to 100.100.100.100 are dropped (counted).
        on_home_region: called with the home DERP region id whenever it changes.
        derp_ssl_context: TLS trust for DERP servers (a lab CA).
        derp_http: plain-HTTP DERP (labs; Tailscale's TS_DEBUG_USE_DERP_HTTP).
        random_bytes: the randomness source.
        derp_max_backoff_ms: cap of the DERP redial backoff (tests lower it).
        on_endpoints: called with (endpoints, endpoint types) when our own UDP endpoints change
            (MagicSock's endpoint discovery), for control.

    Attributes:
        disco_public: this run's disco key, for control (MapRequest DiscoKey).
    """

    def __init__(
        self,
        node_private: NodePrivate,
        *,
        ifname: str = DEFAULT_IFNAME,
        mtu: int = DEFAULT_MTU,
        port: int = DEFAULT_PORT,
        resolver: Resolver | None = None,
        on_home_region: Callable[[int], None] | None = None,
        derp_ssl_context: ssl.SSLContext | None = None,
        derp_http: bool = False,
        random_bytes: Callable[[int], bytes] = os.urandom,
        derp_max_backoff_ms: int | None = None,
        on_endpoints: Callable[[list[str], list[int]], None] | None = None,
    ) -> None:
        self.node_private = node_private
        self.node_public = node_private.public()
        self.ifname = ifname
        self.mtu = mtu
        self.resolver = resolver
        self._random_bytes = random_bytes
        disco_private = DiscoPrivate.generate(random_bytes)
        self.disco_public: DiscoPublic = disco_private.public()
        self.magicsock = MagicSock(
            node_private,
            disco_private,
            port=port,
            on_home_region=on_home_region,
            derp_ssl_context=derp_ssl_context,
            derp_http=derp_http,
            random_bytes=random_bytes,
            derp_max_backoff_ms=derp_max_backoff_ms,
            on_endpoints=on_endpoints,
        )
        self.tun: Tun | None = None
        self.device: Device | None = None
        self.engine: Engine | None = None
        self.filter: Filter = Filter.deny_all()
        self._filter_rules: list[dict[str, object]] | None = None
        self._addresses: list[Prefix] = []
        self._configured = False
        self._peer_cfgs: dict[NodePublic, tuple[list[Prefix], tuple[bytes, int] | None]] = {}
        self._nodes: dict[NodePublic, Node] = {}
        self._counters: dict[str, int] = {}
        self._dns_tasks: set[asyncio.Task[None]] = set()

    @property
    def home_region(self) -> int:
        return self.magicsock.home_region

    # --- life cycle ------------------------------------------------------------

    async def start(self) -> None:
        """Opens the TUN and the UDP socket, creates the Device and starts the pump.

        Raises:
            DataPlaneError: the TUN or the socket could not be set up (nothing is left behind).
        """
        try:
            self.tun = Tun.open(self.ifname)
            await self.magicsock.start()
        except (TunError, UdpError) as e:
            await self.close()
            raise DataPlaneError(str(e)) from None
        self.device = Device(self.node_private, self._random_bytes, unix_ms(), now_ms(), mtu=self.mtu)
        self.engine = Engine(
            self.device, self.node_public, self.tun, self.magicsock, on_fatal=self._on_fatal, hooks=self
        )
        self.engine.start()
        log.info("dataplane: %s up, UDP port %d", self.ifname, self.magicsock.port)

    async def close(self) -> None:
        """Stops the pump, closes DERP and the sockets, removes the TUN (and with it addresses and routes)."""
        if self.engine is not None:
            self.engine.stop()
            self.engine = None
        for task in list(self._dns_tasks):
            task.cancel()
        await self.magicsock.close()
        if self.tun is not None:
            self.tun.close()
            self.tun = None

    def _on_fatal(self, message: str) -> None:
        log.error("dataplane: %s", message)

    # --- configuration -----------------------------------------------------------

    def apply_netmap(self, nm: NetMap) -> None:
        """Applies a netmap: self addresses, peers, filter, DERP map (only what changed).

        Raises:
            DataPlaneError: the TUN's addresses could not be set.
        """
        self.magicsock.set_derp_map(nm.derp_regions)
        self.magicsock.set_peers(nm.peers)
        self._nodes = dict(nm.peers)
        if nm.self_node is not None:
            self._apply_addresses(nm.self_node)
        self._apply_filter(nm.packet_filter)
        self._apply_peers(nm)

    def _apply_addresses(self, node: Node) -> None:
        addrs = []
        for text in node.addresses:
            try:
                addrs.append(parse_prefix(text))
            except ValueError:
                self._count("bad_self_address")
        if self.tun is None or (self._configured and addrs == self._addresses):
            return
        try:
            if not self._configured:
                self.tun.configure(addrs, self.mtu, TAILNET_ROUTES)
                self._configured = True
            else:
                old, new = set(self._addresses), set(addrs)
                self.tun.change_addresses([a for a in self._addresses if a not in new],
                                          [a for a in addrs if a not in old])  # fmt: skip
        except TunError as e:
            raise DataPlaneError(str(e)) from None
        self._addresses = addrs
        self.filter.set_local_ips([ip for ip, _ in addrs])  # its compiled rules stay as they are

    def _apply_filter(self, rules: list[dict[str, object]]) -> None:
        if rules == self._filter_rules:
            return
        try:
            self.filter = Filter(rules, [ip for ip, _ in self._addresses], share_state_with=self.filter)
        except ProtocolError as e:
            self._count("bad_filter")
            log.warning(
                "dataplane: the packet filter from control does not compile (%s); keeping the last one", e
            )
        self._filter_rules = rules

    def _apply_peers(self, nm: NetMap) -> None:
        dev = self.device
        if dev is None:
            return
        fallback = self.magicsock.home_region or (min(nm.derp_regions) if nm.derp_regions else 0)
        want: dict[NodePublic, tuple[list[Prefix], tuple[bytes, int] | None]] = {}
        for key, node in nm.peers.items():
            if key == self.node_public:
                continue
            allowed = []
            for text in node.allowed_ips:
                try:
                    allowed.append(parse_prefix(text))
                except ValueError:
                    self._count("bad_allowed_ip")
            region = node.home_derp or fallback
            want[key] = (allowed, derp_addr(region) if region else None)
        for key in [k for k in self._peer_cfgs if k not in want]:
            dev.remove_peer(key)
            del self._peer_cfgs[key]
        for key, cfg in want.items():
            if self._peer_cfgs.get(key) == cfg:
                continue
            try:
                dev.set_peer(PeerConfig(key, cfg[0], cfg[1]))
            except ProtocolError as e:
                self._count("bad_peer")
                log.warning("dataplane: peer %s not configured: %s", key.short(), e)
                continue
            self._peer_cfgs[key] = cfg
        if self.engine is not None:
            self.engine.flush(now_ms())  # set_peer may have queued work and moved deadlines

    # --- packet hooks (called by the Engine for every plaintext packet) ------------

    def outbound(self, packet: bytes, now: int) -> bool:
        """A packet read from the TUN: MagicDNS queries are answered here, the rest go on."""
        n = len(packet)
        v = packet[0] >> 4 if n else 0
        if v == 4 and n >= 20:
            if packet[16:20] == MAGIC_DNS_V4:
                self._dns(packet)
                return False
            proto = packet[9]
        elif v == 6 and n >= 40:
            if packet[24:40] == MAGIC_DNS_V6:
                self._dns(packet)
                return False
            proto = packet[6]
        else:
            return True  # not IP: the device drops it and counts it
        if proto in _NO_FLOW_PROTOS:
            return True  # the filter tracks UDP and SCTP flows only; TCP needs no parse here
        try:
            pkt = parse(packet)
        except ProtocolError:
            self._count("bad_packet_out")
            return True  # the device has its own view of bad packets; it counts them too
        self.filter.note_outbound(pkt, now)
        return True

    def inbound(self, packet: bytes, now: int) -> bool:
        """A decrypted packet from a peer: the filter decides."""
        try:
            pkt = parse(packet)
        except ProtocolError:
            self._count("bad_packet_in")
            return False
        reason = self.filter.check_inbound(pkt, now)
        if reason is None:
            return True
        self._count("filter_" + reason)
        return False

    def _dns(self, packet: bytes) -> None:
        try:
            pkt = parse(packet)
        except ProtocolError:
            self._count("dns_bad_packet")
            return
        if pkt.proto != PROTO_UDP or pkt.dst_port != 53 or pkt.fragment:
            self._count("dns_unsupported")  # TCP DNS, pings to 100.100.100.100: not served here
            return
        if self.resolver is None:
            self._count("dns_no_resolver")
            return
        query = packet[pkt.payload_offset : pkt.payload_end or len(packet)]
        self._count("dns_queries")
        try:
            answer = self.resolver.answer_local(query)
        except Exception:
            self._count("dns_resolver_failed")
            log.exception("dataplane: the resolver failed on a local query")
            return
        if answer is not None:
            self._dns_reply(pkt.src, pkt.dst, pkt.src_port, answer)
            return
        if len(self._dns_tasks) >= _MAX_DNS_TASKS:
            self._count("dns_too_many_pending")
            return
        task = asyncio.get_running_loop().create_task(
            self._dns_forward(pkt.src, pkt.dst, pkt.src_port, query)
        )
        self._dns_tasks.add(task)
        task.add_done_callback(self._dns_tasks.discard)

    async def _dns_forward(self, client: bytes, server: bytes, port: int, query: bytes) -> None:
        assert self.resolver is not None
        try:
            answer = await self.resolver.resolve(query)
        except Exception:
            self._count("dns_resolver_failed")
            log.debug("dataplane: forwarding a DNS query failed", exc_info=True)
            return
        if not answer:  # the resolver's "send nothing" (a response, or too short to be a query)
            self._count("dns_dropped")
            return
        self._dns_reply(client, server, port, answer)

    def _dns_reply(self, client: bytes, server: bytes, port: int, answer: bytes) -> None:
        if self.engine is None:
            return
        if self.engine.inject(udp_packet(server, client, 53, port, answer)):
            self._count("dns_answers")

    # --- status and ping -------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per-peer data-plane status in `tailscale status --json` terms, and the counters."""
        peers: dict[str, dict[str, Any]] = {}
        now_unix = unix_ms()
        if self.device is not None:
            for p in self.device.peers():
                node = self._nodes.get(p.public_key)
                hs = p.last_handshake_unix_ms
                peers[p.public_key.to_text()] = {
                    "CurAddr": self.magicsock.cur_addr(p.public_key),
                    "Relay": self.magicsock.peer_relay(p.public_key),
                    "RxBytes": p.rx_bytes,
                    "TxBytes": p.tx_bytes,
                    "LastHandshake": _rfc3339(hs),
                    "Online": bool(node.online) if node is not None else False,
                    "Active": bool(hs) and now_unix - hs < ACTIVE_S * 1000,
                }
        counters = dict(self._counters)
        counters.update(self.magicsock.counters())
        if self.device is not None:
            for reason, n in self.device.stats.dropped.items():
                counters["wg_drop_" + reason] = n
        if self.engine is not None:
            for reason, n in self.engine.io_errors.items():
                counters["io_" + reason] = n
        return {"HomeDERP": self.magicsock.home_region, "Peer": peers, "Counters": counters}

    async def ping(self, peer: NodePublic, timeout_s: float = 5.0) -> PingResult:
        """A disco ping to `peer` (see MagicSock.ping): PingError or TimeoutError when it fails."""
        return await self.magicsock.ping(peer, timeout_s)

    async def netcheck(self) -> dict[str, Any]:
        """A fresh netcheck report over the shared socket (`meshlet netcheck`), in netcheck.Report's JSON."""
        rep = await self.magicsock.netcheck_report()
        return rep.to_json()

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n
