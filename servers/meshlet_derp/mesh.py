"""Meshing: this relay dials every other relay of its region as a DERP client (derp.md §7).

For each `--mesh-with host:port`, a MeshClient keeps one connection up:

    GET /derp (Upgrade: DERP)  ->  101          https unless this relay runs --http
    <- ServerKey               ->  ClientInfo   our *server* key as the client key,
                                                 {"meshKey": ..., "version": 2, "CanAckPings": true}
    <- ServerInfo              ->  WatchConns
    <- PeerPresent(K) ...      the peer's clients: "K is reachable through this connection"
    <- PeerGone(K)             K left the peer
    -> ForwardPacket(src, K, data)   for SendPackets from our clients to K

PeerPresent/PeerGone update the registry's forwarders; when the connection
breaks every key learnt through it is removed (Tailscale's MeshConnBroke),
which tells our clients PeerGone(Disconnected) for keys that left the region.
The peer accepts ForwardPacket from us because our ClientInfo carried the
mesh key; we accept the peer's ForwardPackets on *its* connection to us
(server.py), never from a client without the key.

Listing this relay's own address is harmless: the peer's ServerKey is our
own key, so the client stops ("self-connect"), as derper does. Reconnects
wait `RETRY_S` (5 s, derper's retryInterval) plus up to 1 s of jitter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import ssl
from typing import TYPE_CHECKING

from meshlet.derp import frames, login
from meshlet.errors import ProtocolError
from meshlet.key import NodePublic

from .config import parse_hostport

if TYPE_CHECKING:
    from .server import DerpServer

log = logging.getLogger("meshlet_derp.mesh")

RETRY_S = 5.0
CONNECT_TIMEOUT_S = 10.0
MAX_BUFFERED_BYTES = 4 << 20  # ForwardPackets waiting in our send buffer before we drop new ones
_MAX_RESPONSE_HEAD = 16 << 10


class MeshError(Exception):
    """The mesh connection failed in a way that is not a protocol error (bad status, self-connect)."""


class MeshClient:
    """One outgoing mesh connection, kept up until `stop()`; a registry Forwarder."""

    def __init__(self, server: DerpServer, entry: str) -> None:
        self.server = server
        self.entry = entry
        self.host, self.port = parse_hostport(entry, "mesh_with", need_host=True)
        self.retry_s = RETRY_S
        self.logged_in = False
        self.peer_key: NodePublic | None = None
        self.present: set[NodePublic] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return "MeshClient(%s)" % self.entry

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mesh %s" % self.entry)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping; already logged
                pass
        self._forget_all()

    # -- Forwarder -----------------------------------------------------------------------

    def forward_packet(self, src: NodePublic, dst: NodePublic, data: bytes) -> None:
        m = self.server.metrics
        w = self._writer
        if w is None or not self.logged_in or w.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            m.drop("mesh_unavailable", data)
            return
        w.write(frames.build_forward_packet(src, dst, data))
        m.mesh_forward_frames_total += 1

    # -- the connection loop ------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except _SelfConnect:
                log.info("mesh: %s is this relay itself; not meshing with it", self.entry)
                return
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ProtocolError, MeshError,
                    ssl.SSLError) as e:  # fmt: skip
                self.server.rlog.log(logging.WARNING, "mesh:" + self.entry, "mesh: %s: %s", self.entry,
                                     _describe(e))  # fmt: skip
            except Exception as e:  # noqa: BLE001 - keep retrying; a bug here must not end meshing
                log.exception("mesh: %s: unexpected error: %r", self.entry, e)
            finally:
                self._disconnected()
            if self._stopping:
                return
            await asyncio.sleep(self.retry_s + random.random())

    async def _session(self) -> None:
        s = self.server
        tls = None if s.cfg.http else _client_context(s.cfg.mesh_ca_file)
        host_header = self.host if ":" not in self.host else "[%s]" % self.host
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host, self.port, ssl=tls, server_hostname=self.host if tls else None
            ),
            CONNECT_TIMEOUT_S,
        )
        self._writer = writer
        writer.write(
            b"GET /derp HTTP/1.1\r\nHost: %s\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
            % host_header.encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONNECT_TIMEOUT_S)
        if len(head) > _MAX_RESPONSE_HEAD or not head.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101")):
            raise MeshError("no 101 from /derp: %r" % head.split(b"\r\n", 1)[0][:80])
        fr = frames.FrameReader(frames.CLIENT_MAX_FRAME_LEN)
        while True:
            data = await reader.read(256 << 10)
            if not data:
                fr.feed_eof()
                raise MeshError("peer closed the connection")
            fr.feed(data)
            while True:
                frame = fr.next_frame()
                if frame is None:
                    break
                self._frame(frame[0], frame[1], writer)

    def _frame(self, frame_type: int, payload: bytes, writer: asyncio.StreamWriter) -> None:
        s = self.server
        if frame_type == frames.FRAME_SERVER_KEY:
            self.peer_key = login.parse_server_key(payload)
            if self.peer_key == s.public:
                raise _SelfConnect()
            info = {
                "meshKey": (s.mesh_key or b"").hex(),
                "version": frames.PROTOCOL_VERSION,
                "CanAckPings": True,
            }
            writer.write(
                login.build_client_info(s.private, self.peer_key, os.urandom(frames.NONCE_LEN), info)
            )
        elif frame_type == frames.FRAME_SERVER_INFO:
            if self.peer_key is None:
                raise MeshError("ServerInfo before ServerKey")
            login.parse_server_info(payload, s.private, self.peer_key)
            writer.write(frames.build_watch_conns())
            self.logged_in = True
            log.info("mesh: connected to %s (%s), watching its clients", self.entry, self.peer_key.short())
        elif frame_type == frames.FRAME_PEER_PRESENT:
            key = frames.parse_peer_present(payload).key
            if key != s.public and key not in self.present:
                self.present.add(key)
                s.registry.add_forwarder(key, self)
        elif frame_type == frames.FRAME_PEER_GONE:
            key, _reason = frames.parse_peer_gone(payload)
            if key in self.present:
                self.present.discard(key)
                s.registry.remove_forwarder(key, self)
        elif frame_type == frames.FRAME_PING:
            writer.write(frames.build_pong(frames.parse_ping(payload)))
        # KeepAlive, Health, Restarting, RecvPacket (nobody should send to a server key): ignored.

    def _disconnected(self) -> None:
        self.logged_in = False
        w = self._writer
        self._writer = None
        if w is not None:
            w.transport.abort()
        self._forget_all()

    def _forget_all(self) -> None:
        keys = list(self.present)
        self.present.clear()
        for key in keys:
            self.server.registry.remove_forwarder(key, self)


class _SelfConnect(Exception):
    pass


def _client_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _describe(e: BaseException) -> str:
    if isinstance(e, ProtocolError):
        return "protocol error: %s" % e
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed during the upgrade"
    return str(e) or type(e).__name__
