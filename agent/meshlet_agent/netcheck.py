"""Region latency probes, the measuring half of netcheck (derp.md §9, stun.md §5).

Two ways to time a DERP region, both producing `Sample`s that
`meshlet.derp.region` turns into a report and a home region:

* STUN: Binding requests (meshlet.stun, Tailscale's 40-byte form) from the
  node's own UDP socket, so the reflexive address learnt is the one
  WireGuard uses. A full report sends 3 probes per region, staggered
  0/100/200 ms, to the region's nodes in turn (`Nodes[t % len(Nodes)]`);
  once a region has answered its remaining probes are not sent. Responses
  are matched by transaction id; anything else arriving is ignored. The
  STUN phase ends when every region answered or after STUN_TIMEOUT_S.
* HTTPS, when UDP is blocked: `GET /derp/latency-check` over a fresh TLS
  (or, for labs, plain HTTP) connection, timed from the request written to
  the status line read, as Tailscale times "server processing"; a status
  above 299 is no measurement.

`measure()` runs STUN and, if no region answered at all, falls back to
HTTPS for every region. `report()` adds what endpoint discovery needs
(disco.md §7, stun.md §6) and `meshlet netcheck` prints: a `Report` with
UDP working or not, the public (reflexive) IPv4 address, and whether the
NAT's mapping varies by destination IP ("hard" NAT). That takes STUN
answers from two different server IPs: the latency probes stop at a
region's first answer, so when they all came from one IP and the DERP map
has STUN servers at other IPs, one more short round asks one of those.
With a single STUN server IP in the whole DERP map the answer stays
unknown (`None`, JSON null; Tailscale would say false): a symmetric NAT maps
each destination separately, and one destination shows just one mapping.
IPv6 STUN, ICMP, port mapping (NAT-PMP/PCP/UPnP) and captive portals are
not measured.

`local_addresses()` lists the host's interface addresses, the "local"
endpoints (disco.md §7 item 7).

The prober can read the socket itself (`read_socket=True`, for a socket no
one else reads) or be fed by the socket's owner through `handle_datagram`,
which returns True for a datagram it consumed.
"""

import asyncio
import fcntl
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from meshlet import stun
from meshlet.derp.region import region_latencies
from meshlet.errors import ProtocolError
from meshlet.wire import format_addr

log = logging.getLogger("meshlet_agent.netcheck")

PROBES_PER_REGION = 3
STAGGER_MS = 100
STUN_TIMEOUT_S = 3.0
"""Tailscale's stunProbeTimeout."""
HTTPS_TIMEOUT_S = 5.0
"""Connect plus request; Tailscale's whole report has 5 s."""
LATENCY_CHECK_PATH = "/derp/latency-check"
_MAX_STATUS_LINE = 1024


class NetcheckError(Exception):
    """An HTTPS latency check that produced no measurement; the message says why."""


class RegionTarget:
    """What to probe in one region.

    Attributes:
        region_id: the DERP map's RegionID.
        stun_addrs: (address, port) of each node's STUN service, in Nodes order
            (address as the UDP socket's family wants it).
        host: the first node's HostName, for the HTTPS check's SNI and Host.
        https_port: its DERPPort (443 if 0).
        tls: False for a plain-HTTP lab node.
        insecure: skip certificate verification (InsecureForTests).
        dial_host: the address to connect to for HTTPS, if not `host`.
    """

    def __init__(
        self,
        region_id: int,
        stun_addrs: Sequence[tuple[str, int]],
        host: str = "",
        https_port: int = 443,
        tls: bool = True,
        insecure: bool = False,
        dial_host: str | None = None,
    ) -> None:
        self.region_id = region_id
        self.stun_addrs = list(stun_addrs)
        self.host = host
        self.https_port = https_port
        self.tls = tls
        self.insecure = insecure
        self.dial_host = dial_host


class Sample:
    """One measurement: `region_id` answered in `latency_us`.

    Attributes:
        kind: "stun" or "https".
        reflexive: for STUN, our (ip bytes, port) as the server saw it; else None.
    """

    __slots__ = ("region_id", "latency_us", "kind", "reflexive", "dest")

    def __init__(
        self,
        region_id: int,
        latency_us: int,
        kind: str,
        reflexive: tuple[bytes, int] | None = None,
        dest: tuple[str, int] | None = None,
    ) -> None:
        self.region_id = region_id
        self.latency_us = latency_us
        self.kind = kind
        self.reflexive = reflexive
        self.dest = dest  # the STUN server (address, port) that answered

    def __repr__(self) -> str:
        return "Sample(%d, %d us, %s)" % (self.region_id, self.latency_us, self.kind)


def _now_us() -> int:
    return time.monotonic_ns() // 1000


class StunProber:
    """STUN latency probes from one UDP socket.

    Args:
        sock: a bound, non-blocking UDP socket (the node's WireGuard socket).
        random_bytes: for transaction ids.
        read_socket: read `sock` while probing; False when its owner reads it
            and passes datagrams to `handle_datagram`.
    """

    def __init__(
        self, sock: socket.socket, random_bytes: Callable[[int], bytes] = os.urandom, read_socket: bool = True
    ) -> None:
        self.sock = sock
        self._random_bytes = random_bytes
        self._read_socket = read_socket
        # txid -> (region id, send time in us, destination)
        self._in_flight: dict[bytes, tuple[int, int, tuple[str, int]]] = {}
        self._samples: list[Sample] = []
        self._answered: set[int] = set()
        self._all_answered: asyncio.Event | None = None
        self._want: set[int] = set()
        self.ignored = 0

    def handle_datagram(self, data: bytes, addr: object = None) -> bool:
        """Takes a datagram read from the socket; True if it answered one of our probes."""
        if not self._in_flight or not stun.is_stun(data):
            return False
        try:
            resp = stun.parse_binding_response(data)
        except ProtocolError:
            self.ignored += 1
            return False
        probe = self._in_flight.pop(resp.txid, None)
        if probe is None:
            self.ignored += 1
            return False
        region, sent_us, dest = probe
        self._samples.append(Sample(region, _now_us() - sent_us, "stun", (resp.ip, resp.port), dest))
        self._answered.add(region)
        if self._all_answered is not None and self._want <= self._answered:
            self._all_answered.set()
        return True

    async def probe(
        self,
        targets: Sequence[RegionTarget],
        probes: int = PROBES_PER_REGION,
        stagger_ms: int = STAGGER_MS,
        timeout_s: float = STUN_TIMEOUT_S,
    ) -> list[Sample]:
        """Probes every target with a STUN address; returns every answer that came in time."""
        loop = asyncio.get_running_loop()
        targets = [t for t in targets if t.stun_addrs]
        self._samples = []
        self._answered = set()
        self._want = {t.region_id for t in targets}
        self._all_answered = asyncio.Event()
        if not targets:
            return []
        if self._read_socket:
            loop.add_reader(self.sock.fileno(), self._readable)
        senders = [loop.create_task(self._send_probes(t, probes, stagger_ms)) for t in targets]
        try:
            async with asyncio.timeout(timeout_s):
                await self._all_answered.wait()
        except TimeoutError:
            pass
        finally:
            for task in senders:
                task.cancel()
            if self._read_socket:
                loop.remove_reader(self.sock.fileno())
            self._in_flight.clear()
            self._all_answered = None
        return self._samples

    async def _send_probes(self, target: RegionTarget, probes: int, stagger_ms: int) -> None:
        for t in range(probes):
            if t:
                await asyncio.sleep(stagger_ms / 1000)
            if target.region_id in self._answered:
                return
            txid = self._random_bytes(stun.TXID_LEN)
            addr = target.stun_addrs[t % len(target.stun_addrs)]
            self._in_flight[txid] = (target.region_id, _now_us(), addr)
            try:
                self.sock.sendto(stun.build_binding_request(txid), addr)
            except OSError as e:  # unreachable network, no route: that probe is lost
                log.debug("netcheck: STUN to %s failed: %s", addr, e)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data, addr = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ICMP port unreachable reported on the socket
                log.debug("netcheck: STUN socket: %s", e)
                return
            self.handle_datagram(data, addr)


async def https_latency(
    target: RegionTarget, timeout_s: float = HTTPS_TIMEOUT_S, ssl_context: ssl.SSLContext | None = None
) -> int:
    """Times `GET /derp/latency-check` on a fresh connection; returns microseconds.

    Raises:
        NetcheckError: the connection, TLS or request failed, or the status
            was not 2xx.
    """
    ctx: ssl.SSLContext | None = None
    if target.tls:
        ctx = ssl_context or ssl.create_default_context()
        if target.insecure and ssl_context is None:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    port = target.https_port or 443
    default = 443 if target.tls else 80
    host_header = target.host if port == default else "%s:%d" % (target.host, port)
    request = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (LATENCY_CHECK_PATH, host_header)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                target.dial_host or target.host,
                port,
                ssl=ctx,
                server_hostname=target.host if ctx is not None else None,
                limit=_MAX_STATUS_LINE,
            )
            writer.write(request.encode())
            await writer.drain()
            start = _now_us()
            line = await reader.readline()
            latency_us = _now_us() - start
    except (OSError, ssl.SSLError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
        raise NetcheckError(
            "HTTPS latency check of %s failed: %s" % (target.host, e or type(e).__name__)
        ) from None
    finally:
        if writer is not None:
            writer.close()
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise NetcheckError("HTTPS latency check of %s: not an HTTP response" % target.host)
    status = int(parts[1])
    if status > 299:
        raise NetcheckError("HTTPS latency check of %s: status %d" % (target.host, status))
    return latency_us


async def https_probe(targets: Sequence[RegionTarget], timeout_s: float = HTTPS_TIMEOUT_S) -> list[Sample]:
    """HTTPS latency of every target with a host, concurrently; failures are logged and left out."""

    async def one(t: RegionTarget) -> Sample | None:
        try:
            return Sample(t.region_id, await https_latency(t, timeout_s), "https")
        except NetcheckError as e:
            log.debug("netcheck: %s", e)
            return None

    got = await asyncio.gather(*(one(t) for t in targets if t.host))
    return [s for s in got if s is not None]


async def measure(
    targets: Sequence[RegionTarget],
    prober: StunProber | None,
    stun_timeout_s: float = STUN_TIMEOUT_S,
    https_timeout_s: float = HTTPS_TIMEOUT_S,
) -> tuple[dict[int, int], list[Sample]]:
    """A full report: STUN from the prober's socket, HTTPS if no region answered STUN.

    Returns:
        (region id -> best latency in microseconds, every sample).
    """
    samples = await prober.probe(targets, timeout_s=stun_timeout_s) if prober is not None else []
    if not samples:
        samples = await https_probe(targets, https_timeout_s)
    return region_latencies((s.region_id, s.latency_us) for s in samples), samples


MAPPING_PROBE_TIMEOUT_S = 1.0
"""The extra round that asks a second STUN server IP for the mapping test."""


class Report:
    """One netcheck: what `meshlet netcheck` prints and endpoint discovery uses.

    Attributes:
        udp: some STUN server answered (UDP works).
        global_v4: our public IPv4 (ip bytes, port) as the first STUN answer saw it, or None.
        mapping_varies_by_dest_ip: True (hard NAT), False, or None (fewer than two server IPs answered).
        preferred_derp: the home region id (0: none).
        latencies_us: region id -> best latency (STUN or HTTPS).
        kinds: region id -> "stun" or "https" (how it was measured).
        region_names: region id -> (code, name), for printing.
        when_unix: the time the report finished.
    """

    def __init__(self) -> None:
        self.udp = False
        self.global_v4: tuple[bytes, int] | None = None
        self.mapping_varies_by_dest_ip: bool | None = None
        self.preferred_derp = 0
        self.latencies_us: dict[int, int] = {}
        self.kinds: dict[int, str] = {}
        self.region_names: dict[int, tuple[str, str]] = {}
        self.when_unix = time.time()

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> "Report":
        r = cls()
        first: Sample | None = None
        for s in samples:
            if s.kind != "stun" or s.reflexive is None:
                continue
            r.udp = True
            if len(s.reflexive[0]) != 4:
                continue
            if first is None:
                first = s
                r.global_v4 = s.reflexive
            elif first.dest is not None and s.dest is not None and s.dest[0] != first.dest[0]:
                varies = s.reflexive != first.reflexive
                r.mapping_varies_by_dest_ip = bool(r.mapping_varies_by_dest_ip) or varies
        for s in samples:
            old = r.latencies_us.get(s.region_id)
            if old is None or s.latency_us < old:
                r.latencies_us[s.region_id] = s.latency_us
                r.kinds[s.region_id] = s.kind
        return r

    def to_json(self) -> dict[str, Any]:
        """Tailscale's netcheck.Report field names; latencies in nanoseconds as Go's time.Duration."""
        return {
            "UDP": self.udp,
            "IPv4": self.global_v4 is not None,
            "IPv6": False,
            "MappingVariesByDestIP": self.mapping_varies_by_dest_ip,
            "PreferredDERP": self.preferred_derp,
            "RegionLatency": {str(k): v * 1000 for k, v in sorted(self.latencies_us.items())},
            "RegionV4Latency": {
                str(k): v * 1000 for k, v in sorted(self.latencies_us.items()) if self.kinds.get(k) == "stun"
            },
            "GlobalV4": format_addr(*self.global_v4) if self.global_v4 is not None else "",
            "GlobalV6": "",
            "RegionNames": {str(k): {"Code": c, "Name": n} for k, (c, n) in sorted(self.region_names.items())},
        }


async def report(
    targets: Sequence[RegionTarget],
    prober: StunProber | None,
    stun_timeout_s: float = STUN_TIMEOUT_S,
    https_timeout_s: float = HTTPS_TIMEOUT_S,
) -> tuple[Report, dict[int, int]]:
    """`measure()`, then the mapping test's second server IP if needed; the Report and the latencies."""
    latencies, samples = await measure(targets, prober, stun_timeout_s, https_timeout_s)
    rep = Report.from_samples(samples)
    if prober is not None and rep.global_v4 is not None and rep.mapping_varies_by_dest_ip is None:
        answered = {s.dest[0] for s in samples if s.dest is not None}
        for t in targets:
            other = [a for a in t.stun_addrs if a[0] not in answered]
            if other:
                extra = await prober.probe([RegionTarget(t.region_id, other[:1])], probes=2,
                                           timeout_s=MAPPING_PROBE_TIMEOUT_S)  # fmt: skip
                if extra:
                    rep = Report.from_samples(list(samples) + extra)
                break
    rep.latencies_us = dict(latencies)
    return rep, latencies


_SIOCGIFADDR = 0x8915
_TAILNET_V4 = (bytes([100, 64, 0, 0]), 10)
_TAILNET_V6 = (bytes.fromhex("fd7a115ca1e0"), 48)


def _in_prefix(ip: bytes, prefix: tuple[bytes, int]) -> bool:
    net, bits = prefix
    if len(ip) != (4 if len(net) == 4 else 16):
        return False
    whole, rest = divmod(bits, 8)
    if ip[:whole] != net[:whole]:
        return False
    return not rest or (ip[whole] >> (8 - rest)) == (net[whole] >> (8 - rest))


def local_addresses(skip_ifnames: Sequence[str] = ()) -> list[bytes]:
    """The host's interface addresses usable as endpoints: IPv4 (each interface's primary address) and
    global IPv6; no loopback unless nothing else exists, no tailnet addresses (100.64.0.0/10,
    fd7a:115c:a1e0::/48: those are reached through the tunnel itself), none of `skip_ifnames`."""
    v4: list[bytes] = []
    loop: list[bytes] = []
    try:
        names = [n for _, n in socket.if_nameindex() if n not in skip_ifnames]
    except OSError:
        names = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            except OSError:
                continue  # no IPv4 address
            ip = bytes(res[20:24])
            if ip[0] == 127:
                loop.append(ip)
            elif not _in_prefix(ip, _TAILNET_V4) and ip not in v4:
                v4.append(ip)
    v6: list[bytes] = []
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or parts[5] in skip_ifnames:
                    continue
                ip = bytes.fromhex(parts[0])
                scope = int(parts[3], 16)
                if scope != 0 or _in_prefix(ip, _TAILNET_V6):
                    continue  # link-local, site, host scopes: not reachable from elsewhere
                if ip not in v6:
                    v6.append(ip)
    except (OSError, ValueError):
        pass
    out = v4 + v6
    return out if out else loop[:1]

