"""The per-region DERP connections behind MagicSock: dial on demand, the home region, idle cleanup.

One DerpClient per region in use. The home region (chosen by netcheck,
magicendpoints.py) is kept connected and told it is preferred; other regions
are dialled when a peer is reached there and closed after
DERP_INACTIVE_CLEANUP_S without a write. When our NAT rebinds, every
connection is pinged and the silent ones redialled.

`DerpRegions` is the bottom layer of MagicSock (magicsock.py): it holds the
state every layer shares (counters, the loop, the DERP map) and leaves
receiving to the layer above (`_on_derp`).
"""

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

from meshlet.control.netmap import DERPRegion
from meshlet.derp.events import Connected
from meshlet.derp.region import HomeRegion
from meshlet.errors import ProtocolError
from meshlet.key import NodePrivate, NodePublic

from .derpclient import DerpClient, DerpClientClosed
from .derpmap import derp_nodes, derp_url, ip_literal

log = logging.getLogger("meshlet_agent.magicsock")

DERP_INACTIVE_CLEANUP_S = 60.0
"""Tailscale's derpInactiveCleanupTime: a non-home region unused this long is closed."""
DERP_CLEAN_STALE_INTERVAL_S = 15.0
"""Tailscale's derpCleanStaleInterval."""
DERP_CHECK_TIMEOUT_S = 3.0
"""After our NAT rebound, a DERP connection that does not answer a ping this fast is redialled."""


class _Region:
    """One DERP region in use: its client and when we last wrote to it."""

    __slots__ = ("region", "client", "last_write")

    def __init__(self, region: DERPRegion, client: DerpClient) -> None:
        self.region = region
        self.client = client
        self.last_write = time.monotonic()


class DerpRegions:
    """MagicSock's DERP side: one client per region in use (see the module docstring)."""

    node_private: NodePrivate
    home: HomeRegion
    home_region: int
    _on_home_region: Callable[[int], None] | None
    _ssl_context: ssl.SSLContext | None
    _derp_http: bool
    _random_bytes: Callable[[int], bytes]
    _derp_max_backoff_ms: int | None
    _regions: dict[int, DERPRegion]
    _clients: dict[int, _Region]
    _counters: dict[str, int]
    _loop: asyncio.AbstractEventLoop | None
    _netcheck_now: asyncio.Event
    _closed: bool

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
            dial_host=ip_literal(node.get("IPv4")) or ip_literal(node.get("IPv6")),
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

    def _derp_via(self, region_id: int) -> str:
        """What `tailscale ping` prints for a pong over DERP: DERP(<region code>)."""
        region = self._regions.get(region_id)
        return "DERP(%s)" % (region.code if region is not None and region.code else region_id)

    def _on_derp(self, region_id: int, src: NodePublic, data: bytes) -> None:
        """One packet a region relayed to us: MagicSock routes it (magicsock.py)."""
        raise NotImplementedError

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n
