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

Module map: derpmap.py (URLs and netcheck targets from the DERP map),
derpregions.py (the per-region DERP clients, home region, idle cleanup),
magicdisco.py (per-peer Endpoints, disco ping/pong/CallMeMaybe, `ping`),
magicendpoints.py (netcheck scheduling, our endpoints); this module: the
socket, classification, send/receive routing and counters.
"""

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from meshlet.control.netmap import DERPRegion
from meshlet.derp.region import HomeRegion
from meshlet.key import DiscoPrivate, DiscoPublic, NodePrivate, NodePublic
from meshlet.magic.classify import KIND_DISCO, KIND_STUN, KIND_WIREGUARD, derp_addr, kind
from meshlet.magic.endpoint import Endpoint
from meshlet.wire import format_addr

from . import netcheck
from .derpmap import HTTP_DERP_PORT, derp_nodes, derp_url, region_target
from .derpregions import (
    DERP_CHECK_TIMEOUT_S,
    DERP_CLEAN_STALE_INTERVAL_S,
    DERP_INACTIVE_CLEANUP_S,
    _Region,
)
from .magicdisco import ENDPOINTS_FRESH_S, PING_TIMEOUT_S, PingError, PingResult, _Peer
from .magicdisco import now_ms as _now_ms
from .magicendpoints import (
    ENDPOINT_LOCAL,
    ENDPOINT_STUN,
    ENDPOINT_STUN4_LOCAL_PORT,
    IDLE_NETCHECK_S,
    RESTUN_JITTER_S,
    RESTUN_MIN_S,
    SESSION_ACTIVE_S,
    EndpointDiscovery,
)
from .netcheck import Report as NetcheckReport
from .udp import Udp, UdpError
from .wgengine import Sink, Transmit

__all__ = [
    "DEFAULT_PORT",
    "DERP_CHECK_TIMEOUT_S",
    "DERP_CLEAN_STALE_INTERVAL_S",
    "DERP_INACTIVE_CLEANUP_S",
    "ENDPOINTS_FRESH_S",
    "ENDPOINT_LOCAL",
    "ENDPOINT_STUN",
    "ENDPOINT_STUN4_LOCAL_PORT",
    "HTTP_DERP_PORT",
    "IDLE_NETCHECK_S",
    "PING_TIMEOUT_S",
    "READ_SIZE",
    "RESTUN_JITTER_S",
    "RESTUN_MIN_S",
    "SESSION_ACTIVE_S",
    "EndpointDiscovery",
    "MagicSock",
    "PingError",
    "PingResult",
    "derp_nodes",
    "derp_url",
    "region_target",
]

log = logging.getLogger("meshlet_agent.magicsock")

DEFAULT_PORT = 41641
READ_SIZE = 65535


class MagicSock(EndpointDiscovery):
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

    # --- counters ---------------------------------------------------------------------

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
