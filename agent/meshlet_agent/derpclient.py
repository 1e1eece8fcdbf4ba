"""One DERP region connection, kept up forever: the asyncio shell around `meshlet.derp.client`.

The core `ClientConn` does the whole protocol (HTTP upgrade, login, frames,
keep-alive deadline, token bucket); this module dials, moves bytes and time,
and redials:

    run():  loop until close()
              dial TCP (or TLS: SNI = the URL's host)  -- within CONNECT_TIMEOUT_S
              ClientConn.connect(host) -> write the upgrade request
              data_received  -> conn.receive_data() -> flush()
              timer due      -> conn.handle_timer() -> flush()
              the connection ends (EOF, error, timeout, close by the core)
              sleep Backoff.failed() ms (jittered n^2 * 10 ms, capped at 5 s)

    flush(): conn.data_to_send() -> transport.write()
             conn.next_event()   -> packets to on_packet or the receive queue,
                                    other events to on_event, one log line for
                                    connect, disconnect and health changes
             conn.next_deadline() -> (re-)arm the one timer

Sending never blocks: `send()` writes into the transport's buffer at once,
or drops the packet (counted in `drops`) when there is no connection or more
than WRITE_BUFFER_LIMIT bytes are already waiting, the way a full UDP socket
buffer drops datagrams. Received packets go to `on_packet` if given, else to
a bounded queue read with `recv()` or `async for src, data in client`.

Logging (getLogger("meshlet_agent.derp")): one line per connect and per
disconnect; while the server stays unreachable, only the first failure is
logged above DEBUG. The backoff starts over only after a connection stayed
up for RESET_BACKOFF_AFTER_S, so a server that accepts and drops at once is
not hammered.

URLs are Tailscale's: `https://<HostName>[:port]/derp`, or `http://` for
labs (derp.md §2.1). `insecure=True` skips certificate verification, like a
DERP map node's InsecureForTests; `dial_host` connects to another address
than the URL's host (a DERP node's IPv4 field) while SNI and Host stay the
URL's.
"""

import asyncio
import collections
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

from meshlet.derp.backoff import MAX_BACKOFF_MS, Backoff
from meshlet.derp.client import ClientConn, HttpStatusError
from meshlet.derp.events import (
    Connected,
    ConnectionClosed,
    ConnectionTimedOut,
    HealthChanged,
    PacketReceived,
    PongReceived,
    ServerRestarting,
)
from meshlet.errors import ProtocolError
from meshlet.key import NodePrivate, NodePublic

log = logging.getLogger("meshlet_agent.derp")

CONNECT_TIMEOUT_S = 10.0
"""TCP + TLS; the core's login deadline (10 s from the dial's start) covers the rest, as in derphttp."""
WRITE_BUFFER_LIMIT = 1 << 20
"""Bytes waiting in the transport above which `send()` drops: about 700 full-size WireGuard packets."""
PENDING_PACKETS = 32
"""Packets held while the connection is being (re)made, sent once it is up; more drop the oldest.

The first WireGuard handshake of a new node is usually sent before its DERP
connection is up; dropping it would cost WireGuard's 5 s retry (Tailscale's
per-region write channel holds 32 the same way)."""
PENDING_MAX_AGE_S = 5.0
"""Held packets older than this when the connection comes up are dropped ("pending_expired"):
by then WireGuard has retried on its own."""
RECV_QUEUE_PACKETS = 1024
"""Received packets held for `recv()` when there is no on_packet callback; more are dropped."""
RESET_BACKOFF_AFTER_S = MAX_BACKOFF_MS / 1000
"""A connection that lasted this long resets the backoff; a shorter one counts as a failure."""
READ_SIZE = 65536


class DerpClientClosed(Exception):
    """`recv()` or `ping()` on a client that was closed."""


def now_ms() -> int:
    """Monotonic milliseconds, the core's clock."""
    return time.monotonic_ns() // 1_000_000


def parse_derp_url(url: str) -> tuple[bool, str, int, str]:
    """(tls, host, port, Host header) from `https://host[:port][/derp]` or `http://...`.

    The Host header is the URL's authority as written (Go's req.Host), so an
    explicit port is kept and an IPv6 literal keeps its brackets.

    Raises:
        ValueError: another scheme, no host, or user info in the URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("DERP URL must be http:// or https://, got %r" % url)
    if not parts.hostname or "@" in parts.netloc:
        raise ValueError("DERP URL needs a host and no user info: %r" % url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    return tls, parts.hostname, port, parts.netloc


def describe_error(err: BaseException | str) -> str:
    """A short human reason for a connection that ended or never started."""
    if isinstance(err, str):
        return err
    if isinstance(err, HttpStatusError):
        return "the server refused the DERP upgrade: HTTP %s" % err.detail
    if isinstance(err, ProtocolError):
        return "protocol error: %s" % err
    if isinstance(err, ssl.SSLCertVerificationError):
        return "TLS certificate not trusted (%s); a lab server needs insecure mode" % err.verify_message
    if isinstance(err, ssl.SSLError):
        return "TLS failed: %s" % (err.reason or err)
    if isinstance(err, TimeoutError):
        return "timed out connecting"
    if isinstance(err, socket.gaierror):
        return "cannot resolve the host: %s" % err.strerror
    if isinstance(err, OSError):
        # asyncio's "Connect call failed (addr)" hides the errno's own text.
        return os.strerror(err.errno) if err.errno else str(err) or type(err).__name__
    return "%s: %s" % (type(err).__name__, err)


class _Session(asyncio.Protocol):
    """One TCP/TLS connection and the ClientConn speaking over it."""

    def __init__(
        self, owner: "DerpClient", conn: ClientConn, done: "asyncio.Future[BaseException | str]"
    ) -> None:
        self.owner = owner
        self.conn = conn
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0
        self.connected_at = 0.0
        self.restart_hint_ms = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        try:
            self.conn.receive_data(data, now_ms())
        except ProtocolError as e:
            self.end(e)
            return
        self.owner._flush(self)

    def eof_received(self) -> bool | None:
        self.data_received(b"")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(exc if exc is not None else "the server closed the connection")

    def end(self, reason: BaseException | str) -> None:
        if not self.done.done():
            self.done.set_result(reason)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()  # DERP has no graceful close; queued packets are lost either way

    def on_timer(self) -> None:
        self.timer = None
        if self.done.done():
            return
        self.conn.handle_timer(now_ms())
        self.owner._flush(self)


class DerpClient:
    """A connection to one DERP server that reconnects forever.

    Args:
        url: `https://host[:port]/derp`, or `http://` for a lab server.
        node_private: this node's key (its DERP address).
        insecure: skip TLS certificate verification (DERP map InsecureForTests).
        ssl_context: a context to use instead (e.g. trusting a lab CA).
        dial_host: connect to this address instead of the URL's host.
        mesh_key: the region's mesh key (32 bytes or 64 hex digits), for relays.
        preferred: whether this region is the node's home (NotePreferred).
        ideal_node: Nodes[0].Name of the region when `url` is another node of it.
        on_packet: called with (src, data) for every packet; otherwise packets
            queue for `recv()`.
        on_event: called with every other core event (Connected, PeerGone,
            HealthChanged, ServerRestarting, ...).
        random_bytes: randomness for the login nonce and the backoff jitter.
        max_backoff_ms: the cap on the reconnect delay.
        recv_queue_packets: bound of the `recv()` queue.
        client_kwargs: more ClientConn arguments (read_timeout_ms, ...).

    Attributes:
        drops: shell-level drops by reason: "not_connected" (after close),
            "pending_overflow", "pending_expired" (held while connecting),
            "write_buffer_full", "recv_queue_full" (and "on_packet_failed",
            "on_event_failed" when a callback raised).
        connects: how many connections reached Connected.
        last_error: why the last connection ended or failed, or "".
    """

    def __init__(
        self,
        url: str,
        node_private: NodePrivate,
        *,
        insecure: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        dial_host: str | None = None,
        mesh_key: bytes | str | None = None,
        preferred: bool = False,
        ideal_node: str | None = None,
        on_packet: Callable[[NodePublic, bytes], None] | None = None,
        on_event: Callable[[object], None] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        max_backoff_ms: int = MAX_BACKOFF_MS,
        recv_queue_packets: int = RECV_QUEUE_PACKETS,
        client_kwargs: dict[str, int] | None = None,
    ) -> None:
        self.url = url
        self.tls, self.host, self.port, self.host_header = parse_derp_url(url)
        self.dial_host = dial_host or self.host
        self.public_key = node_private.public()
        self._private = node_private
        self._insecure = insecure
        self._ssl_context = ssl_context
        self._mesh_key = mesh_key
        self._preferred = preferred
        self._ideal_node = ideal_node
        self._on_packet = on_packet
        self._on_event = on_event
        self._random_bytes = random_bytes
        self._client_kwargs = dict(client_kwargs or {})
        self.backoff = Backoff(random_bytes, max_backoff_ms)
        self.drops: dict[str, int] = {}
        self.connects = 0
        self.last_error = ""
        self.server_key: NodePublic | None = None
        self._queue: asyncio.Queue[tuple[NodePublic, bytes] | None] = asyncio.Queue(recv_queue_packets)
        self._session: _Session | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._failure_logged = False
        self._pending: collections.deque[tuple[NodePublic, bytes, float]] = collections.deque()

    # --- life cycle ------------------------------------------------------------

    def start(self) -> "asyncio.Task[None]":
        """Runs `run()` in a task on the running loop and returns it."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="derp " + self.url)
        return self._task

    async def run(self) -> None:
        """Connects, and reconnects after every loss, until `close()`."""
        while not self._closing:
            session: _Session | None = None
            try:
                session = await self._dial()
                reason = await session.done
            except (OSError, ssl.SSLError, TimeoutError, ProtocolError) as e:
                reason = e
            finally:
                self._session = None
                self._connected.clear()
                if session is not None:
                    session.end("closed")
                self._fail_pings()
            if self._closing:
                break
            await asyncio.sleep(self._after(session, reason) / 1000)

    async def close(self) -> None:
        """Stops reconnecting, closes the connection and ends `recv()`; waits for `run()` to return."""
        self._closing = True
        self._pending.clear()
        if self._session is not None:
            self._session.end("closed")
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        while self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def reconnect(self) -> None:
        """Drops the current connection (e.g. after a network change); `run()` dials again."""
        if self._session is not None:
            self._session.end("reconnect requested")

    @property
    def connected(self) -> bool:
        """True while a connection is up and the server's welcome (ServerInfo) arrived."""
        return self._session is not None and self._session.conn.is_connected()

    @property
    def last_rx_ms(self) -> int | None:
        """When the current connection last received a frame (netcheck's "heard from"), or None."""
        return self._session.conn.last_rx_ms if self._session is not None else None

    async def wait_connected(self) -> None:
        """Returns once connected (at once if already)."""
        await self._connected.wait()

    # --- the agent's API ---------------------------------------------------------------

    def send(self, dst: NodePublic, data: bytes) -> bool:
        """Sends `data` to the node `dst` through the server; False if it was dropped.

        While a connection is being made, up to PENDING_PACKETS wait for it.

        Raises:
            LocalProtocolError("packet_too_large"): over 64 KiB.
        """
        session = self._session
        if session is None or session.transport is None or session.done.done() or not session.connected_at:
            if self._closing:
                self._drop("not_connected")
                return False
            if len(self._pending) >= PENDING_PACKETS:
                self._pending.popleft()
                self._drop("pending_overflow")
            self._pending.append((dst, data, time.monotonic()))
            return True
        return self._send_now(session, dst, data)

    def _send_now(self, session: _Session, dst: NodePublic, data: bytes) -> bool:
        assert session.transport is not None
        if session.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self._drop("write_buffer_full")
            return False
        if not session.conn.send_packet(dst, data, now_ms()):
            return False  # counted by the core (rate_limited)
        session.transport.write(session.conn.data_to_send())
        return True

    def set_preferred(self, preferred: bool) -> None:
        """Tells this server (now and after every reconnect) whether it is our home region."""
        self._preferred = preferred
        session = self._session
        if session is not None and not session.done.done():
            session.conn.note_preferred(preferred)
            self._flush(session)

    async def ping(self, timeout_s: float = 3.0) -> float:
        """Round trip of a DERP Ping to the server, in seconds (Tailscale pings with a 3 s timeout).

        Raises:
            TimeoutError: no Pong in time; the caller may `reconnect()`.
            DerpClientClosed: not connected, or the connection ended meanwhile.
        """
        session = self._session
        if session is None or not session.conn.is_connected():
            raise DerpClientClosed("not connected to " + self.url)
        data = self._random_bytes(8)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[data] = fut
        start = time.monotonic()
        session.conn.ping(data)
        self._flush(session)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        finally:
            self._pings.pop(data, None)
        return time.monotonic() - start

    async def recv(self) -> tuple[NodePublic, bytes]:
        """The next received packet as (source node key, data).

        Raises:
            DerpClientClosed: after `close()`.
        """
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # wake every other reader too
            raise DerpClientClosed("derp client closed")
        return item

    def __aiter__(self) -> AsyncIterator[tuple[NodePublic, bytes]]:
        return self._packets()

    async def _packets(self) -> AsyncIterator[tuple[NodePublic, bytes]]:
        while True:
            try:
                yield await self.recv()
            except DerpClientClosed:
                return

    # --- the pump ------------------------------------------------------------------

    async def _dial(self) -> _Session:
        loop = asyncio.get_running_loop()
        conn = ClientConn(
            self._private,
            self._random_bytes,
            now_ms(),
            mesh_key=self._mesh_key,
            preferred=self._preferred,
            **self._client_kwargs,  # type: ignore[arg-type]
        )
        conn.connect(self.host_header, self._ideal_node)
        session = _Session(self, conn, loop.create_future())
        ctx = self._tls_context()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await loop.create_connection(
                lambda: session,
                self.dial_host,
                self.port,
                ssl=ctx,
                server_hostname=self.host if ctx is not None else None,
            )
        self._session = session
        self._flush(session)
        return session

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self._ssl_context is None:
            ctx = ssl.create_default_context()
            if self._insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl_context = ctx
        return self._ssl_context

    def _flush(self, session: _Session) -> None:
        conn = session.conn
        out = conn.data_to_send()
        if out and session.transport is not None and not session.done.done():
            session.transport.write(out)
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, PacketReceived):
                self._deliver(ev.src, ev.data)
                continue
            self._note_event(session, ev)
            if self._on_event is not None:
                try:
                    self._on_event(ev)
                except Exception:
                    self._callback_failed("on_event")
        deadline = conn.next_deadline()
        if deadline is None or session.done.done():
            return
        if session.timer is None or deadline < session.timer_at:
            if session.timer is not None:
                session.timer.cancel()
            delay = max(0, deadline - now_ms()) / 1000
            session.timer = asyncio.get_running_loop().call_later(delay, session.on_timer)
            session.timer_at = deadline

    def _deliver(self, src: NodePublic, data: bytes) -> None:
        if self._on_packet is not None:
            try:
                self._on_packet(src, data)
            except Exception:
                self._callback_failed("on_packet")
            return
        try:
            self._queue.put_nowait((src, data))
        except asyncio.QueueFull:
            self._drop("recv_queue_full")

    def _note_event(self, session: _Session, ev: object) -> None:
        if isinstance(ev, Connected):
            self.connects += 1
            self.server_key = ev.server_key
            session.connected_at = time.monotonic()
            self._connected.set()
            self._failure_logged = False
            limit = "" if ev.token_bucket is None else ", rate limit %d B/s" % ev.token_bucket[0]
            log.info("derp: connected to %s (server key %s%s)", self.url, ev.server_key.short(), limit)
            self._send_pending(session)
        elif isinstance(ev, PongReceived):
            fut = self._pings.get(ev.data)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(ev, HealthChanged):
            if ev.problem:
                log.warning("derp: %s reports a problem: %s", self.url, ev.problem)
            else:
                log.info("derp: %s reports healthy again", self.url)
        elif isinstance(ev, ServerRestarting):
            session.restart_hint_ms = ev.reconnect_in_ms
            log.info("derp: %s is restarting; reconnecting in %d ms", self.url, ev.reconnect_in_ms)
        elif isinstance(ev, ConnectionTimedOut):
            if ev.phase == "read":
                session.end("timed out: no frame for %g s" % (session.conn.read_timeout_ms / 1000))
            else:
                session.end("timed out during the login")
        elif isinstance(ev, ConnectionClosed):
            session.end("the server closed the connection")

    def _after(self, session: _Session | None, reason: BaseException | str) -> int:
        """Logs how the connection ended; returns how long to wait before the next dial (ms)."""
        text = describe_error(reason)
        self.last_error = text
        up_s = (
            time.monotonic() - session.connected_at if session is not None and session.connected_at else 0.0
        )
        if up_s >= RESET_BACKOFF_AFTER_S:
            self.backoff.reset()
        delay = self.backoff.failed()
        if session is not None and session.restart_hint_ms >= 0:
            delay = session.restart_hint_ms
        if up_s:
            log.info("derp: disconnected from %s after %.1f s: %s", self.url, up_s, text)
        elif not self._failure_logged:
            self._failure_logged = True
            log.warning("derp: cannot connect to %s: %s; retrying with backoff", self.url, text)
        else:
            log.debug("derp: still cannot connect to %s: %s; next try in %d ms", self.url, text, delay)
        return delay

    def _send_pending(self, session: _Session) -> None:
        oldest = time.monotonic() - PENDING_MAX_AGE_S
        while self._pending:
            dst, data, at = self._pending.popleft()
            if at < oldest:
                self._drop("pending_expired")
            else:
                self._send_now(session, dst, data)

    def _fail_pings(self) -> None:
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(DerpClientClosed("connection to %s ended" % self.url))
        self._pings.clear()

    def _callback_failed(self, name: str) -> None:
        """A bug in the agent's callback must not cost the connection; logged once, then counted."""
        self._drop(name + "_failed")
        if self.drops[name + "_failed"] == 1:
            log.exception("derp: the %s callback failed (further failures are only counted)", name)

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
