"""Asking upstream resolvers: plain DNS over UDP, over TCP when the answer was truncated.

Each query goes out on a fresh socket (a new random source port per query,
the cheapest defence against off-path spoofing); a reply is accepted only
from the address asked and only with the query's ID. With several
upstreams, the first is asked at once and each next one a little later
(Tailscale's forwarder races them the same way), and the first usable
reply wins: a SERVFAIL or REFUSED from one upstream only counts if no
other does better before the deadline.
"""

import asyncio
import contextlib
import socket
import struct

from .names import Upstream

STAGGER_S = 0.2
"""Delay before asking the next upstream while the earlier ones stay silent."""
MAX_MESSAGE = 65535
_RCODE_SERVFAIL = 2
_RCODE_REFUSED = 5


class ForwardError(Exception):
    """No upstream gave a usable answer in time."""


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


async def exchange_udp(query: bytes, upstream: Upstream, timeout_s: float) -> bytes:
    """One UDP round trip; raises ForwardError or TimeoutError."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(_family(upstream[0]), socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout_s):
            sock.connect(upstream)  # the kernel then drops datagrams from anyone else
            await loop.sock_sendall(sock, query)
            while True:
                try:
                    reply = await loop.sock_recv(sock, MAX_MESSAGE)
                except ConnectionRefusedError:
                    raise ForwardError("%s:%d refused (nothing listens there)" % upstream) from None
                if len(reply) >= 12 and reply[:2] == query[:2] and reply[2] & 0x80:
                    return reply
    except OSError as e:
        raise ForwardError("%s:%d: %s" % (upstream[0], upstream[1], e.strerror or e)) from None
    finally:
        sock.close()


async def exchange_tcp(query: bytes, upstream: Upstream, timeout_s: float) -> bytes:
    """One TCP round trip with the two-byte length prefix (RFC 1035 §4.2.2)."""
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(upstream[0], upstream[1])
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            while True:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
                reply = await reader.readexactly(n)
                if len(reply) >= 12 and reply[:2] == query[:2]:
                    return reply
    except (OSError, asyncio.IncompleteReadError) as e:
        raise ForwardError("%s:%d over TCP: %s" % (upstream[0], upstream[1], e)) from None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def exchange(query: bytes, upstream: Upstream, timeout_s: float) -> bytes:
    """UDP first; the same query again over TCP if the UDP reply has TC set (kept if TCP fails)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    reply = await exchange_udp(query, upstream, timeout_s)
    if reply[2] & 0x02:  # TC
        with contextlib.suppress(ForwardError, TimeoutError):
            return await exchange_tcp(query, upstream, max(0.05, deadline - loop.time()))
    return reply


def _rcode(reply: bytes) -> int:
    return reply[3] & 0x0F


async def race(query: bytes, upstreams: list[Upstream], timeout_s: float) -> bytes:
    """The first good reply from `upstreams`, asked in order STAGGER_S apart; raises ForwardError."""
    if not upstreams:
        raise ForwardError("no upstream resolver")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    fallback: bytes | None = None
    errors: list[str] = []
    tasks: set[asyncio.Task[bytes]] = set()
    pending = list(upstreams)
    try:
        while pending or tasks:
            if pending:
                up = pending.pop(0)
                tasks.add(asyncio.ensure_future(exchange(query, up, max(0.01, deadline - loop.time()))))
            wait_s = deadline - loop.time()
            if wait_s <= 0:
                break
            done, _ = await asyncio.wait(
                tasks,
                timeout=min(wait_s, STAGGER_S) if pending else wait_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for t in done:
                tasks.discard(t)
                try:
                    reply = t.result()
                except (ForwardError, TimeoutError) as e:
                    errors.append(str(e) or "timed out")
                    continue
                if _rcode(reply) in (_RCODE_SERVFAIL, _RCODE_REFUSED):
                    fallback = reply
                    continue
                return reply
    finally:
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    if fallback is not None:
        return fallback
    raise ForwardError("; ".join(errors) or "no reply within %.1f s" % timeout_s)
