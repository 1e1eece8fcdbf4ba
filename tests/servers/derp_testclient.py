"""A minimal DERP client for the relay's tests, built from the core frames and login only.

Deliberately independent of meshlet's own DERP client (core/meshlet/derp/
client.py and the agent's shell): the relay is tested against a second,
small implementation written from derp.md, with every wait bounded.

Also here: `serve(**settings)`, an async context manager that runs a real
`meshlet_derp` server on 127.0.0.1 with ephemeral ports and plain HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, AsyncIterator

from meshlet.derp import frames, login
from meshlet.disco import MAGIC as DISCO_MAGIC
from meshlet.key import NodePrivate, NodePublic
from meshlet_derp.config import Config
from meshlet_derp.server import DerpServer

TIMEOUT = 5.0
_OPEN: list[DerpTestClient] = []  # closed by serve() on the way out, so no test leaks a socket


def new_key() -> NodePrivate:
    return NodePrivate.generate(os.urandom)


def disco_packet(tag: bytes = b"") -> bytes:
    """Something LooksLikeDiscoWrapper accepts: magic, then at least 56 more bytes."""
    return DISCO_MAGIC + bytes(32) + bytes(24) + tag


@contextlib.asynccontextmanager
async def serve(private: NodePrivate | None = None, mesh_key: bytes | None = None,
                **settings: Any) -> AsyncIterator[DerpServer]:  # fmt: skip
    cfg = Config(http=True, addr="127.0.0.1:0", metrics_addr="127.0.0.1:0", stun=False, stun_port=0)
    for k, v in settings.items():
        setattr(cfg, k, v)
    cfg.validate()
    server = DerpServer(cfg, private or new_key(), mesh_key)
    await server.start()
    try:
        yield server
    finally:
        for c in list(_OPEN):
            await c.close()
        await server.close()


class DerpTestClient:
    """One DERP connection. `frames_in` collects every frame after login, in order."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, private: NodePrivate
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.private = private
        self.key: NodePublic = private.public()
        self.server_key: NodePublic | None = None
        self.server_info: dict[str, object] = {}
        self.response_head = b""
        self._fr = frames.FrameReader(frames.CLIENT_MAX_FRAME_LEN)
        self._pending: list[tuple[int, bytes]] = []
        _OPEN.append(self)

    @classmethod
    async def connect(
        cls,
        addr: tuple[str, int],
        private: NodePrivate | None = None,
        mesh_key: bytes | None = None,
        fast_start: bool = False,
        headers: str = "",
        rcvbuf: int = 0,
        tls: Any = None,
    ) -> DerpTestClient:
        """Connects (over TLS if `tls` is an SSLContext), upgrades and logs in (ServerInfo received)."""
        c = await cls.open(addr, private, rcvbuf, tls)
        await c.upgrade(fast_start, headers)
        await c.login(mesh_key)
        return c

    @classmethod
    async def open(
        cls, addr: tuple[str, int], private: NodePrivate | None = None, rcvbuf: int = 0, tls: Any = None
    ) -> DerpTestClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, addr), TIMEOUT)
        if tls is not None:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(sock=sock, ssl=tls, server_hostname="localhost"), TIMEOUT
            )
        else:
            reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer, private or new_key())

    async def upgrade(self, fast_start: bool = False, headers: str = "") -> None:
        req = "GET /derp HTTP/1.1\r\nHost: test\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n" + headers
        if fast_start:
            req += "Derp-Fast-Start: 1\r\n"
        self.writer.write((req + "\r\n").encode())
        if not fast_start:
            self.response_head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            assert self.response_head.startswith(b"HTTP/1.1 101 "), self.response_head

    async def login(self, mesh_key: bytes | None = None, version: int = 2) -> None:
        ftype, payload = await self.next_frame()
        assert ftype == frames.FRAME_SERVER_KEY, ftype
        self.server_key = login.parse_server_key(payload)
        info: dict[str, object] = {"version": version, "CanAckPings": True}
        if mesh_key is not None:
            info["meshKey"] = mesh_key.hex()
        self.writer.write(login.build_client_info(self.private, self.server_key, os.urandom(24), info))
        ftype, payload = await self.next_frame()
        assert ftype == frames.FRAME_SERVER_INFO, ftype
        self.server_info = login.parse_server_info(payload, self.private, self.server_key)

    async def next_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes]:
        """The next frame of any type; raises TimeoutError or EOFError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._pending:
            frame = self._fr.next_frame()
            if frame is not None:
                return frame
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError()
            data = await asyncio.wait_for(self.reader.read(1 << 16), left)
            if not data:
                raise EOFError("server closed the connection")
            self._fr.feed(data)
        return self._pending.pop(0)

    async def expect(self, frame_type: int, timeout: float = TIMEOUT, skip: tuple[int, ...] = ()) -> bytes:
        """The payload of the next frame of `frame_type`, skipping KeepAlives and types in `skip`."""
        while True:
            ftype, payload = await self.next_frame(timeout)
            if ftype == frame_type:
                return payload
            if ftype == frames.FRAME_KEEP_ALIVE or ftype in skip:
                continue
            raise AssertionError(
                "expected frame 0x%02x, got 0x%02x (%d bytes)" % (frame_type, ftype, len(payload))
            )

    async def recv_packet(self, timeout: float = TIMEOUT) -> tuple[NodePublic, bytes]:
        return frames.parse_recv_packet(await self.expect(frames.FRAME_RECV_PACKET, timeout))

    async def closed(self, timeout: float = TIMEOUT) -> bool:
        """True once the server closes the connection (frames before that are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 16), left)
            except asyncio.TimeoutError:
                return False
            except ConnectionError:
                return True
            if not data:
                return True

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def send_packet(self, dst: NodePublic, packet: bytes) -> None:
        self.writer.write(frames.build_send_packet(dst, packet))

    async def drain(self) -> None:
        await asyncio.wait_for(self.writer.drain(), TIMEOUT)

    async def close(self) -> None:
        """Closes at once (RST-free abort of the transport), idempotent."""
        if self in _OPEN:
            _OPEN.remove(self)
        self.writer.close()
        self.writer.transport.abort()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)
        except (ConnectionError, OSError):
            pass


async def wait_for(predicate: Any, timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Polls `predicate()` every 10 ms until true; fails after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        await asyncio.sleep(0.01)
