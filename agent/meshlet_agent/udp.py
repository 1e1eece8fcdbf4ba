"""The UDP sockets WireGuard datagrams travel on: one per address family.

Like wireguard-go's StdNetBind, meshlet opens an IPv4 socket on 0.0.0.0 and,
when the host has IPv6, an IPv6-only socket on [::], both on the same port.
Two sockets rather than one dual-stack socket means addresses arrive as plain
IPv4 or IPv6 text, never as the IPv4-mapped `::ffff:a.b.c.d` form, and a host
with IPv6 disabled still works.

Both are non-blocking with large kernel buffers (wireguard-go asks for 7 MiB):
at a few hundred Mbit/s a 200 KiB default fills in a few milliseconds, and a
full receive buffer means dropped datagrams, which TCP inside the tunnel reads
as congestion.

Sending uses UDP generic segmentation offload when the kernel has it (Linux
4.18+, `UDP_SEGMENT`): a run of consecutive datagrams to the same address,
all of one size except possibly a shorter last one, goes to the kernel as one
`sendmsg` of their concatenation, and the kernel cuts it back into datagrams
late in its stack. A TCP transfer through the tunnel produces exactly such
runs (full-size segments), and one system call per run instead of one per
packet is the largest single saving on the send path. If the kernel refuses
GSO from the start, meshlet falls back to one `sendto` per datagram for good;
a run refused later (say, datagrams larger than the path MTU) is sent the
plain way on its own.

The core speaks in `(ip_bytes, port)`; sockets speak in `(text, port)`.
`Udp.sockaddr()` and `Udp.addr()` convert with small bounded caches, so the
per-datagram cost is one dict lookup rather than text parsing.
"""

import errno
import logging
import socket
import sys
from typing import Any, Callable

from . import knobs

log = logging.getLogger("meshlet_agent.udp")

SOCKET_BUFFER_BYTES = 7 << 20
"""Requested SO_RCVBUF/SO_SNDBUF; wireguard-go's socketBufferSize. Root can exceed rmem_max (…FORCE)."""
UDP_SEGMENT = 103  # linux/udp.h; socket.UDP_SEGMENT is not in every Python
GSO_MAX_SEGMENTS = 64
"""Datagrams per GSO send; the kernel's UDP_MAX_SEGMENTS is 128 (64 before Linux 5.x)."""
GSO_MAX_BYTES = 65000
"""Bytes per GSO send: one UDP datagram's payload limit (65507 over IPv4), rounded down."""
ADDR_CACHE_MAX = 1024
"""Entries kept in each address-conversion cache before it is cleared; one per peer endpoint is typical."""


class UdpError(Exception):
    """Opening the UDP sockets failed; the message names the problem and the fix."""


def _set_buffers(sock: socket.socket, size: int) -> None:
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_RCVBUFFORCE, SO_SNDBUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError as e:  # pragma: no cover - only on exotic kernels
                log.debug("udp: cannot set buffer option %d: %s", plain, e)


class Udp:
    """The bound sockets. `v4` always exists; `v6` is None when the host has no IPv6.

    Attributes:
        port: the local port both sockets are bound to.
    """

    def __init__(self, v4: socket.socket, v6: socket.socket | None) -> None:
        self.v4 = v4
        self.v6 = v6
        self.port: int = v4.getsockname()[1]
        self._to_sockaddr: dict[tuple[bytes, int], tuple[str, int]] = {}
        self._to_addr: dict[str, bytes] = {}
        self.gso = knobs.wg_gso()
        self.gso_sends = 0

    @classmethod
    def open(cls, port: int = 0, buffer_bytes: int = SOCKET_BUFFER_BYTES) -> "Udp":
        """Binds 0.0.0.0:port and [::]:port (the same port; the OS picks one for 0).

        Raises:
            UdpError: the port is taken or not permitted.
        """
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            v4.bind(("0.0.0.0", port))
        except OSError as e:
            v4.close()
            raise UdpError(_bind_problem(port, e)) from None
        port = v4.getsockname()[1]
        v6: socket.socket | None = None
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::", port))
        except OSError as e:
            if v6 is not None:
                v6.close()
            v6 = None
            if e.errno == errno.EADDRINUSE:
                v4.close()
                raise UdpError(_bind_problem(port, e)) from None
            log.info("udp: no IPv6 socket (%s); IPv4 only", e.strerror)
        for s in (v4, v6):
            if s is not None:
                s.setblocking(False)
                _set_buffers(s, buffer_bytes)
        log.debug("udp: listening on port %d (%s)", port, "IPv4+IPv6" if v6 else "IPv4")
        return cls(v4, v6)

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.v4, self.v6) if s is not None]

    def sockaddr(self, dst: tuple[bytes, int]) -> tuple[str, int]:
        """The socket-module form of a core address, cached."""
        sa = self._to_sockaddr.get(dst)
        if sa is None:
            ip = dst[0]
            text = socket.inet_ntop(socket.AF_INET if len(ip) == 4 else socket.AF_INET6, ip)
            if len(self._to_sockaddr) >= ADDR_CACHE_MAX:
                self._to_sockaddr.clear()
            sa = self._to_sockaddr[dst] = (text, dst[1])
        return sa

    def addr_v4(self, host: str) -> bytes:
        """The 4 address bytes of an IPv4 text address from recvfrom, cached."""
        ip = self._to_addr.get(host)
        if ip is None:
            if len(self._to_addr) >= ADDR_CACHE_MAX:
                self._to_addr.clear()
            ip = self._to_addr[host] = socket.inet_pton(socket.AF_INET, host)
        return ip

    def addr_v6(self, host: str) -> bytes:
        """The 16 address bytes of an IPv6 text address from recvfrom, cached (zones dropped)."""
        ip = self._to_addr.get(host)
        if ip is None:
            if len(self._to_addr) >= ADDR_CACHE_MAX:
                self._to_addr.clear()
            ip = self._to_addr[host] = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        return ip

    def sendto(self, data: bytes, dst: tuple[bytes, int]) -> None:
        """Sends one datagram; raises OSError (BlockingIOError when the buffer is full)."""
        sock = self.v4 if len(dst[0]) == 4 else self.v6
        if sock is None:
            raise OSError(errno.EAFNOSUPPORT, "no IPv6 socket")
        sock.sendto(data, self.sockaddr(dst))

    def send_many(
        self, transmits: "list[tuple[Any, tuple[bytes, int], bytes]]", on_error: "Callable[[OSError], None]"
    ) -> None:
        """Sends every `(peer, dst, datagram)` in order, batching runs with GSO where possible.

        Errors are passed to `on_error` and the datagrams concerned are dropped (UDP may drop anyway).
        """
        n = len(transmits)
        i = 0
        while i < n:
            _peer, dst, data = transmits[i]
            size = len(data)
            j = i + 1
            if self.gso:
                total = size
                while j < n and j - i < GSO_MAX_SEGMENTS:
                    _p, dst2, data2 = transmits[j]
                    size2 = len(data2)
                    if dst2 != dst or size2 > size or total + size2 > GSO_MAX_BYTES:
                        break
                    total += size2
                    j += 1
                    if size2 < size:
                        break  # only the last segment may be shorter
            try:
                sock = self.v4 if len(dst[0]) == 4 else self.v6
                if sock is None:
                    raise OSError(errno.EAFNOSUPPORT, "no IPv6 socket")
                if j - i == 1:
                    sock.sendto(data, self.sockaddr(dst))
                else:
                    self._send_gso(sock, transmits, i, j, size, dst)
            except OSError as e:
                on_error(e)
            i = j

    def _send_gso(
        self,
        sock: socket.socket,
        transmits: "list[tuple[Any, tuple[bytes, int], bytes]]",
        i: int,
        j: int,
        size: int,
        dst: tuple[bytes, int],
    ) -> None:
        buf = b"".join([t[2] for t in transmits[i:j]])
        sa = self.sockaddr(dst)
        try:
            sock.sendmsg([buf], [(socket.SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))], 0, sa)
            self.gso_sends += 1
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EIO):
                raise
            if self.gso_sends == 0:
                # Never worked: the kernel (or this socket) has no UDP GSO. Stop trying.
                self.gso = False
                log.info(
                    "udp: the kernel refused UDP GSO (%s); sending one datagram per system call", e.strerror
                )
            # Otherwise it was this run (e.g. datagrams larger than the path MTU): send it the plain way.
            for _p, _d, data in transmits[i:j]:
                sock.sendto(data, sa)

    def close(self) -> None:
        for s in self.sockets():
            s.close()


def _bind_problem(port: int, e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return (
            "UDP port %d is already in use;"
            " stop the other WireGuard (`ss -ulpn | grep %d`) or change ListenPort" % (port, port)
        )
    if e.errno == errno.EACCES:
        return "binding UDP port %d was refused; run as root or choose a ListenPort above 1023" % port
    return "binding UDP port %d failed: %s; check ListenPort" % (port, e.strerror)
