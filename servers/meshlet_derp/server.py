"""The relay's asyncio shell: listeners, one Protocol per TCP connection, queues, timers.

Everything protocol-shaped is elsewhere: HTTP in web.py (h11), DERP frames
in meshlet.derp.server.ServerConn (sans-I/O), routing in registry.py. This
file moves bytes between them and the sockets, and enforces the limits that
need a clock or a socket (shared/protocol/derp.md §4, §6):

* request head (and TLS handshake) within `request_timeout_s` (30 s), then
  ClientInfo within `handshake_timeout_s` (10 s): slowloris gets cut off;
* per client two bounded lanes of RecvPacket frames (`queue_depth`, 32
  each: ordinary and disco), drop-oldest when full, every drop counted;
* a client whose socket stays unwritable (the transport paused above its
  high-water mark) for `write_timeout_s` (2 s; 30 s for mesh peers) is
  closed: it stopped reading;
* keep-alives every 60 s plus up to 5 s of jitter (the core schedules them);
* an optional per-client receive rate limit, a token bucket over received
  bytes that pauses reading (TCP backpressure, as Tailscale's server);
* an optional idle timeout for DERP clients (off by default);
* `max_connections`; TCP_USER_TIMEOUT and keep-alive on every socket.

Writes are batched: packets routed to a client during one event-loop turn
go out in one `writelines`, in a flush scheduled once per turn for all
clients that have something to send. Nothing a client sends can raise out
of a Protocol callback: protocol errors close that connection (counted by
reason, logged rate-limited), and any other exception is caught, counted as
"internal_error" and logged with its traceback, once per interval.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
import socket
import ssl
import struct
import time
from typing import Any, cast

from meshlet.derp import frames
from meshlet.derp import server as derp_server
from meshlet.disco import looks_like_disco
from meshlet.errors import ProtocolError
from meshlet.key import NodePrivate, NodePublic

from . import metrics as metrics_mod
from .config import Config
from .log import RateLimitedLog
from .metrics import Metrics
from .registry import Registry
from .web import HttpError, HttpSession, Upgrade

log = logging.getLogger("meshlet_derp.server")

_RECV_HEADER = struct.Struct(">BI")
_RECV_OVERHEAD = frames.FRAME_HEADER_LEN + frames.KEY_LEN  # header + source key before the packet
_SEND_OVERHEAD = frames.KEY_LEN  # Tailscale charges the frame length: destination key + packet
_FLUSH_BYTES = 256 << 10  # at most this much per connection per flush; the rest waits a turn
_WRITE_CHUNK = 64 << 10  # write in pieces so the transport can pause us between them
_ASYNCIO_TLS_BUFFER = 32 << 10  # see _shrink_asyncio_tls_buffers
_MIN_BURST = frames.MAX_PACKET_SIZE + frames.KEY_LEN  # Tailscale's minRateLimitTokenBucketSize


class DerpServer:
    """The relay: DERP listener, metrics listener, STUN responder and mesh clients.

    Args:
        cfg: validated settings.
        private: the server's key (state.load_or_create_server_key).
        mesh_key: the region's 32-byte mesh key, or None.
    """

    def __init__(self, cfg: Config, private: NodePrivate, mesh_key: bytes | None = None) -> None:
        self.cfg = cfg
        self.private = private
        self.public: NodePublic = private.public()
        self.mesh_key = mesh_key
        self.metrics = Metrics()
        self.registry = Registry(self.public, self.metrics, self.now_ms)
        self.rlog = RateLimitedLog(log)
        self.connections: set[Connection] = set()
        self.server_info: dict[str, object] = {"version": frames.PROTOCOL_VERSION}
        self.rate_bytes_per_s = cfg.rate_limit_bytes_per_s
        self.rate_burst = max(cfg.rate_burst_bytes, _MIN_BURST) if cfg.rate_limit_bytes_per_s else 0
        if self.rate_bytes_per_s:
            self.server_info["TokenBucketBytesPerSecond"] = self.rate_bytes_per_s
            self.server_info["TokenBucketBytesBurst"] = self.rate_burst
        self.ssl_context: ssl.SSLContext | None = None
        self.addr: tuple[str, int] = ("", 0)
        self.metrics_addr: tuple[str, int] | None = None
        self.stun_addrs: list[tuple[str, int]] = []
        self.mesh_clients: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._stun_transports: list[asyncio.BaseTransport] = []
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self._register_gauges()

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Binds every listener and starts the mesh; raises OSError if a port is taken."""
        loop = self._loop = asyncio.get_running_loop()
        cfg = self.cfg
        if not cfg.http:
            self.ssl_context = build_ssl_context(cfg)
            _shrink_asyncio_tls_buffers()
        host, port = cfg.listen_addr()
        srv = await loop.create_server(
            lambda: Connection(self),
            host or None,
            port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=cfg.request_timeout_s if self.ssl_context else None,
            backlog=4096,
            reuse_address=True,
        )
        self._servers.append(srv)
        self.addr = _bound(srv)
        if cfg.metrics_addr:
            from .config import parse_hostport

            mhost, mport = parse_hostport(cfg.metrics_addr, "metrics_addr")
            msrv = await loop.create_server(
                lambda: MetricsConnection(self), mhost or None, mport, reuse_address=True
            )
            self._servers.append(msrv)
            self.metrics_addr = _bound(msrv)
        if cfg.stun:
            from .stun import start_stun

            self._stun_transports, self.stun_addrs = await start_stun(
                host, cfg.stun_port, self.metrics, self.rlog
            )
        if cfg.mesh_with and self.mesh_key is not None:
            from .mesh import MeshClient

            for entry in cfg.mesh_with:
                mc = MeshClient(self, entry)
                self.mesh_clients.append(mc)
                mc.start()
        scheme = "http" if cfg.http else "https"
        log.info(
            "derp: serving %s on %s, server key %s%s%s",
            scheme,
            _fmt_addr(self.addr),
            self.public.to_text(),
            ", metrics on %s" % _fmt_addr(self.metrics_addr) if self.metrics_addr else "",
            ", STUN on %s" % ", ".join(_fmt_addr(a) for a in self.stun_addrs) if self.stun_addrs else "",
        )

    async def close(self) -> None:
        """Stops listening, closes every connection and the mesh."""
        for mc in self.mesh_clients:
            await mc.stop()
        for srv in self._servers:
            srv.close()
        for t in self._stun_transports:
            t.close()
        for c in list(self.connections):
            c.abort("server_closing")
        for srv in self._servers:
            await srv.wait_closed()
        await asyncio.sleep(0)

    def now_ms(self) -> int:
        loop = self._loop
        return int((loop.time() if loop is not None else time.monotonic()) * 1000)

    # -- write batching ----------------------------------------------------------------

    def schedule_flush(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush_all)

    def _flush_all(self) -> None:
        dirty = self._dirty
        self._dirty = []
        self._flush_scheduled = False
        for c in dirty:
            c.pending_flush = False
            try:
                c.flush()
            except Exception as e:  # noqa: BLE001 - one connection's bug must not stop the others
                c.internal_error(e)

    # -- metrics -----------------------------------------------------------------------

    def _register_gauges(self) -> None:
        m = self.metrics
        m.gauge("queue_depth", "packets queued for all clients right now", self._queued)
        m.gauge("queue_depth_max", "the longest lane of any client right now", self._queued_max)
        m.gauge("dup_client_keys", "node keys connected more than once", lambda: self.registry.dup_keys())
        m.gauge("connections", "open TCP connections on the DERP listener", lambda: len(self.connections))
        m.gauge("mesh_peers_up", "outgoing mesh connections that are logged in", self._mesh_up)
        m.gauge("process_resident_memory_bytes", "resident set size", metrics_mod.process_rss_bytes)
        m.gauge("process_open_fds", "open file descriptors", metrics_mod.process_open_fds)

    def _queued(self) -> float:
        return sum(c.queued() for c in self.connections)

    def _queued_max(self) -> float:
        return max((c.longest_lane() for c in self.connections), default=0)

    def _mesh_up(self) -> float:
        return sum(1 for mc in self.mesh_clients if mc.logged_in)


class Connection(asyncio.Protocol):
    """One TCP connection to the DERP listener: HTTP first, DERP after the upgrade."""

    __slots__ = (
        "server", "transport", "http", "derp", "key", "is_mesh_peer", "is_dup", "registered", "peer_ip",
        "peer_port", "other_q", "disco_q", "control", "pong", "paused", "paused_since_ms", "timer",
        "timer_at_ms", "http_deadline_ms", "last_recv_ms", "pending_flush", "closed", "preferred",
        "ideal_node", "rl_on", "rl_tokens", "rl_last_ms", "rl_paused",
    )  # fmt: skip

    def __init__(self, server: DerpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.http: HttpSession | None = None
        self.derp: derp_server.ServerConn | None = None
        self.key: NodePublic = _NO_KEY
        self.is_mesh_peer = False
        self.is_dup = False
        self.registered = False
        self.peer_ip = b"\x00" * 4
        self.peer_port = 0
        self.other_q: collections.deque[bytes] | None = None
        self.disco_q: collections.deque[bytes] | None = None
        self.control: list[bytes] | None = None
        self.pong: bytes | None = None
        self.paused = False
        self.paused_since_ms = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at_ms = -1
        self.http_deadline_ms = 0
        self.last_recv_ms = 0
        self.pending_flush = False
        self.closed = False
        self.preferred = False
        self.ideal_node = ""
        self.rl_on = False
        self.rl_tokens = 0.0
        self.rl_last_ms = 0
        self.rl_paused = False

    def __repr__(self) -> str:
        who = self.key.short() if self.registered else "-"
        return "Connection(%s %s)" % (who, _fmt_addr((_ip_text(self.peer_ip), self.peer_port)))

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        try:
            self._accepted(self.transport)
        except Exception as e:  # noqa: BLE001 - the accept loop must never see an exception
            self.internal_error(e)

    def _accepted(self, transport: asyncio.Transport) -> None:
        s = self.server
        m = s.metrics
        m.connections_accepted_total += 1
        if s.cfg.max_connections and len(s.connections) >= s.cfg.max_connections:
            m.connections_refused_total += 1
            msg = "derp: refusing connection: max_connections=%d reached"
            s.rlog.log(logging.WARNING, "max_connections", msg, s.cfg.max_connections)
            self.closed = True
            transport.abort()
            return
        s.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer_ip = _ip_bytes(str(peer[0]))
            self.peer_port = int(peer[1])
        _tune_socket(transport, s.cfg)
        m.http_connections += 1
        self.http = HttpSession("derp", s.public.raw.hex(), m.http_request)
        self.http_deadline_ms = s.now_ms() + int(s.cfg.request_timeout_s * 1000)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            if self.derp is not None:
                self._derp_data(data)
            elif self.http is not None:
                self._http_data(data)
        except ProtocolError as e:
            self.fail(e.reason, e.detail)
        except HttpError as e:
            self._http_error(e)
        except Exception as e:  # noqa: BLE001 - never let a client's bytes escape as an exception
            self.internal_error(e)

    def eof_received(self) -> bool:
        try:
            if self.derp is not None and not self.closed:
                self._derp_data(b"")
        except ProtocolError as e:
            self.fail(e.reason, e.detail)
        except Exception as e:  # noqa: BLE001
            self.internal_error(e)
        return False  # close our side too

    def pause_writing(self) -> None:
        self.paused = True
        self.paused_since_ms = self.server.now_ms()
        self._arm()

    def resume_writing(self) -> None:
        self.paused = False
        if self.has_output():
            self._want_flush()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        s = self.server
        m = s.metrics
        if self not in s.connections:
            return
        s.connections.discard(self)
        self.closed = True
        if self.http is not None:
            m.http_connections -= 1
            self.http = None
        elif self.derp is not None:
            m.derp_connections -= 1
        if self.registered:
            self.registered = False
            s.registry.unregister(self)
            if self.is_mesh_peer:
                m.mesh_peer_connections -= 1
            if self.preferred:
                m.home_clients -= 1
            log.debug("derp: client=%s addr=%s disconnected", self.key.short(), self._addr())
        for lane, kind in ((self.other_q, "other"), (self.disco_q, "disco")):
            while lane:
                frame = lane.popleft()
                m.drop("write_error" if exc is not None else "gone_disconnected", None, kind,
                       len(frame) - _RECV_OVERHEAD)  # fmt: skip
        self.control = None

    # -- HTTP phase --------------------------------------------------------------------

    def _http_data(self, data: bytes) -> None:
        http = self.http
        assert http is not None and self.transport is not None
        out, upgrade = http.receive_data(data)
        if out:
            self.transport.write(out)
            self.http_deadline_ms = self.server.now_ms() + int(self.server.cfg.request_timeout_s * 1000)
            self._arm()
        if upgrade is not None:
            self._upgrade(upgrade)
        elif http.closing:
            self.transport.close()

    def _http_error(self, e: HttpError) -> None:
        self.server.metrics.connection_error(e.reason)
        if self.transport is not None:
            if e.response:
                self.transport.write(e.response)
            self.transport.close()

    def _upgrade(self, up: Upgrade) -> None:
        s = self.server
        assert self.transport is not None
        s.metrics.http_connections -= 1
        s.metrics.derp_connections += 1
        self.http = None
        self.ideal_node = up.ideal_node
        if up.response:
            self.transport.write(up.response)
        cfg = s.cfg
        now = s.now_ms()
        self.derp = derp_server.ServerConn(
            s.private,
            os.urandom,
            now,
            mesh_key=s.mesh_key,
            server_info=s.server_info,
            handshake_timeout_ms=int(cfg.handshake_timeout_s * 1000),
            keep_alive_ms=int(cfg.keep_alive_s * 1000),
            keep_alive_jitter_ms=int(cfg.keep_alive_s * 1000) // 12,  # 5 s at the default 60 s
        )
        self.transport.write(self.derp.greeting())
        if up.trailing:
            self._derp_data(up.trailing)
        else:
            self._arm()

    # -- DERP phase --------------------------------------------------------------------

    def _derp_data(self, data: bytes) -> None:
        derp = self.derp
        assert derp is not None
        now = self.server.now_ms()
        self.last_recv_ms = now
        derp.receive_data(data, now)
        self._derp_events(now)

    def _derp_events(self, now: int) -> None:
        """Acts on every buffered frame, or until the rate limit pauses this client."""
        derp = self.derp
        assert derp is not None
        s = self.server
        registry = s.registry
        m = s.metrics
        next_event = derp.next_event
        while True:
            ev = next_event()
            if ev is None:
                break
            if type(ev) is derp_server.PacketForPeer:
                packet = ev.data
                m.packets_received_total += 1
                m.bytes_received_total += len(packet)
                disco = looks_like_disco(packet)
                if disco:
                    m.disco_packets_received_total += 1
                if self.is_dup:
                    registry.note_activity(self)
                registry.route(self, ev.dst, packet, disco)
                if self.rl_on and self._rate_spend(len(packet) + _SEND_OVERHEAD, now):
                    break  # the rest stays in the frame reader until the bucket refills
            else:
                self._event(ev, now)
            if self.closed:
                return
        out = derp.data_to_send()
        if out:
            self.send_control(out)
        self._arm()

    def _event(self, ev: object, now: int) -> None:
        s = self.server
        m = s.metrics
        if isinstance(ev, derp_server.ClientLoggedIn):
            self._logged_in(ev, now)
        elif isinstance(ev, derp_server.ForwardPacketReceived):
            s.registry.forward_in(self, ev.src, ev.dst, ev.data)
        elif isinstance(ev, derp_server.PingReceived):
            m.pings_total += 1
            if self.pong is None:
                self.pong = ev.data
                self._want_flush()
            else:
                m.pings_ignored_total += 1
        elif isinstance(ev, derp_server.NotePreferred):
            if ev.preferred != self.preferred:
                self.preferred = ev.preferred
                m.home_clients += 1 if ev.preferred else -1
        elif isinstance(ev, derp_server.WatchConnsRequested):
            s.registry.add_watcher(self)
        elif isinstance(ev, derp_server.ClosePeerRequested):
            n = s.registry.close_peer(ev.key)
            log.info("derp: mesh peer %s closed %d connection(s) of %s", self.key.short(), n, ev.key.short())
        elif isinstance(ev, derp_server.FrameSkipped):
            m.unknown_frames_total += 1
        if self.is_dup and not isinstance(ev, derp_server.ClientLoggedIn):
            s.registry.note_activity(self)

    def _logged_in(self, ev: derp_server.ClientLoggedIn, now: int) -> None:
        s = self.server
        m = s.metrics
        self.key = ev.key
        self.is_mesh_peer = ev.is_mesh_peer
        self.registered = True
        m.logins_total += 1
        if ev.is_mesh_peer:
            m.mesh_peer_connections += 1
            log.info("derp: mesh peer %s logged in from %s", ev.key.short(), self._addr())
        else:
            log.debug("derp: client=%s addr=%s logged in", ev.key.short(), self._addr())
        if s.rate_bytes_per_s and not ev.is_mesh_peer:
            self.rl_on = True
            self.rl_tokens = float(s.rate_burst)
            self.rl_last_ms = now
        s.registry.register(self)

    def _rate_spend(self, n: int, now: int) -> bool:
        """Takes `n` bytes from the client's bucket; True if reading must pause (Tailscale's rateLimit)."""
        s = self.server
        rate = s.rate_bytes_per_s
        self._rate_refill(now)
        self.rl_tokens -= n
        if self.rl_tokens >= 0:
            return False
        s.metrics.rate_limit_waits_total += 1
        if not self.rl_paused and self.transport is not None:
            self.rl_paused = True  # one timer at a time; _rate_resume re-arms it while the bucket is short
            self.transport.pause_reading()
            assert s._loop is not None
            s._loop.call_later(-self.rl_tokens / rate, self._rate_resume)
        return True

    def _rate_refill(self, now: int) -> None:
        s = self.server
        self.rl_tokens = min(
            float(s.rate_burst), self.rl_tokens + (now - self.rl_last_ms) * s.rate_bytes_per_s / 1000.0
        )
        self.rl_last_ms = now

    def _rate_resume(self) -> None:
        if self.closed or self.transport is None:
            return
        now = self.server.now_ms()
        self._rate_refill(now)
        try:
            self._derp_events(now)
        except ProtocolError as e:
            self.fail(e.reason, e.detail)
            return
        except Exception as e:  # noqa: BLE001
            self.internal_error(e)
            return
        if self.closed:
            return
        if self.rl_tokens >= 0:
            self.rl_paused = False
            self.transport.resume_reading()
        else:
            loop = self.server._loop
            assert loop is not None
            loop.call_later(max(-self.rl_tokens / self.server.rate_bytes_per_s, 0.002), self._rate_resume)

    # -- the registry's Client interface -------------------------------------------------

    def present_info(self) -> tuple[bytes, int, int]:
        flags = 0
        if self.derp is not None and self.derp.info.get("IsProber"):
            flags |= frames.PEER_PRESENT_IS_PROBER
        if self.is_mesh_peer:
            flags |= frames.PEER_PRESENT_IS_MESH_PEER
        if self.ideal_node:
            flags |= frames.PEER_PRESENT_NOT_IDEAL
        return self.peer_ip, self.peer_port, flags or frames.PEER_PRESENT_IS_REGULAR

    def send_packet(self, src: NodePublic, data: bytes, disco: bool) -> None:
        """Queues a RecvPacket; when the lane is full its oldest packet is dropped."""
        frame = _RECV_HEADER.pack(frames.FRAME_RECV_PACKET, frames.KEY_LEN + len(data)) + src.raw + data
        if disco:
            lane = self.disco_q
            if lane is None:
                lane = self.disco_q = collections.deque()
        else:
            lane = self.other_q
            if lane is None:
                lane = self.other_q = collections.deque()
        if len(lane) >= self.server.cfg.queue_depth and not self.paused and not self.closed:
            self.flush(1 << 62)  # the socket takes more: write now rather than drop
        if len(lane) >= self.server.cfg.queue_depth:
            old = lane.popleft()
            self.server.metrics.drop(
                "queue_head", None, "disco" if disco else "other", len(old) - _RECV_OVERHEAD
            )
        lane.append(frame)
        if not self.pending_flush and not self.paused:
            self.pending_flush = True
            self.server.schedule_flush(self)

    def send_control(self, frame: bytes) -> None:
        """Queues a frame that is never dropped (ServerInfo, KeepAlive, PeerGone, PeerPresent, Health)."""
        if self.closed:
            return
        if self.control is None:
            self.control = []
        self.control.append(frame)
        self._want_flush()

    def close(self, reason: str) -> None:
        self.abort(reason)

    # -- output --------------------------------------------------------------------------

    def _want_flush(self) -> None:
        if not self.pending_flush and not self.paused and not self.closed:
            self.pending_flush = True
            self.server.schedule_flush(self)

    def has_output(self) -> bool:
        return bool(self.control or self.pong or self.other_q or self.disco_q)

    def flush(self, limit: int = _FLUSH_BYTES) -> None:
        """Writes control frames, the pending Pong, then up to `limit` bytes of packets (disco lane first).

        The transport may pause us in the middle (its buffer above the high-water
        mark): the rest stays queued until it resumes.
        """
        t = self.transport
        if self.closed or self.paused or t is None:
            return
        m = self.server.metrics
        parts: list[bytes] = []
        if self.control:
            parts.extend(self.control)
            self.control.clear()
        if self.pong is not None:
            parts.append(frames.build_pong(self.pong))
            self.pong = None
            m.pongs_total += 1
        size = pending = 0
        for lane in (self.disco_q, self.other_q):
            while lane and size < limit and not self.paused:
                frame = lane.popleft()
                parts.append(frame)
                n = len(frame)
                size += n
                pending += n
                m.packets_sent_total += 1
                m.bytes_sent_total += n - _RECV_OVERHEAD
                if pending >= _WRITE_CHUNK:
                    t.writelines(parts)  # may call pause_writing() at once
                    parts = []
                    pending = 0
        if parts:
            t.writelines(parts)
        if (self.other_q or self.disco_q) and not self.paused:
            self._want_flush()

    def queued(self) -> int:
        return len(self.other_q or ()) + len(self.disco_q or ())

    def longest_lane(self) -> int:
        return max(len(self.other_q or ()), len(self.disco_q or ()))

    # -- timers and failure ----------------------------------------------------------

    def _write_timeout_ms(self) -> int:
        cfg = self.server.cfg
        return int((cfg.mesh_write_timeout_s if self.is_mesh_peer else cfg.write_timeout_s) * 1000)

    def _arm(self) -> None:
        if self.closed:
            return
        deadline = -1
        if self.http is not None:
            deadline = self.http_deadline_ms
        elif self.derp is not None:
            d = self.derp.next_deadline()
            deadline = -1 if d is None else d
            idle = self.server.cfg.idle_timeout_s
            if idle and self.registered:
                deadline = _earliest(deadline, self.last_recv_ms + int(idle * 1000))
        if self.paused:
            deadline = _earliest(deadline, self.paused_since_ms + self._write_timeout_ms())
        if deadline == self.timer_at_ms:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_at_ms = deadline
        if deadline >= 0:
            loop = self.server._loop
            assert loop is not None
            self.timer = loop.call_at(deadline / 1000.0, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_at_ms = -1
        if self.closed:
            return
        s = self.server
        now = s.now_ms()
        try:
            if self.http is not None and now >= self.http_deadline_ms:
                self.fail("http_timeout", "no complete request in %.0f s" % s.cfg.request_timeout_s)
                return
            if self.paused and now >= self.paused_since_ms + self._write_timeout_ms():
                s.metrics.write_timeouts_total += 1
                self.fail("write_timeout", "the client stopped reading")
                return
            if self.derp is not None:
                idle = s.cfg.idle_timeout_s
                if idle and self.registered and now >= self.last_recv_ms + int(idle * 1000):
                    self.fail("idle_timeout", "nothing received in %.0f s" % idle)
                    return
                self.derp.handle_timer(now)
                out = self.derp.data_to_send()
                if out:
                    s.metrics.keep_alives_total += 1
                    self.send_control(out)
        except ProtocolError as e:
            self.fail(e.reason, e.detail)
            return
        except Exception as e:  # noqa: BLE001
            self.internal_error(e)
            return
        self._arm()

    def fail(self, reason: str, detail: str = "") -> None:
        """Closes this connection for `reason` (counted, logged at most a few times per interval)."""
        if self.closed:
            return
        s = self.server
        s.metrics.connection_error(reason)
        who = self.key.short() if self.registered else "-"
        more = " (%s)" % detail if detail else ""
        s.rlog.log(
            logging.INFO,
            reason,
            "derp: closing client=%s addr=%s reason=%s%s",
            who,
            self._addr(),
            reason,
            more,
        )
        self.abort(reason)

    def internal_error(self, e: BaseException) -> None:
        """A bug: count it, log the traceback (rate-limited per exception type), close the connection."""
        s = self.server
        s.metrics.connection_error("internal_error")
        s.rlog.log(logging.ERROR, "internal:" + type(e).__name__, "derp: internal error on %r: %r", self, e)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("derp: traceback", exc_info=e)
        self.abort("internal_error")

    def abort(self, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        t = self.transport
        if t is not None and not t.is_closing():
            t.abort()
        self.closed = True

    def _addr(self) -> str:
        return _fmt_addr((_ip_text(self.peer_ip), self.peer_port))


class MetricsConnection(asyncio.Protocol):
    """A connection to the metrics listener: /metrics and /healthz, nothing else."""

    def __init__(self, server: DerpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.http = HttpSession("metrics", "", lambda e, s: None, server.metrics.render)
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.server.cfg.request_timeout_s, self.transport.abort)

    def data_received(self, data: bytes) -> None:
        t = self.transport
        assert t is not None
        try:
            out, _ = self.http.receive_data(data)
        except HttpError as e:
            t.write(e.response)
            t.close()
            return
        except Exception as e:  # noqa: BLE001
            self.server.rlog.log(
                logging.ERROR, "metrics:" + type(e).__name__, "derp: metrics request failed: %r", e
            )
            t.abort()
            return
        if out:
            t.write(out)
        if self.http.closing:
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()


# --- helpers ----------------------------------------------------------------------------

_NO_KEY = NodePublic(bytes(32))


def build_ssl_context(cfg: Config) -> ssl.SSLContext:
    """TLS 1.2+ from PEM files, HTTP/1.1 only (no h2 in ALPN: the DERP client speaks HTTP/1.1)."""
    files = cfg.tls_files()
    assert files is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files[0], files[1])
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _shrink_asyncio_tls_buffers() -> None:
    """The default loop's TLS keeps a 256 KiB read buffer per connection (asyncio.sslproto's
    SSLProtocol.max_size), which made an idle TLS client cost ~290 KB. 32 KiB still holds two whole TLS
    records (16 KiB each); tools/bench/derp_relay.py --tls-idle shows the difference. uvloop has its own
    TLS and is unaffected."""
    import asyncio.sslproto

    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > _ASYNCIO_TLS_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = _ASYNCIO_TLS_BUFFER


def _tune_socket(transport: asyncio.Transport, cfg: Config) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 600)  # derper's --tcp-keepalive-time
        if cfg.tcp_user_timeout_s and hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(cfg.tcp_user_timeout_s * 1000))
    except OSError:
        pass  # not a TCP socket (tests may pass other transports); nothing to tune


def _bound(srv: asyncio.base_events.Server) -> tuple[str, int]:
    name = srv.sockets[0].getsockname()
    return str(name[0]), int(name[1])


def _earliest(a: int, b: int) -> int:
    if a < 0:
        return b
    return a if a <= b else b


def _ip_bytes(text: str) -> bytes:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).packed
    except ValueError:
        return b"\x00" * 4


def _ip_text(ip: bytes) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return "?"


def _fmt_addr(addr: tuple[str, int] | None) -> str:
    if addr is None:
        return "-"
    host, port = addr
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host or "*", port)
