"""MagicSock: every path to every peer behind one "send to this node key" (disco.md §6, §8).

WireGuard addresses peers by key; the network offers several ways to reach
each one. MagicSock owns them all and is the pump's transport (wgengine.py):

    shared UDP socket(s), port 41641 (0 = any), read here:
        classify(datagram) -> WireGuard -> sink.receive(data, (ip, port))
                           -> disco     -> pings answered with a pong on the same path, pongs matched
                           -> STUN      -> the netcheck prober (netcheck.StunProber.handle_datagram)
                           -> other     -> counted, dropped
    one DerpClient per DERP region in use:
        home region: chosen by netcheck latency (meshlet.derp.region.HomeRegion), kept connected,
                     told it is preferred; on_home_region(region) on every change
        other regions: dialled when a peer's home is there, closed after DERP_INACTIVE_CLEANUP_S
                     without a write (checked every DERP_CLEAN_STALE_INTERVAL_S)
        received WireGuard -> sink.receive(data, derp_addr(region)); disco as above

    send(peer, datagram): on the path the peer's Endpoint (meshlet.magic.endpoint, disco.md §6)
        decides: a trusted direct UDP address alone; otherwise DERP (the peer's home region,
        else the region it last reached us from, else our home) plus a stale direct address,
        and the discovery the Endpoint asks for (disco pings to candidates over UDP, a
        CallMeMaybe with our endpoints over DERP).

Direct paths: every peer has an Endpoint fed with the netmap's Endpoints,
CallMeMaybe lists (accepted over DERP only) and addresses that pinged us.
Pongs to our UDP pings make an address the best path; one timer drives all
heartbeats (armed at the earliest Endpoint deadline, so an idle node gets no
wake-ups from it). A send error that says the address is unusable drops it.
WireGuard arriving over UDP goes to the pump with its source address: the
Device finds the peer from the message itself (receiver index, handshake key),
known address or not.

Our own endpoints (disco.md §7): the STUN-reflexive address of the shared
socket (netcheck), public-IPv4:local-port when the mapping varies by
destination (STUN4LocalPort), and every interface address with the socket's
port. They are re-learnt with each netcheck and reported through
`on_endpoints(endpoints, types)` when they change; a changed reflexive address
(our NAT rebound) also puts every peer's direct path in doubt (rediscovery).

Netcheck runs over the shared socket (STUN to each region's STUNPort), with
the HTTPS latency check as fallback when no STUN answer comes, at start, when
the DERP map changes, when a DERP connection comes back, before a CallMeMaybe
when our endpoints are older than 27 s, and every 20-26 s while user traffic
flowed in the last 45 s (Tailscale's periodic re-STUN; idle: every 5 min).

Counters (`counters()`): rx/tx packets and bytes per path (`rx_derp_packets`,
`tx_udp_bytes`, ...), and drops by reason (`drop_<reason>`): garbage is
counted, never raised.
"""

import asyncio
import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from meshlet import disco
from meshlet.control.netmap import DERPRegion, Node
from meshlet.derp.events import Connected
from meshlet.derp.region import HomeRegion, fallback_home
from meshlet.errors import ProtocolError
from meshlet.key import DiscoPrivate, DiscoPublic, NodePrivate, NodePublic
from meshlet.magic.classify import KIND_DISCO, KIND_STUN, KIND_WIREGUARD, derp_addr, kind
from meshlet.magic.endpoint import ACTION_CALL_ME_MAYBE, ACTION_PING, Action, Endpoint
from meshlet.wire import format_addr, parse_addr

from . import netcheck
from .netcheck import Report as NetcheckReport
from .derpclient import DerpClient, DerpClientClosed
from .udp import Udp, UdpError
from .wgengine import Sink, Transmit

log = logging.getLogger("meshlet_agent.magicsock")

DEFAULT_PORT = 41641
DERP_INACTIVE_CLEANUP_S = 60.0
"""Tailscale's derpInactiveCleanupTime: a non-home region unused this long is closed."""
DERP_CLEAN_STALE_INTERVAL_S = 15.0
"""Tailscale's derpCleanStaleInterval."""
RESTUN_MIN_S, RESTUN_JITTER_S = 20.0, 6.0
"""The periodic netcheck runs every 20-26 s, like Tailscale's re-STUN."""
PING_TIMEOUT_S = 5.0
"""Tailscale's pingTimeoutDuration."""
ENDPOINTS_FRESH_S = 27.0
"""Tailscale's endpointsFreshEnoughDuration: older endpoints are re-STUNed before a CallMeMaybe."""
SESSION_ACTIVE_S = 45.0
"""Tailscale's sessionActiveTimeout: the periodic re-STUN runs while traffic flowed this recently."""
IDLE_NETCHECK_S = 300.0
"""Idle, a full report every 5 min still keeps the home region current."""
DERP_CHECK_TIMEOUT_S = 3.0
"""After our NAT rebound, a DERP connection that does not answer a ping this fast is redialled."""
ENDPOINT_LOCAL = 1
ENDPOINT_STUN = 2
ENDPOINT_STUN4_LOCAL_PORT = 4
"""tailcfg.EndpointType values reported to control with the endpoints."""
_UNUSABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})
READ_SIZE = 65535
HTTP_DERP_PORT = 3340
"""Tailscale's plain-HTTP DERP port when DERPPort is 0 (TS_DEBUG_USE_DERP_HTTP)."""


class PingError(Exception):
    """A disco ping that could not be sent; the message says why."""


class PingResult:
    """A pong: the round trip and the path it took.

    Attributes:
        via: "DERP(<region code>)" or the direct address the ping went to ("10.0.0.2:41641").
        region_id: the DERP region for a pong via DERP, 0 for a direct one.
        endpoint: the direct address ("" via DERP), as tailscale ping's Endpoint.
    """

    __slots__ = ("latency_s", "via", "region_id", "endpoint")

    def __init__(self, latency_s: float, via: str, region_id: int, endpoint: str = "") -> None:
        self.latency_s = latency_s
        self.via = via
        self.region_id = region_id
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return "PingResult(%.3f ms via %s)" % (self.latency_s * 1000, self.via)


class _Peer:
    """What MagicSock knows of one peer: its home region, its disco key and its path state."""

    __slots__ = ("key", "home_derp", "disco_key", "shared", "endpoint", "netmap_endpoints")

    def __init__(
        self, key: NodePublic, home_derp: int, disco_key: DiscoPublic, shared: bytes | None, endpoint: Endpoint
    ) -> None:
        self.key = key
        self.home_derp = home_derp
        self.disco_key = disco_key
        self.shared = shared
        self.endpoint = endpoint
        self.netmap_endpoints: list[str] = []


class _Region:
    """One DERP region in use: its client and when we last wrote to it."""

    __slots__ = ("region", "client", "last_write")

    def __init__(self, region: DERPRegion, client: DerpClient) -> None:
        self.region = region
        self.client = client
        self.last_write = time.monotonic()


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _ip_literal(text: object) -> str | None:
    """A DERP node's IPv4/IPv6 field if it is an address ("" and "none" are not)."""
    if not isinstance(text, str) or not text or text == "none":
        return None
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return text
        except OSError:
            pass
    return None


def _int_field(node: Mapping[str, object], name: str) -> int:
    v = node.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def derp_nodes(region: DERPRegion) -> list[Mapping[str, object]]:
    """The region's nodes that relay (STUNOnly nodes only answer STUN)."""
    return [n for n in region.nodes if not n.get("STUNOnly")]


def derp_url(node: Mapping[str, object], http: bool) -> str:
    """Tailscale's URL for a DERP node: https://HostName[:DERPPort]/derp (http:// with `http`)."""
    host = str(node.get("HostName") or _ip_literal(node.get("IPv4")) or "")
    if ":" in host:
        host = "[%s]" % host
    port = _int_field(node, "DERPPort")
    if http:
        return "http://%s:%d/derp" % (host, port or HTTP_DERP_PORT)
    return "https://%s/derp" % host if port in (0, 443) else "https://%s:%d/derp" % (host, port)


def region_target(region: DERPRegion, http: bool) -> netcheck.RegionTarget:
    """What netcheck probes in a region: every node's STUN port (IPv4 literals only), the first
    relaying node for HTTPS."""
    stun_addrs: list[tuple[str, int]] = []
    for node in region.nodes:
        port = _int_field(node, "STUNPort")
        ip = _ip_literal(node.get("IPv4"))
        if port >= 0 and ip is not None and ":" not in ip:
            stun_addrs.append((ip, port or 3478))
    relays = derp_nodes(region)
    first = relays[0] if relays else {}
    port = _int_field(first, "DERPPort") or (HTTP_DERP_PORT if http else 443)
    return netcheck.RegionTarget(
        region.region_id,
        stun_addrs,
        host=str(first.get("HostName") or ""),
        https_port=port,
        tls=not http,
        insecure=bool(first.get("InsecureForTests")),
        dial_host=_ip_literal(first.get("IPv4")),
    )


class MagicSock:
    """The node's UDP socket(s) and DERP connections, as one transport to peers by node key.

    Args:
        node_private: the node key (DERP identity; WireGuard's key too).
        disco_private: this run's disco key.
        port: UDP port; 0 = any. If the port is taken, any port is used instead (as Tailscale does).
        on_home_region: called with the new home region id whenever it changes.
        derp_ssl_context: TLS context for DERP (e.g. trusting a lab CA); default: system trust
            (InsecureForTests nodes: none).
        derp_http: dial DERP over plain HTTP (Tailscale's TS_DEBUG_USE_DERP_HTTP), for labs.
        random_bytes: randomness for disco nonces and txids, backoff jitter.
        derp_max_backoff_ms: cap of the DERP redial backoff (tests lower it).
        on_endpoints: called with (["ip:port", ...], [tailcfg.EndpointType, ...]) whenever our own
            endpoints change (for control's MapRequest.Endpoints / EndpointTypes).

    Attributes:
        endpoints: our current endpoints as (address, type), STUN first.
        report: the last netcheck report (None before the first).
    """

    def __init__(
        self,
        node_private: NodePrivate,
        disco_private: DiscoPrivate,
        *,
        port: int = DEFAULT_PORT,
        on_home_region: Callable[[int], None] | None = None,
        derp_ssl_context: ssl.SSLContext | None = None,
        derp_http: bool = False,
        random_bytes: Callable[[int], bytes] = os.urandom,
        derp_max_backoff_ms: int | None = None,
        on_endpoints: Callable[[list[str], list[int]], None] | None = None,
    ) -> None:
        self.node_private = node_private
        self.node_public = node_private.public()
        self.disco_private = disco_private
        self.disco_public = disco_private.public()
        self.port = port
        self._on_home_region = on_home_region
        self._ssl_context = derp_ssl_context
        self._derp_http = derp_http
        self._random_bytes = random_bytes
        self._derp_max_backoff_ms = derp_max_backoff_ms
        self.udp: Udp | None = None
        self.prober: netcheck.StunProber | None = None
        self.home = HomeRegion()
        self.home_region = 0
        self.last_latencies_us: dict[int, int] = {}
        self._regions: dict[int, DERPRegion] = {}
        self._clients: dict[int, _Region] = {}
        self._peers: dict[NodePublic, _Peer] = {}
        self._by_disco: dict[DiscoPublic, NodePublic] = {}
        self._shared: dict[DiscoPublic, bytes] = {}
        self._last_region: dict[NodePublic, int] = {}
        self._counters: dict[str, int] = {}
        self._sink: Sink | None = None
        self._batch = 64
        self._flush_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._netcheck_now = asyncio.Event()
        self._closed = False
        self._on_endpoints = on_endpoints
        self.endpoints: list[tuple[tuple[bytes, int], int]] = []
        self.endpoints_at: float | None = None  # monotonic time of the last netcheck that set them
        self.report: NetcheckReport | None = None
        self._netcheck_lock = asyncio.Lock()
        self._last_netcheck: float | None = None
        self._last_send = -1e9  # monotonic s of the last user packet to any peer
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._cmm_waiting: set[NodePublic] = set()
        self._cli_pings: dict[bytes, tuple[asyncio.Future[PingResult], float, NodePublic, str]] = {}

    # --- life cycle ------------------------------------------------------------

    async def start(self) -> None:
        """Binds the UDP socket(s) and starts netcheck and the idle-region cleanup.

        Raises:
            UdpError: no port could be bound at all.
        """
        loop = self._loop = asyncio.get_running_loop()
        try:
            self.udp = Udp.open(self.port)
        except UdpError as e:
            if self.port == 0:
                raise
            log.info("magicsock: %s; using any free port instead", e)
            self.udp = Udp.open(0)
        self.port = self.udp.port
        self.prober = netcheck.StunProber(self.udp.v4, self._random_bytes, read_socket=False)
        for sock in self.udp.sockets():
            loop.add_reader(sock.fileno(), self._on_udp, sock)
        self._tasks.append(loop.create_task(self._netcheck_loop(), name="magicsock netcheck"))
        self._tasks.append(loop.create_task(self._cleanup_loop(), name="magicsock derp cleanup"))
        log.info("magicsock: UDP port %d, disco key %s", self.port, self.disco_public.short())

    async def close(self) -> None:
        """Closes every DERP client and the sockets; pending pings fail."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        clients, self._clients = self._clients, {}
        for r in clients.values():
            await r.client.close()
        if self.udp is not None:
            if self._loop is not None:
                for sock in self.udp.sockets():
                    self._loop.remove_reader(sock.fileno())
            self.udp.close()
            self.udp = None
        for fut, _, _, _ in self._cli_pings.values():
            if not fut.done():
                fut.set_exception(PingError("closed"))
        self._cli_pings.clear()

    # --- the pump's transport ----------------------------------------------------

    def attach(self, sink: Sink, batch: int) -> None:
        self._sink = sink
        self._batch = batch

    def detach(self) -> None:
        self._sink = None

    def send_many(self, transmits: list[Transmit], on_error: Callable[[OSError], None]) -> None:
        for peer, _dst, data in transmits:
            if peer is None:
                # A cookie reply to an unknown sender: over DERP there is no node key to send it to.
                self._count("drop_no_peer_key")
                continue
            self.send(peer, data)

    def status(self) -> dict[str, Any]:
        return {"listening_port": self.port, "home_derp": self.home_region}

    # --- configuration -------------------------------------------------------------

    def set_derp_map(self, regions: Mapping[int, DERPRegion]) -> None:
        """Takes the netmap's DERP regions; closes clients of regions gone, re-runs netcheck."""
        if dict(regions) == self._regions:
            return
        self._regions = dict(regions)
        for rid in [r for r in self._clients if r not in self._regions]:
            self._close_region(rid, "the region left the DERP map")
        for rid, r in list(self._clients.items()):
            if r.region != self._regions[rid]:
                self._close_region(rid, "the region's nodes changed")
        if self.home_region and self.home_region not in self._regions:
            self.home_region = 0
            self.home.home = 0
        self._netcheck_now.set()

    def set_peers(self, peers: Mapping[NodePublic, Node]) -> None:
        """Takes the netmap's peers: home regions, disco keys and endpoints (a changed disco key resets
        the peer's path state; a node key that is new gets fresh state)."""
        out: dict[NodePublic, _Peer] = {}
        by_disco: dict[DiscoPublic, NodePublic] = {}
        for key, node in peers.items():
            dk = node.disco_key
            shared = None
            if not dk.is_zero():
                shared = self._shared.get(dk)
                if shared is None:
                    try:
                        shared = self._shared[dk] = disco.beforenm(self.disco_private, dk)
                    except ProtocolError:
                        self._count("drop_bad_disco_key")
                        shared = None
                by_disco[dk] = key
            old = self._peers.get(key)
            if old is not None:
                ep = old.endpoint
                if old.disco_key != dk:
                    ep.reset()
            else:
                ep = Endpoint(self._random_bytes)
            info = out[key] = _Peer(key, node.home_derp, dk, shared, ep)
            info.netmap_endpoints = list(node.endpoints)
            if old is None or old.netmap_endpoints != info.netmap_endpoints:
                ep.set_netmap_endpoints(self._parse_endpoints(node.endpoints))
        self._peers = out
        self._by_disco = by_disco
        live = {p.disco_key for p in out.values()}
        for dk in [d for d in self._shared if d not in live]:
            del self._shared[dk]
        for key in [k for k in self._last_region if k not in out]:
            del self._last_region[key]
        self._cmm_waiting &= set(out)

    def _parse_endpoints(self, texts: list[str]) -> list[tuple[bytes, int]]:
        out = []
        for text in texts:
            try:
                ip, port = parse_addr(text)
            except ProtocolError:
                self._count("bad_peer_endpoint")
                continue
            if port and self._reachable(ip):
                out.append((ip, port))
        return out

    def _reachable(self, ip: bytes) -> bool:
        """IPv6 endpoints only when we have an IPv6 socket (before start: assume we will)."""
        return len(ip) == 4 or self.udp is None or self.udp.v6 is not None

    # --- sending -------------------------------------------------------------------

    def send(self, peer: NodePublic, data: bytes) -> bool:
        """Sends one datagram to `peer` on its current path(s); False (counted) if it was dropped."""
        info = self._peers.get(peer)
        if info is None or info.shared is None:
            return self._send_derp_only(peer, info, data)  # no disco key: no direct path can be found
        now = _now_ms()
        self._last_send = now / 1000
        ep = info.endpoint
        plan = ep.send(now)
        if plan.actions:
            self._do_actions(info, plan.actions, now)
        deadline = ep.next_heartbeat_ms
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            self._arm(deadline)
        sent = False
        if plan.udp is not None:
            sent = self._udp_send(data, plan.udp, info)
        if plan.derp:
            sent = self._send_derp_only(peer, info, data) or sent
        return sent

    def _send_derp_only(self, peer: NodePublic, info: _Peer | None, data: bytes) -> bool:
        region = self._region_for(peer, info)
        if not region:
            self._count("drop_no_path")
            return False
        if not self._derp_send(region, peer, data):
            return False
        self._count("tx_derp_packets")
        self._count("tx_derp_bytes", len(data))
        return True

    def _path_for(self, peer: NodePublic) -> int:
        """The DERP region to reach `peer` by: its home, else where it last reached us, else ours."""
        return self._region_for(peer, self._peers.get(peer))

    def _region_for(self, peer: NodePublic, info: _Peer | None) -> int:
        """`_path_for` with the peer's state already looked up (the send path has it)."""
        if info is not None and info.home_derp and info.home_derp in self._regions:
            return info.home_derp
        return self._last_region.get(peer) or self.home_region

    def _derp_send(self, region_id: int, dst: NodePublic, data: bytes) -> bool:
        r = self._region(region_id)
        if r is None:
            self._count("drop_unknown_region")
            return False
        r.last_write = time.monotonic()
        try:
            ok = r.client.send(dst, data)
        except ProtocolError:
            self._count("drop_too_large")
            return False
        if not ok:
            self._count("drop_derp_send")
        return ok

    def _region(self, region_id: int) -> _Region | None:
        """The client of a region, dialled on first use."""
        r = self._clients.get(region_id)
        if r is not None:
            return r
        region = self._regions.get(region_id)
        if region is None or self._closed or self._loop is None:
            return None
        nodes = derp_nodes(region)
        if not nodes:
            return None
        node = nodes[0]  # only the first node of a region is dialled; failing over to its other nodes is not done yet
        kwargs: dict[str, Any] = {}
        if self._derp_max_backoff_ms is not None:
            kwargs["max_backoff_ms"] = self._derp_max_backoff_ms
        client = DerpClient(
            derp_url(node, self._derp_http),
            self.node_private,
            insecure=bool(node.get("InsecureForTests")),
            ssl_context=self._ssl_context,
            dial_host=_ip_literal(node.get("IPv4")) or _ip_literal(node.get("IPv6")),
            preferred=region_id == self.home_region,
            ideal_node=str(region.nodes[0].get("Name") or "") or None,
            on_packet=lambda src, data: self._on_derp(region_id, src, data),
            on_event=lambda ev: self._on_derp_event(region_id, ev),
            random_bytes=self._random_bytes,
            **kwargs,
        )
        r = self._clients[region_id] = _Region(region, client)
        client.start()
        log.info("magicsock: connecting to DERP region %d (%s)", region_id, client.url)
        return r

    def _on_derp_event(self, region_id: int, ev: object) -> None:
        r = self._clients.get(region_id)
        if isinstance(ev, Connected) and r is not None and r.client.connects > 1:
            self._netcheck_now.set()  # a reconnect: our network may have changed, re-STUN

    def _check_derp_connections(self) -> None:
        """Our NAT rebound (a router reboot, a flushed mapping table): its TCP mappings are likely gone
        too, and a DERP connection that died that way is otherwise noticed only after 120 s without a
        frame, while peers keep relaying to it. Ping every region and redial those that stay silent."""
        if self._loop is None:
            return
        for region_id, r in list(self._clients.items()):
            task = self._loop.create_task(self._check_derp(region_id, r.client))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _check_derp(self, region_id: int, client: DerpClient) -> None:
        try:
            await client.ping(DERP_CHECK_TIMEOUT_S)
        except TimeoutError:
            log.info("magicsock: DERP region %d silent after our NAT rebound; redialling", region_id)
            client.reconnect()
        except DerpClientClosed:
            pass  # not connected: it is dialling anyway

    def _close_region(self, region_id: int, why: str) -> None:
        r = self._clients.pop(region_id, None)
        if r is None or self._loop is None:
            return
        log.info("magicsock: closing DERP region %d: %s", region_id, why)
        task = self._loop.create_task(r.client.close())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    # --- receiving -----------------------------------------------------------------

    def _on_udp(self, sock: socket.socket) -> None:
        udp = self.udp
        if udp is None:
            return
        to_ip = udp.addr_v4 if sock is udp.v4 else udp.addr_v6
        sink = self._sink
        now = _now_ms()
        got_wg = False
        for _ in range(self._batch):
            try:
                data, sa = sock.recvfrom(READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                self._count("udp_read_errors")  # ICMP errors for earlier sends surface here
                break
            k = kind(data)
            if k == KIND_WIREGUARD:
                self._count("rx_udp_packets")
                self._count("rx_udp_bytes", len(data))
                if sink is None:
                    self._count("drop_no_sink")
                    continue
                sink.receive(data, (to_ip(sa[0]), sa[1]), now)
                got_wg = True
            elif k == KIND_DISCO:
                self._on_disco(data, None, 0, (to_ip(sa[0]), sa[1]))
            elif k == KIND_STUN:
                if self.prober is None or not self.prober.handle_datagram(data, sa):
                    self._count("drop_stun_unexpected")
            else:
                self._count("drop_udp_unknown")
        if got_wg and sink is not None:
            sink.flush(now)

    def _on_derp(self, region_id: int, src: NodePublic, data: bytes) -> None:
        k = kind(data)
        if k == KIND_WIREGUARD:
            self._count("rx_derp_packets")
            self._count("rx_derp_bytes", len(data))
            self._last_region[src] = region_id
            sink = self._sink
            if sink is None:
                self._count("drop_no_sink")
                return
            sink.receive(data, derp_addr(region_id), _now_ms())
            if not self._flush_pending and self._loop is not None:
                # One flush per burst: a DERP read delivers many packets back to back.
                self._flush_pending = True
                self._loop.call_soon(self._flush_derp)
        elif k == KIND_DISCO:
            self._on_disco(data, src, region_id, derp_addr(region_id))
        else:
            self._count("drop_derp_unknown")

    def _flush_derp(self) -> None:
        self._flush_pending = False
        if self._sink is not None:
            self._sink.flush(_now_ms())

    # --- disco ---------------------------------------------------------------------

    def _on_disco(
        self, data: bytes, derp_src: NodePublic | None, region_id: int, src: tuple[bytes, int]
    ) -> None:
        """One disco packet from UDP (`derp_src` None) or DERP; garbage is counted and dropped."""
        self._count("rx_disco")
        try:
            sender, _ = disco.parse_header(data)
        except ProtocolError:
            self._count("drop_disco_malformed")
            return
        peer_key = self._by_disco.get(sender)
        info = self._peers.get(peer_key) if peer_key is not None else None
        if info is None or info.shared is None:
            self._count("drop_disco_unknown_sender")
            return
        try:
            msg = disco.open_message(info.shared, data)
        except ProtocolError:
            self._count("drop_disco_bad")
            return
        if derp_src is not None:
            self._last_region[derp_src] = region_id
        now = _now_ms()
        if isinstance(msg, disco.Ping):
            if derp_src is None and not info.endpoint.ping_received(src, msg.txid, now):
                self._count("drop_disco_duplicate_ping")
                return
            pong = disco.Pong(msg.txid, src[0], src[1])
            packet = disco.seal(info.shared, self.disco_public, self._random_bytes(disco.NONCE_LEN), pong)
            if derp_src is not None:
                if self._derp_send(region_id, derp_src, packet):
                    self._count("tx_disco_pongs")
            elif self._udp_send(packet, src):
                self._count("tx_disco_pongs")
            if derp_src is None:
                back = info.endpoint.ping_back(src, now)  # the peer's NAT is open to us now
                if back:
                    self._count("tx_disco_ping_backs")
                    self._do_actions(info, back, now)
        elif isinstance(msg, disco.Pong):
            self._on_pong(info, msg, derp_src is not None, region_id, now)
        elif isinstance(msg, disco.CallMeMaybe):
            if derp_src is None or derp_src != info.key:
                self._count("drop_call_me_maybe_not_via_derp")  # only over DERP, from the key's owner
                return
            self._count("rx_call_me_maybe")
            actions = info.endpoint.call_me_maybe(self._parse_cmm(msg.endpoints), now)
            if actions:
                self._do_actions(info, actions, now)
        else:
            self._count("disco_ignored_%s" % type(msg).__name__)  # the peer-relay messages

    def _parse_cmm(self, endpoints: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        return [(ip, port) for ip, port in endpoints if port and self._reachable(ip)]

    def _on_pong(
        self, info: _Peer, msg: disco.Pong, via_derp: bool, region_id: int, now: int
    ) -> None:
        matched = False
        addr_text = ""
        if not via_derp:
            res = info.endpoint.pong(msg.txid, now)
            if res is not None:
                matched = True
                addr_text = format_addr(*res.addr)
                if res.is_best:
                    log.debug("magicsock: %s: direct path %s (%d ms)", info.key.short(), addr_text, res.latency_ms)
        cli = self._cli_pings.get(msg.txid)
        if cli is not None:
            fut2, sent2, who2, to = cli
            if who2 == info.key and not fut2.done():
                matched = True
                if via_derp:
                    fut2.set_result(PingResult(time.monotonic() - sent2, self._derp_via(region_id), region_id))
                else:
                    text = addr_text or to
                    fut2.set_result(PingResult(time.monotonic() - sent2, text, 0, text))
        if not matched:
            self._count("drop_disco_unknown_pong")

    def _udp_send(self, data: bytes, dst: tuple[bytes, int], info: _Peer | None = None) -> bool:
        """One datagram over UDP; an error that says the address is unusable drops it from `info`'s paths."""
        if self.udp is None:
            return False
        try:
            self.udp.sendto(data, dst)
        except OSError as e:
            self._count("drop_udp_send")
            if info is not None and e.errno in _UNUSABLE_ERRNOS:
                info.endpoint.send_error(dst)
            return False
        self._count("tx_udp_packets")
        self._count("tx_udp_bytes", len(data))
        return True

    # --- direct paths: the Endpoints' actions and their timer ---------------------------

    def _do_actions(self, info: _Peer, actions: list[Action], now: int) -> None:
        shared = info.shared
        if shared is None:
            return
        for a in actions:
            if a.kind == ACTION_PING and a.addr is not None:
                msg = disco.Ping(a.txid, self.node_public)
                packet = disco.seal(shared, self.disco_public, self._random_bytes(disco.NONCE_LEN), msg)
                if self._udp_send(packet, a.addr, info):
                    self._count("tx_disco_pings")
            elif a.kind == ACTION_CALL_ME_MAYBE:
                self._call_me_maybe(info)

    def _call_me_maybe(self, info: _Peer) -> None:
        """Our endpoints to the peer over DERP, after a re-STUN if they are older than 27 s."""
        at = self.endpoints_at
        if at is None or time.monotonic() - at > ENDPOINTS_FRESH_S:
            self._cmm_waiting.add(info.key)
            self._netcheck_now.set()
            return
        self._send_call_me_maybe(info)

    def _send_call_me_maybe(self, info: _Peer) -> None:
        if info.shared is None or not self.endpoints:
            return
        region = self._region_for(info.key, info)
        if not region:
            self._count("drop_no_path")
            return
        msg = disco.CallMeMaybe([addr for addr, _ in self.endpoints])
        packet = disco.seal(info.shared, self.disco_public, self._random_bytes(disco.NONCE_LEN), msg)
        if self._derp_send(region, info.key, packet):
            self._count("tx_call_me_maybe")

    def _arm(self, deadline_ms: int) -> None:
        """The one heartbeat timer, at the earliest deadline of any Endpoint."""
        loop = self._loop
        if loop is None or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline_ms
        self._timer = loop.call_later(max(0, deadline_ms - _now_ms()) / 1000, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = _now_ms()
        earliest: int | None = None
        for info in list(self._peers.values()):
            ep = info.endpoint
            due = ep.next_deadline_ms()
            if due is None:
                continue
            if due <= now:
                actions = ep.tick(now)
                if actions:
                    self._do_actions(info, actions, now)
                due = ep.next_deadline_ms()
            if due is not None and (earliest is None or due < earliest):
                earliest = due
        if earliest is not None:
            self._arm(earliest)

    def _derp_via(self, region_id: int) -> str:
        """What `tailscale ping` prints for a pong over DERP: DERP(<region code>)."""
        region = self._regions.get(region_id)
        return "DERP(%s)" % (region.code if region is not None and region.code else region_id)

    async def ping(self, peer: NodePublic, timeout_s: float = PING_TIMEOUT_S) -> PingResult:
        """A disco ping to `peer`, as `tailscale ping` sends it: to the direct path if there is one, and over
        DERP (plus a discovery round) while none is trusted; the first pong wins.

        Raises:
            PingError: the peer is unknown, has no disco key, or there is no path to it.
            TimeoutError: no pong within `timeout_s`.
        """
        info = self._peers.get(peer)
        if info is None:
            raise PingError("%s is not a peer in the netmap" % peer.short())
        if info.shared is None:
            raise PingError("%s has no disco key (an old client, or not connected to control)" % peer.short())
        now = _now_ms()
        ep = info.endpoint
        use_derp = ep.path(now).derp
        fut: asyncio.Future[PingResult] = asyncio.get_running_loop().create_future()
        txids: list[bytes] = []
        actions = ep.cli_ping(now)
        for a in actions:
            if a.kind == ACTION_PING and a.addr is not None:
                self._cli_pings[a.txid] = (fut, time.monotonic(), peer, format_addr(*a.addr))
                txids.append(a.txid)
        try:
            self._do_actions(info, actions, now)
            region = self._path_for(peer) if use_derp else 0
            if use_derp and not region and not txids:
                raise PingError("no path to %s: no DERP region known yet" % peer.short())
            if region:
                txid = self._random_bytes(disco.TXID_LEN)
                packet = disco.seal(
                    info.shared, self.disco_public, self._random_bytes(disco.NONCE_LEN), disco.Ping(txid, self.node_public)
                )
                self._cli_pings[txid] = (fut, time.monotonic(), peer, "")
                txids.append(txid)
                if not self._derp_send(region, peer, packet):
                    # Not connected yet (a region just dialled): wait for it, then try once more.
                    r = self._clients.get(region)
                    if r is None:
                        if len(txids) == 1:
                            raise PingError("DERP region %d is not reachable" % region)
                    else:
                        async with asyncio.timeout(timeout_s):
                            await r.client.wait_connected()
                        self._cli_pings[txid] = (fut, time.monotonic(), peer, "")
                        if not self._derp_send(region, peer, packet) and len(txids) == 1:
                            raise PingError("DERP region %d did not take the ping" % region)
                self._count("tx_disco_pings")
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            for t in txids:
                self._cli_pings.pop(t, None)

    # --- home region ------------------------------------------------------------------

    async def _netcheck_loop(self) -> None:
        while True:
            interval = RESTUN_MIN_S + RESTUN_JITTER_S * int.from_bytes(self._random_bytes(2), "big") / 65535
            try:
                async with asyncio.timeout(interval):
                    await self._netcheck_now.wait()
                kicked = True
            except TimeoutError:
                kicked = False
            self._netcheck_now.clear()
            if not self._regions:
                continue
            mono = time.monotonic()
            active = mono - self._last_send <= SESSION_ACTIVE_S
            last = self._last_netcheck
            if not kicked and not active and last is not None and mono - last < IDLE_NETCHECK_S:
                continue  # idle: no periodic re-STUN
            try:
                await self.netcheck()
            except Exception:
                log.exception("magicsock: netcheck failed")

    async def netcheck(self) -> int:
        """One report over the shared socket; updates the home region and our endpoints. Returns the home."""
        return (await self.netcheck_report()).preferred_derp

    async def netcheck_report(self) -> NetcheckReport:
        """One report over the shared socket (see netcheck.report); updates home region and endpoints."""
        async with self._netcheck_lock:
            regions = dict(self._regions)
            targets = [region_target(r, self._derp_http) for r in regions.values()]
            start = _now_ms()
            rep, latencies = await netcheck.report(targets, self.prober)
            now = _now_ms()
            self._last_netcheck = time.monotonic()
            heard = {}
            for rid, r in self._clients.items():
                t = r.client.last_rx_ms
                if t is not None:
                    heard[rid] = t
            self.last_latencies_us = latencies
            home = self.home.update({k: v for k, v in latencies.items() if k in regions}, now, start, heard)
            if not home:
                home = fallback_home(list(regions), self.home_region, self._random_bytes)
                self.home.home = home
            if latencies:
                log.debug(
                    "magicsock: netcheck: %s",
                    ", ".join("%d: %.1f ms" % (k, v / 1000) for k, v in sorted(latencies.items())),
                )
            rep.preferred_derp = home
            rep.region_names = {rid: (r.code, r.name) for rid, r in regions.items()}
            old_global = self.report.global_v4 if self.report is not None else None
            self.report = rep
            self._set_home(home)
            self._update_endpoints(rep, old_global)
            return rep

    def _update_endpoints(self, rep: NetcheckReport, old_global: tuple[bytes, int] | None) -> None:
        """Our endpoints from a report (disco.md §7): STUN, STUN4LocalPort, local addresses."""
        eps: list[tuple[tuple[bytes, int], int]] = []
        seen: set[tuple[bytes, int]] = set()

        def add(addr: tuple[bytes, int], t: int) -> None:
            if addr not in seen:
                seen.add(addr)
                eps.append((addr, t))

        if rep.global_v4 is not None:
            add(rep.global_v4, ENDPOINT_STUN)
            if rep.mapping_varies_by_dest_ip:
                add((rep.global_v4[0], self.port), ENDPOINT_STUN4_LOCAL_PORT)
        v6 = self.udp is not None and self.udp.v6 is not None
        for ip in netcheck.local_addresses():
            if len(ip) == 4 or v6:
                add((ip, self.port), ENDPOINT_LOCAL)
        self.endpoints_at = time.monotonic()
        changed = eps != self.endpoints
        self.endpoints = eps
        if old_global is not None and rep.global_v4 is not None and old_global != rep.global_v4:
            # Our NAT rebound: every direct path may be dead, and peers must learn the new mapping.
            log.info("magicsock: our public address moved from %s to %s; rediscovering paths",
                     format_addr(*old_global), format_addr(*rep.global_v4))  # fmt: skip
            for info in self._peers.values():
                info.endpoint.network_changed()
                if info.endpoint.next_heartbeat_ms is not None:
                    self._cmm_waiting.add(info.key)  # active peers: tell them at once
            self._check_derp_connections()
        waiting, self._cmm_waiting = self._cmm_waiting, set()
        for key in waiting:
            peer = self._peers.get(key)
            if peer is not None:
                self._send_call_me_maybe(peer)
        if changed:
            log.info("magicsock: endpoints %s", " ".join(format_addr(*a) for a, _ in eps) or "(none)")
            if self._on_endpoints is not None:
                try:
                    self._on_endpoints([format_addr(*a) for a, _ in eps], [t for _, t in eps])
                except Exception:
                    log.exception("magicsock: the on_endpoints callback failed")

    def _set_home(self, home: int) -> None:
        old = self.home_region
        if home == old or not home:
            return
        self.home_region = home
        log.info("magicsock: home DERP region %d (was %d)", home, old)
        prev = self._clients.get(old)
        if prev is not None:
            prev.client.set_preferred(False)
            prev.last_write = time.monotonic()  # idle from now on, closed later unless peers use it
        r = self._region(home)
        if r is not None:
            r.client.set_preferred(True)
        if self._on_home_region is not None:
            try:
                self._on_home_region(home)
            except Exception:
                log.exception("magicsock: the on_home_region callback failed")

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(DERP_CLEAN_STALE_INTERVAL_S)
            self.close_idle_regions(time.monotonic())

    def close_idle_regions(self, now: float) -> None:
        """Closes non-home regions not written to for DERP_INACTIVE_CLEANUP_S."""
        for rid, r in list(self._clients.items()):
            if rid != self.home_region and now - r.last_write >= DERP_INACTIVE_CLEANUP_S:
                self._close_region(rid, "idle for %d s" % DERP_INACTIVE_CLEANUP_S)

    # --- counters ---------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def counters(self) -> dict[str, int]:
        """Packets and bytes per path, drops by reason, and the DERP clients' own drops."""
        out = dict(self._counters)
        for rid, r in self._clients.items():
            for reason, n in r.client.drops.items():
                out["derp%d_drop_%s" % (rid, reason)] = n
        return out

    def peer_relay(self, peer: NodePublic) -> str:
        """The region code of the DERP region `peer` is reached by ("" if none)."""
        region = self._regions.get(self._path_for(peer))
        return region.code if region is not None else ""

    def cur_addr(self, peer: NodePublic) -> str:
        """The trusted direct address of `peer` ("ip:port"), "" while it is reached over DERP."""
        info = self._peers.get(peer)
        if info is None:
            return ""
        addr = info.endpoint.cur_addr(_now_ms())
        return format_addr(*addr) if addr is not None else ""

    def peer_endpoint(self, peer: NodePublic) -> Endpoint | None:
        """The path state of `peer` (for tests and debugging)."""
        info = self._peers.get(peer)
        return info.endpoint if info is not None else None

    def derp_connected(self, region_id: int) -> bool:
        r = self._clients.get(region_id)
        return r is not None and r.client.connected

    async def wait_derp_connected(self, region_id: int) -> None:
        r = self._region(region_id)
        if r is None:
            raise PingError("DERP region %d is not in the map" % region_id)
        await r.client.wait_connected()
