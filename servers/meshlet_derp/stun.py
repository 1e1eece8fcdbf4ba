"""The relay's STUN responder: UDP Binding requests answered with the client's address (stun.md §3).

One socket per address family (IPv4 `0.0.0.0` and IPv6 `::` with
IPV6_V6ONLY when the relay listens on every interface; one socket on the
given address otherwise), on `stun_port` (3478). Each datagram goes
through the core codec (`meshlet.stun`): Tailscale's request, any RFC 5389
request and RFC 3489 "classic" requests are answered; everything else is
dropped silently and counted by reason (`stun_dropped_total`).

Requests with CHANGE-REQUEST (RFC 3489 tests II and III, "answer from
another IP or port") are dropped too: one socket cannot honour them, and
answering from the same address would make a client behind a NAT believe
it has a full-cone NAT (docs/protocol-notes.md, erratum 6).

A datagram entry point never raises: a bug in the codec is counted as
"internal_error" and logged, rate-limited, and the responder keeps going.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import cast

from meshlet import stun
from meshlet.errors import ProtocolError

from .log import RateLimitedLog
from .metrics import Metrics

log = logging.getLogger("meshlet_derp.stun")


class StunProtocol(asyncio.DatagramProtocol):
    """Answers Binding requests on one socket."""

    def __init__(self, metrics: Metrics, rlog: RateLimitedLog) -> None:
        self.metrics = metrics
        self.rlog = rlog
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's are not subclasses

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        m = self.metrics
        try:
            req = stun.parse_binding_request(data)
            if req.change_request:
                m.stun_drop("change_request")
                return
            ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            reply = stun.build_binding_response(req, ip.packed, int(addr[1]))
        except ProtocolError as e:
            m.stun_drop(e.reason)
            return
        except Exception as e:  # noqa: BLE001 - a datagram must never stop the responder
            m.stun_drop("internal_error")
            self.rlog.log(logging.ERROR, "stun:" + type(e).__name__, "stun: internal error on %d bytes: %r",
                          len(data), e)  # fmt: skip
            return
        assert self.transport is not None
        self.transport.sendto(reply, addr)
        m.stun_requests_total += 1

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (port unreachable): nothing to do but count.
        self.metrics.stun_drop("icmp_error")


async def start_stun(
    host: str, port: int, metrics: Metrics, rlog: RateLimitedLog
) -> tuple[list[asyncio.BaseTransport], list[tuple[str, int]]]:
    """Binds the responder; returns (transports, bound addresses)."""
    loop = asyncio.get_running_loop()
    if host:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        targets = [(family, host)]
    else:
        targets = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    transports: list[asyncio.BaseTransport] = []
    addrs: list[tuple[str, int]] = []
    for family, addr in targets:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((addr, port))
        except OSError as e:
            sock.close()
            if family == socket.AF_INET6 and not host:
                log.info("stun: no IPv6 listener (%s); serving IPv4 only", e.strerror)
                continue
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: StunProtocol(metrics, rlog), sock=sock)
        transports.append(transport)
        name = sock.getsockname()
        addrs.append((str(name[0]), int(name[1])))
        if port == 0:
            port = int(name[1])  # the same ephemeral port for both families, when it is free
    return transports, addrs
