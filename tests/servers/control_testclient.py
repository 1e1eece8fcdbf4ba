"""A small TS2021 client for the control server's tests: the agent's ControlConn plus raw tailcfg helpers.

The wire work (shared/protocol/control.md §4-§7: POST /ts2021 with the
handshake header, the 51-byte response, the early payload, HTTP/2 inside
Noise records, map framing as LE length + zstd) lives once, in
meshlet_agent.controlconn and .controlclient. This module adds what the server's tests need
on top: raw dict requests (`request`, `register`, `lite_update`), `open_map`
returning undecoded MapResponse dicts, and access to the h2 connection for
malformed traffic.
`tailnet()` runs a ControlServer over a State in ":memory:" on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any, AsyncIterator

from meshlet.key import DiscoPrivate, MachinePrivate, MachinePublic, NodePrivate
from meshlet_agent import controlclient, controlconn
from meshlet_control import app
from meshlet_control.config import ServeConfig
from meshlet_control.state import State


async def get_key(host: str, port: int, path: str = "/key?v=130") -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET; returns (status, body). Raw on purpose: tests send odd paths."""
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


class MapStream(controlclient.MapStream):
    """The body of a long poll, message by message, with a test-sized default timeout."""

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        """The next MapResponse (keep-alives included); EOFError when the stream or connection ended."""
        try:
            return await super().next(timeout)
        except controlclient.ControlError as e:
            if self.stream.error is not None and not isinstance(
                self.stream.error, controlclient.ControlError
            ):
                raise EOFError("connection closed") from e
            raise

    async def next_non_keepalive(self, timeout: float = 10) -> dict[str, Any]:
        return await super().next_non_keepalive(timeout)


class ControlTestClient(controlclient.ControlConn):
    """One machine's Noise connection to the server (the agent's ControlConn), plus tailcfg helpers."""

    def __init__(self, machine: MachinePrivate) -> None:
        super().__init__(machine)
        self.node = NodePrivate.generate(os.urandom)
        self.disco = DiscoPrivate.generate(os.urandom)

    @classmethod
    async def connect(
        cls, host: str, port: int, control: MachinePublic, machine: MachinePrivate | None = None
    ) -> ControlTestClient:
        self = cls(machine or MachinePrivate.generate(os.urandom))
        await self.open(host, port, control)
        return self

    async def request(  # type: ignore[override]
        self, path: str, doc: dict[str, Any] | bytes, timeout: float = 10
    ) -> tuple[int, bytes]:
        """One request; returns (status, whole body)."""
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return await super().request(path, body, timeout=timeout)

    def register_request(self, auth_key: str | None, hostname: str, **extra: Any) -> dict[str, Any]:
        hostinfo = {"Hostname": hostname, "OS": "linux", "IPNVersion": "1.90.9-test"}
        doc = controlclient.register_request(self.node, auth_key, hostinfo)
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
        doc = controlclient.map_request(
            self.node, self.disco.public(), stream, endpoints, {"Hostname": "x"}, derp
        )
        doc.update(extra)
        return doc

    async def open_map(self, endpoints: list[str], derp: int = 900, **extra: Any) -> MapStream:
        body = json.dumps(self.map_request(True, endpoints, derp, **extra)).encode()
        return MapStream(self, await self.open_stream("/machine/map", body))

    async def lite_update(self, endpoints: list[str], derp: int = 900) -> tuple[int, bytes]:
        return await self.request("/machine/map", self.map_request(False, endpoints, derp))

    def cancel(self, stream: MapStream | controlconn.ResponseStream) -> None:  # type: ignore[override]
        super().cancel(stream.stream if isinstance(stream, MapStream) else stream)


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
