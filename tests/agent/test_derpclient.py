"""The agent's DERP client against a tiny DERP server written here from the core codecs.

The server (`MiniDerp`) is just enough of derp.md §2-§6 to be a peer: the
HTTP upgrade, the login boxes (meshlet.derp.login), packet routing by key,
PeerGone when a client leaves, Pong for Ping, NotePreferred bookkeeping, and
switches a test can flip (drop every connection, refuse upgrades). It sends
no keep-alives, so a short read timeout makes it a silent server. It
listens on 127.0.0.1, over TCP or TLS with a certificate made in the test,
so these tests need neither the real meshlet-derp nor root.
"""

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from meshlet.derp import frames, login
from meshlet.derp.events import Connected, PeerGone
from meshlet.key import NodePrivate, NodePublic
from meshlet_agent.derpclient import (
    PENDING_PACKETS,
    DerpClient,
    DerpClientClosed,
    describe_error,
    parse_derp_url,
)
from meshlet_testing import tlscert

HOST = "derp.test"  # the name in the test certificate; always dialled at 127.0.0.1


class MiniDerp:
    """A DERP server in ~100 lines: enough to log in, relay, and refuse on request; no keep-alives."""

    def __init__(
        self, tls: ssl.SSLContext | None = None, server_info: dict[str, object] | None = None
    ) -> None:
        self.key = NodePrivate.generate(os.urandom)
        self.tls = tls
        self.server_info = server_info or {"version": 2}
        self.clients: dict[NodePublic, asyncio.StreamWriter] = {}
        self.infos: list[dict[str, object]] = []
        self.preferred: list[tuple[NodePublic, bool]] = []
        self.requests: list[bytes] = []
        self.logins = 0
        self.refuse_with: bytes | None = None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self.drop_all()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_all(self) -> None:
        for w in list(self.clients.values()):
            w.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        key: NodePublic | None = None
        try:
            key = await self._login(reader, writer)
            if key is not None:
                await self._relay(key, reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            if key is not None and self.clients.get(key) is writer:
                del self.clients[key]
                for other in self.clients.values():
                    other.write(frames.build_peer_gone(key, frames.PEER_GONE_DISCONNECTED))
            writer.close()

    async def _login(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> NodePublic | None:
        request = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(request)
        if self.refuse_with is not None:
            writer.write(self.refuse_with)
            await writer.drain()
            return None
        assert request.startswith(b"GET /derp HTTP/1.1\r\n") and b"\r\nUpgrade: DERP\r\n" in request
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: 2\r\n"
            b"Derp-Public-Key: " + self.key.public().raw.hex().encode() + b"\r\n\r\n"
        )
        writer.write(login.build_server_key(self.key.public()))
        header = await reader.readexactly(5)
        frame_type, length = frames.parse_header(header)
        assert frame_type == frames.FRAME_CLIENT_INFO
        client, info = login.parse_client_info(await reader.readexactly(length), self.key)
        self.infos.append(info)
        writer.write(login.build_server_info(self.key, client, os.urandom(24), self.server_info))
        old = self.clients.get(client)
        if old is not None:
            old.close()
        self.clients[client] = writer
        self.logins += 1
        return client

    async def _relay(self, key: NodePublic, reader: asyncio.StreamReader) -> None:
        while True:
            frame_type, length = frames.parse_header(await reader.readexactly(5))
            payload = await reader.readexactly(length)
            if frame_type == frames.FRAME_SEND_PACKET:
                dst, packet = frames.parse_send_packet(payload)
                w = self.clients.get(dst)
                if w is not None:
                    w.write(frames.build_recv_packet(key, packet))
                else:
                    self.clients[key].write(frames.build_peer_gone(dst, frames.PEER_GONE_NOT_HERE))
            elif frame_type == frames.FRAME_NOTE_PREFERRED:
                self.preferred.append((key, frames.parse_note_preferred(payload)))
            elif frame_type == frames.FRAME_PING:
                self.clients[key].write(frames.build_pong(frames.parse_ping(payload)))


def run(coro: Callable[[], Awaitable[None]], timeout_s: float = 20) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout_s):
            await coro()

    asyncio.run(main())


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.005)


def client(server: MiniDerp, scheme: str = "http", **kwargs: Any) -> DerpClient:
    return DerpClient("%s://%s:%d/derp" % (scheme, HOST, server.port), NodePrivate.generate(os.urandom),
                      dial_host="127.0.0.1", **kwargs)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- plain helpers ---


def test_parse_derp_url() -> None:
    assert parse_derp_url("https://derp1.example.net/derp") == (
        True,
        "derp1.example.net",
        443,
        "derp1.example.net",
    )
    assert parse_derp_url("http://10.0.0.1:3340/derp") == (False, "10.0.0.1", 3340, "10.0.0.1:3340")
    assert parse_derp_url("https://[2001:db8::1]:8443") == (True, "2001:db8::1", 8443, "[2001:db8::1]:8443")
    for bad in ("ftp://x/derp", "https:///derp", "https://user@host/derp"):
        with pytest.raises(ValueError):
            parse_derp_url(bad)


def test_describe_error() -> None:
    assert describe_error(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert describe_error(TimeoutError()) == "timed out connecting"
    assert describe_error("as is") == "as is"


# --- against the mini server ---


def test_login_and_packets_between_two_clients() -> None:
    async def main() -> None:
        server = MiniDerp()
        await server.start()
        got_b: list[tuple[NodePublic, bytes]] = []
        events_a: list[object] = []
        a = client(server, preferred=True, on_event=events_a.append)
        b = client(server, on_packet=lambda src, data: got_b.append((src, data)))
        a.start()
        b.start()
        await a.wait_connected()
        await b.wait_connected()
        assert a.connected and b.connected
        assert a.server_key == server.key.public()
        assert [type(e) for e in events_a] == [Connected]
        assert server.requests[0] == (
            b"GET /derp HTTP/1.1\r\nHost: derp.test:%d\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
            % server.port
        )
        assert server.infos[0] == {"meshKey": "", "version": 2, "CanAckPings": True, "IsProber": False}

        assert a.send(b.public_key, b"hello b")
        await eventually(lambda: got_b == [(a.public_key, b"hello b")])
        assert b.send(a.public_key, b"hello a" * 100)
        assert await a.recv() == (b.public_key, b"hello a" * 100)
        for i in range(200):
            a.send(b.public_key, b"%d" % i)
        await eventually(lambda: len(got_b) == 201)
        assert [d for _, d in got_b[1:]] == [b"%d" % i for i in range(200)]

        await eventually(lambda: server.preferred == [(a.public_key, True)])
        a.set_preferred(False)
        a.set_preferred(False)
        await eventually(lambda: len(server.preferred) == 2)
        assert server.preferred[1] == (a.public_key, False)

        rtt = await a.ping()
        assert 0 <= rtt < 1

        await b.close()
        await eventually(lambda: any(isinstance(e, PeerGone) for e in events_a))
        gone = [e for e in events_a if isinstance(e, PeerGone)]
        assert (gone[0].peer, gone[0].reason) == (b.public_key, frames.PEER_GONE_DISCONNECTED)
        await a.close()
        with pytest.raises(DerpClientClosed):
            await a.recv()
        assert not a.send(b.public_key, b"after close")
        assert a.drops == {"not_connected": 1}
        await server.close()

    run(main)


def test_packets_sent_while_dialling_wait_for_the_connection() -> None:
    """A new node's first WireGuard handshake goes out before its DERP connection is up:
    held, not dropped (else WireGuard's 5 s retry delays the first connection)."""

    async def main() -> None:
        server = MiniDerp()
        await server.start()
        got_b: list[bytes] = []
        b = client(server, on_packet=lambda src, data: got_b.append(data))
        b.start()
        await b.wait_connected()
        a = client(server)
        assert a.send(b.public_key, b"before start")
        a.start()
        assert a.send(b.public_key, b"while dialling")
        for i in range(PENDING_PACKETS):
            a.send(b.public_key, b"%d" % i)
        await a.wait_connected()
        await eventually(lambda: len(got_b) == PENDING_PACKETS)
        assert got_b == [b"%d" % i for i in range(PENDING_PACKETS)]  # the two oldest made room
        assert a.drops == {"pending_overflow": 2}
        await a.close()
        assert not a.send(b.public_key, b"after close")
        await b.close()
        await server.close()

    run(main)


def test_async_iteration_ends_at_close() -> None:
    async def main() -> None:
        server = MiniDerp()
        await server.start()
        a, b = client(server), client(server)
        a.start()
        b.start()
        await a.wait_connected()
        await b.wait_connected()
        for i in range(3):
            a.send(b.public_key, bytes([i]))
        got = []
        async for _src, data in b:
            got.append(data)
            if len(got) == 3:
                await b.close()
        assert got == [b"\x00", b"\x01", b"\x02"]
        await a.close()
        await server.close()

    run(main)


def test_reconnects_after_the_server_drops_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "meshlet_agent.derp")

    async def main() -> None:
        server = MiniDerp()
        await server.start()
        a = client(server, preferred=True)
        a.start()
        await a.wait_connected()
        for round_ in range(3):
            server.drop_all()
            await eventually(lambda n=round_ + 2: server.logins == n)  # type: ignore[misc]
            await a.wait_connected()
        assert a.connects == 4
        # Each drop came within 5 s of connecting, so the backoff kept growing.
        assert a.backoff.failures == 3
        assert "closed the connection" in a.last_error
        # Preferred is told again on every new connection.
        await eventually(lambda: len(server.preferred) == 4)
        await a.close()
        await server.close()

    run(main)
    lines = [r.getMessage() for r in caplog.records if r.name == "meshlet_agent.derp"]
    assert sum(m.startswith("derp: connected to http://derp.test") for m in lines) == 4
    assert sum(m.startswith("derp: disconnected from") for m in lines) == 3


def test_backs_off_while_the_server_is_down_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "meshlet_agent.derp")
    port = free_port()

    async def main() -> None:
        server = MiniDerp()
        server.port = port
        a = client(server)
        a.start()
        await eventually(lambda: a.backoff.failures >= 6)
        assert "refused" in a.last_error.lower()
        await server.start(port)
        await a.wait_connected()
        await a.close()
        await server.close()

    run(main)
    records = [r for r in caplog.records if r.name == "meshlet_agent.derp"]
    loud = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    assert len(loud) == 2, loud
    assert loud[0].startswith("derp: cannot connect to http://derp.test:%d/derp" % port)
    assert loud[1].startswith("derp: connected to")
    assert sum(r.getMessage().startswith("derp: still cannot connect") for r in records) >= 5


def test_restart_hint_reconnect_and_a_failing_callback() -> None:
    async def main() -> None:
        server = MiniDerp()
        await server.start()
        calls: list[bytes] = []

        def broken(src: NodePublic, data: bytes) -> None:
            calls.append(data)
            raise RuntimeError("agent bug")

        a, b = client(server), client(server, on_packet=broken)
        a.start()
        b.start()
        await a.wait_connected()
        await b.wait_connected()
        a.send(b.public_key, b"1")
        a.send(b.public_key, b"2")
        await eventually(lambda: len(calls) == 2)
        assert b.connected and b.drops == {"on_packet_failed": 2}  # the connection survived
        # The server says it restarts and drops us: the next dial waits the advised 300 ms.
        for w in server.clients.values():
            w.write(frames.build_restarting(300, 10_000))
        await eventually(lambda: all(c._session and c._session.restart_hint_ms == 300 for c in (a, b)))
        server.drop_all()
        start = asyncio.get_running_loop().time()
        await eventually(lambda: server.logins == 4)
        assert asyncio.get_running_loop().time() - start >= 0.29
        # An explicit reconnect (say, after a network change) dials again at once.
        await a.wait_connected()
        a.reconnect()
        await eventually(lambda: server.logins == 5)
        assert a.last_error == "reconnect requested"
        await a.close()
        await b.close()
        await server.close()

    run(main)


def test_a_refused_upgrade_is_retried() -> None:
    async def main() -> None:
        server = MiniDerp()
        server.refuse_with = b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n"
        await server.start()
        a = client(server)
        a.start()
        await eventually(lambda: len(server.requests) >= 3)
        assert a.last_error == "the server refused the DERP upgrade: HTTP 426 Upgrade Required"
        assert not a.connected
        server.refuse_with = None
        await a.wait_connected()
        await a.close()
        await server.close()

    run(main)


def test_a_silent_server_is_timed_out_and_redialled() -> None:
    async def main() -> None:
        server = MiniDerp()
        await server.start()
        a = client(server, client_kwargs={"read_timeout_ms": 300})
        a.start()
        await a.wait_connected()
        await eventually(lambda: server.logins == 2, timeout_s=3)
        assert a.last_error == "timed out: no frame for 0.3 s"
        await a.close()
        await server.close()

    run(main)


def test_token_bucket_from_the_server_limits_sends() -> None:
    async def main() -> None:
        server = MiniDerp(
            server_info={"version": 2, "TokenBucketBytesPerSecond": 1, "TokenBucketBytesBurst": 500}
        )
        await server.start()
        a, b = client(server), client(server)
        a.start()
        b.start()
        await a.wait_connected()
        await b.wait_connected()
        sent = [a.send(b.public_key, bytes(100)) for _ in range(5)]
        assert sent == [True, True, True, False, False]  # 137-byte frames in a 500-byte bucket
        assert [await b.recv() for _ in range(3)] == [(a.public_key, bytes(100))] * 3
        assert a._session is not None and a._session.conn.stats.dropped == {"rate_limited": 2}
        await a.close()
        await b.close()
        await server.close()

    run(main)


# --- TLS ---


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    return tlscert.make_cert(tmp_path, HOST)


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert_path, key_path = make_cert(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_path, key_path)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: sni.append(name)

    async def main() -> None:
        server = MiniDerp(tls=server_ctx)
        await server.start()
        # Verification against the system's CAs fails, once, and is retried.
        strict = client(server, "https")
        strict.start()
        await eventually(lambda: "certificate" in strict.last_error)
        assert "insecure" in strict.last_error
        await strict.close()
        # Insecure mode (InsecureForTests) connects, and so does trusting the certificate.
        lab = client(server, "https", insecure=True)
        trusting = client(server, "https", ssl_context=ssl.create_default_context(cafile=str(cert_path)))
        lab.start()
        trusting.start()
        await lab.wait_connected()
        await trusting.wait_connected()
        assert lab.send(trusting.public_key, b"over TLS")
        assert await trusting.recv() == (lab.public_key, b"over TLS")
        await lab.close()
        await trusting.close()
        await server.close()

    run(main)
    assert set(sni) == {HOST}  # SNI is the URL's host even though 127.0.0.1 was dialled
