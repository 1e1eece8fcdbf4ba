"""A small TS2021 client for the control server's tests: the core's Noise client plus h2's client side.

It does what a Tailscale client does on the wire (shared/protocol/control.md
§4-§7): GET /key, POST /ts2021 with the handshake header, the 51-byte
response, the early payload, then HTTP/2 with prior knowledge inside Noise
records; `request` for register and lite updates, `open_map` for the long
poll, whose messages `MapStream.next` unframes (LE length + zstd) and decodes.
`tailnet()` runs a ControlServer over a State in ":memory:" on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any, AsyncIterator

import h2.config
import h2.connection
import h2.events
import zstandard

from meshlet.control import base
from meshlet.key import DiscoPrivate, MachinePrivate, MachinePublic, NodePrivate
from meshlet_control import app
from meshlet_control.config import ServeConfig
from meshlet_control.state import State

_dctx = zstandard.ZstdDecompressor()


async def get_key(host: str, port: int, path: str = "/key?v=130") -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET; returns (status, body)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\nUser-Agent: Go-http-client/1.1\r\n\r\n" % path.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length)
    writer.close()
    return status, body


class MapStream:
    """The body of a long poll, message by message."""

    def __init__(self, client: ControlTestClient, stream_id: int) -> None:
        self.client = client
        self.stream_id = stream_id
        self.status = 0
        self.buf = bytearray()
        self.ended = False
        self.cond = asyncio.Condition()

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        """The next MapResponse (keep-alives included)."""

        async def wait() -> dict[str, Any]:
            async with self.cond:
                while True:
                    if len(self.buf) >= 4:
                        n = int.from_bytes(self.buf[:4], "little")
                        if len(self.buf) >= 4 + n:
                            frame = bytes(self.buf[4 : 4 + n])
                            del self.buf[: 4 + n]
                            doc: dict[str, Any] = json.loads(_dctx.decompress(frame))
                            return doc
                    if self.ended:
                        raise EOFError("map stream ended")
                    await self.cond.wait()

        return await asyncio.wait_for(wait(), timeout)

    async def next_non_keepalive(self, timeout: float = 10) -> dict[str, Any]:
        while True:
            msg = await self.next(timeout)
            if msg != {"KeepAlive": True}:
                return msg


class _Pending:
    def __init__(self) -> None:
        self.status = 0
        self.body = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class ControlTestClient:
    """One machine's Noise connection to the server."""

    def __init__(self, machine: MachinePrivate) -> None:
        self.machine = machine
        self.node = NodePrivate.generate(os.urandom)
        self.disco = DiscoPrivate.generate(os.urandom)
        self.early: dict[str, Any] | None = None
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.pending: dict[int, _Pending] = {}
        self.streams: dict[int, MapStream] = {}
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.conn: base.Conn
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls, host: str, port: int, control: MachinePublic, machine: MachinePrivate | None = None
    ) -> ControlTestClient:
        self = cls(machine or MachinePrivate.generate(os.urandom))
        hs = base.ClientHandshake(self.machine, control, MachinePrivate.generate(os.urandom))
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self.writer.write(
            b"POST /ts2021 HTTP/1.1\r\nHost: %s\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n"
            b"Connection: upgrade\r\nUpgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: %s\r\n\r\n"
            % (host.encode(), hs.initiation_header().encode())
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"\r\nUpgrade: tailscale-control-protocol\r\n" in head, head
        conn = hs.receive_response(await self.reader.readexactly(base.RESPONSE_LEN))
        assert conn is not None
        self.conn = conn
        first = b""
        while True:  # the early payload, then HTTP/2
            split = base.split_early_payload(first)
            if split is not None:
                payload, rest = split
                if payload is not None:
                    self.early = json.loads(payload)
                break
            data = await self.reader.read(65536)
            assert data, "connection closed before the early payload"
            conn.receive_data(data)
            first += conn.read()
        self.h2.initiate_connection()
        self._flush()
        if rest:
            self._events(self.h2.receive_data(rest))
        self._task = asyncio.create_task(self._read_loop())
        return self

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.writer.write(self.conn.send(data))

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                self.conn.receive_data(data)
                if not data:
                    break
                plain = self.conn.read()
                if plain:
                    self._events(self.h2.receive_data(plain))
                    self._flush()
        except (ConnectionError, OSError):
            pass
        finally:
            for p in self.pending.values():
                if not p.done.done():
                    p.done.set_exception(EOFError("connection closed"))
            for s in self.streams.values():
                s.ended = True
                async with s.cond:
                    s.cond.notify_all()

    def _events(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            if isinstance(ev, h2.events.ResponseReceived):
                status = int(dict(ev.headers or [])[":status"])
                if sid in self.pending:
                    self.pending[sid].status = status
                if sid in self.streams:
                    self.streams[sid].status = status
            elif isinstance(ev, h2.events.DataReceived):
                assert sid is not None
                self.h2.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                if sid in self.pending:
                    self.pending[sid].body.extend(ev.data or b"")
                if sid in self.streams:
                    s = self.streams[sid]
                    s.buf.extend(ev.data or b"")
                    asyncio.create_task(_notify(s))
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                if sid in self.pending and not self.pending[sid].done.done():
                    self.pending[sid].done.set_result(None)
                if sid in self.streams:
                    self.streams[sid].ended = True
                    asyncio.create_task(_notify(self.streams[sid]))

    def _send_request(self, path: str, body: bytes) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":authority", "control"),
                (":path", path),
                ("content-length", str(len(body))),
            ],
        )
        self.h2.send_data(sid, body, end_stream=True)
        self._flush()
        return sid

    async def request(self, path: str, doc: dict[str, Any] | bytes, timeout: float = 10) -> tuple[int, bytes]:
        """One request; returns (status, whole body)."""
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        sid = self._send_request(path, body)
        p = self.pending[sid] = _Pending()
        await asyncio.wait_for(p.done, timeout)
        return p.status, bytes(p.body)

    def register_request(self, auth_key: str | None, hostname: str, **extra: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Version": 130,
            "NodeKey": self.node.public().to_text(),
            "OldNodeKey": "nodekey:" + "0" * 64,
            "Expiry": "0001-01-01T00:00:00Z",
            "Followup": "",
            "Hostinfo": {"Hostname": hostname, "OS": "linux", "IPNVersion": "1.90.9-test"},
        }
        if auth_key is not None:
            doc["Auth"] = {"AuthKey": auth_key}
        doc.update(extra)
        return doc

    async def register(self, auth_key: str | None, hostname: str, **extra: Any) -> dict[str, Any]:
        status, body = await self.request(
            "/machine/register", self.register_request(auth_key, hostname, **extra)
        )
        assert status == 200, (status, body)
        out: dict[str, Any] = json.loads(body)
        return out

    def map_request(
        self, stream: bool, endpoints: list[str], derp: int = 900, **extra: Any
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Version": 130,
            "Compress": "zstd",
            "KeepAlive": True,
            "NodeKey": self.node.public().to_text(),
            "DiscoKey": self.disco.public().to_text(),
            "Stream": stream,
            "OmitPeers": not stream,
            "Hostinfo": {"Hostname": "x", "NetInfo": {"PreferredDERP": derp}},
            "Endpoints": endpoints,
            "EndpointTypes": [1] * len(endpoints),
        }
        doc.update(extra)
        return doc

    async def open_map(self, endpoints: list[str], derp: int = 900, **extra: Any) -> MapStream:
        sid = self._send_request(
            "/machine/map", json.dumps(self.map_request(True, endpoints, derp, **extra)).encode()
        )
        s = self.streams[sid] = MapStream(self, sid)
        return s

    async def lite_update(self, endpoints: list[str], derp: int = 900) -> tuple[int, bytes]:
        return await self.request("/machine/map", self.map_request(False, endpoints, derp))

    def cancel(self, stream: MapStream) -> None:
        self.h2.reset_stream(stream.stream_id)
        self._flush()

    async def close(self) -> None:
        self.writer.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass


async def _notify(s: MapStream) -> None:
    async with s.cond:
        s.cond.notify_all()


DERP_MAP = {
    "Regions": {
        "900": {
            "RegionID": 900,
            "RegionCode": "t",
            "RegionName": "test",
            "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "127.0.0.1", "IPv4": "127.0.0.1"}],
        }
    }
}


class Tailnet:
    def __init__(self, state: State, server: app.ControlServer, key: MachinePrivate) -> None:
        self.state = state
        self.server = server
        self.key = key
        self.clients: list[ControlTestClient] = []

    def auth_key(self, **kw: Any) -> str:
        return self.state.create_preauth_key(self.state.default_user(), **kw).key

    async def client(self, machine: MachinePrivate | None = None) -> ControlTestClient:
        c = await ControlTestClient.connect("127.0.0.1", self.server.port, self.key.public(), machine)
        self.clients.append(c)
        return c


@contextlib.asynccontextmanager
async def tailnet(**kw: Any) -> AsyncIterator[Tailnet]:
    state = State(":memory:", ephemeral_timeout_ms=kw.pop("ephemeral_timeout_ms", 30 * 60_000))
    cfg = ServeConfig(listen_host="127.0.0.1", listen_port=0, derp_map=DERP_MAP, dns=["1.1.1.1"])
    for k in list(kw):
        if hasattr(cfg, k):
            setattr(cfg, k, kw.pop(k))
    key = MachinePrivate.generate(os.urandom)
    server = await app.start(state, key, cfg, offline_grace_s=kw.pop("offline_grace_s", 0), housekeeping=True)
    net = Tailnet(state, server, key)
    try:
        yield net
    finally:
        for c in net.clients:
            await c.close()
        await server.close()
        state.close()


def run_async(coro: Any) -> None:
    """Runs a test body with a 30 s limit."""
    asyncio.run(asyncio.wait_for(coro, 30))
