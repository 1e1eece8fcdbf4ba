"""MagicSock's disco side: the per-peer Endpoints, disco ping/pong/CallMeMaybe (disco.md §5-§6), `ping`.

Every peer with a disco key has an Endpoint (meshlet.magic.endpoint) fed
with the netmap's Endpoints, CallMeMaybe lists (accepted over DERP only) and
addresses that pinged us; pongs to our UDP pings make an address the best
path. One timer drives all heartbeats, armed at the earliest Endpoint
deadline, so an idle node gets no wake-ups from it. A send error that says
an address is unusable drops it.

`DiscoPaths` is MagicSock's middle layer (magicsock.py), on top of the DERP
connections (derpregions.py).
"""

import asyncio
import errno
import logging
import time
from collections.abc import Mapping

from meshlet import disco
from meshlet.control.netmap import Node
from meshlet.errors import ProtocolError
from meshlet.key import DiscoPrivate, DiscoPublic, NodePublic
from meshlet.magic.endpoint import ACTION_CALL_ME_MAYBE, ACTION_PING, Action, Endpoint
from meshlet.wire import format_addr, parse_addr

from .derpregions import DerpRegions
from .udp import Udp

log = logging.getLogger("meshlet_agent.magicsock")

PING_TIMEOUT_S = 5.0
"""Tailscale's pingTimeoutDuration."""
ENDPOINTS_FRESH_S = 27.0
"""Tailscale's endpointsFreshEnoughDuration: older endpoints are re-STUNed before a CallMeMaybe."""
_UNUSABLE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT})


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


def now_ms() -> int:
    """The monotonic clock in ms, the time base of the Endpoints' deadlines."""
    return time.monotonic_ns() // 1_000_000


_now_ms = now_ms


class DiscoPaths(DerpRegions):
    """The per-peer path state and the disco messages that maintain it (see the module docstring)."""

    node_public: NodePublic
    disco_private: DiscoPrivate
    disco_public: DiscoPublic
    udp: Udp | None
    endpoints: list[tuple[tuple[bytes, int], int]]
    endpoints_at: float | None
    _peers: dict[NodePublic, _Peer]
    _by_disco: dict[DiscoPublic, NodePublic]
    _shared: dict[DiscoPublic, bytes]
    _last_region: dict[NodePublic, int]
    _timer: asyncio.TimerHandle | None
    _timer_at: int | None
    _cmm_waiting: set[NodePublic]
    _cli_pings: dict[bytes, tuple[asyncio.Future[PingResult], float, NodePublic, str]]

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

    def _path_for(self, peer: NodePublic) -> int:
        """The DERP region to reach `peer` by: its home, else where it last reached us, else ours."""
        return self._region_for(peer, self._peers.get(peer))

    def _region_for(self, peer: NodePublic, info: _Peer | None) -> int:
        """`_path_for` with the peer's state already looked up (the send path has it)."""
        if info is not None and info.home_derp and info.home_derp in self._regions:
            return info.home_derp
        return self._last_region.get(peer) or self.home_region

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
