"""MagicSock's endpoint discovery: when netcheck runs, the home region it picks, our endpoints (disco.md §7).

Netcheck runs over the shared socket (STUN to each region's STUNPort, the
HTTPS latency check as fallback) at start, when the DERP map changes, when a
DERP connection comes back, before a CallMeMaybe when our endpoints are
older than 27 s, and every 20-26 s while user traffic flowed in the last
45 s (Tailscale's periodic re-STUN; idle: every 5 min).

Our endpoints: the STUN-reflexive address of the shared socket,
public-IPv4:local-port when the mapping varies by destination
(STUN4LocalPort), and every interface address with the socket's port,
reported through `on_endpoints(endpoints, types)` when they change. A changed
reflexive address (our NAT rebound) puts every peer's direct path in doubt.

`EndpointDiscovery` is MagicSock's top layer below MagicSock itself (magicsock.py).
"""

import asyncio
import logging
import time
from collections.abc import Callable

from meshlet.derp.region import fallback_home
from meshlet.wire import format_addr

from . import netcheck
from .derpmap import region_target
from .magicdisco import DiscoPaths
from .magicdisco import now_ms as _now_ms
from .netcheck import Report as NetcheckReport

log = logging.getLogger("meshlet_agent.magicsock")

RESTUN_MIN_S, RESTUN_JITTER_S = 20.0, 6.0
"""The periodic netcheck runs every 20-26 s, like Tailscale's re-STUN."""
SESSION_ACTIVE_S = 45.0
"""Tailscale's sessionActiveTimeout: the periodic re-STUN runs while traffic flowed this recently."""
IDLE_NETCHECK_S = 300.0
"""Idle, a full report every 5 min still keeps the home region current."""
ENDPOINT_LOCAL = 1
ENDPOINT_STUN = 2
ENDPOINT_STUN4_LOCAL_PORT = 4
"""tailcfg.EndpointType values reported to control with the endpoints."""


class EndpointDiscovery(DiscoPaths):
    """Netcheck scheduling, the home region choice and our own endpoints (see the module docstring)."""

    port: int
    prober: netcheck.StunProber | None
    last_latencies_us: dict[int, int]
    report: NetcheckReport | None
    _on_endpoints: Callable[[list[str], list[int]], None] | None
    _netcheck_lock: asyncio.Lock
    _last_netcheck: float | None
    _last_send: float

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
