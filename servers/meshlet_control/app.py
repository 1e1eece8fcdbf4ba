"""The control server's protocol side put together: listener, Noise, register, map.

    TCP (or TLS) ──http.HttpConnection── GET /key, /health
                        │ POST /ts2021 (101 + Noise handshake + early payload)
                        ▼
               noise.NoiseSession (HTTP/2 inside Noise)
                 ├── /machine/register ──> register.Registrar ──> State.register
                 └── /machine/map      ──> poll.Poller ──> State.update_from_map_request
                                              └── poll.PollHub <── State.subscribe (changes)
                                                     └── mapper (pure): MapResponse dicts

`meshlet-control serve` (cli.py) calls `run(state, control_key, config)`
next to its own housekeeping (State.refresh/tick once a second) and the
embedded DERP relay, which `config.derp_map` points at. Tests call
`start(..., housekeeping=True)` and use the returned server's `port` and
`close()`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any, Callable

from meshlet.control import base
from meshlet.key import MachinePrivate

from . import mapper
from .http import HttpConnection
from .noise import NoiseSession, Request, Response
from .poll import DEFAULT_KEEPALIVE_S, DEFAULT_OFFLINE_GRACE_S, PollHub, Poller
from .register import Registrar

if TYPE_CHECKING:
    from .config import ServeConfig
    from .state import State

log = logging.getLogger("meshlet_control.app")

# --- implementation constants ------------------------------------------------------

TCP_USER_TIMEOUT_S = 30  # unacknowledged data this old kills the connection: a vanished client goes offline
TCP_KEEPIDLE_S = 30
HOUSEKEEPING_S = 1.0  # State.refresh/tick period: admin commands show up within a second


def _wall_ms() -> int:
    return int(time.time() * 1000)


class ControlServer:
    """The listener and everything behind it.

    Args:
        state: the tailnet's State.
        control_key: the server's Noise static key (GET /key serves its public half).
        config: ServeConfig; read here: listen_host, listen_port, base_domain,
            derp_map, dns, magic_dns, tls_cert, tls_key, map_keepalive_s (the
            ephemeral timeout and key expiry are the State's own settings).
        now_ms: the clock; wall time by default.
        offline_grace_s: how long a node stays online after its poll closed.
        housekeeping: also call State.refresh() and State.tick() once a second
            (`meshlet-control serve` does that itself; tests want it here).
    """

    def __init__(
        self,
        state: State,
        control_key: MachinePrivate,
        config: ServeConfig,
        now_ms: Callable[[], int] = _wall_ms,
        offline_grace_s: float = DEFAULT_OFFLINE_GRACE_S,
        housekeeping: bool = False,
    ) -> None:
        self.state = state
        self.housekeeping = housekeeping
        self.control_key = control_key
        self.config = config
        cfg = mapper.MapperConfig(
            base_domain=config.base_domain,
            derp_map=config.derp_map or None,
            nameservers=list(config.dns or ()),
            magic_dns=config.magic_dns,
        )
        keepalive = float(config.map_keepalive_s or DEFAULT_KEEPALIVE_S)
        self.hub = PollHub(state, cfg, now_ms, keepalive, offline_grace_s)
        self.registrar = Registrar(state, now_ms)
        self.poller = Poller(self.hub)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.host = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Binds the listener; raises OSError if the address is taken."""
        ctx = _ssl_context(self.config)
        self.server = await asyncio.start_server(
            self._accept,
            self.config.listen_host or None,
            self.config.listen_port,
            ssl=ctx,
            reuse_address=True,
            backlog=1024,
        )
        addr = self.server.sockets[0].getsockname()
        self.host, self.port = str(addr[0]), int(addr[1])
        log.info(
            "control: serving %s on %s:%d, key %s",
            "https" if ctx else "http",
            self.host,
            self.port,
            self.control_key.public().to_text(),
        )
        if self.housekeeping:
            self._housekeeping = asyncio.create_task(self._tick_loop())

    async def _tick_loop(self) -> None:
        """About once a second: admin commands' commits (State.refresh), ephemeral clean-up and
        key expiry (State.tick); both announce their changes, which the hub pushes."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                self.state.refresh()
                self.state.tick()
            except Exception:  # a database hiccup must not end the server
                log.exception("control: housekeeping failed")

    async def close(self) -> None:
        """Stops listening and ends every connection and long poll."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self.server is not None:
            self.server.close()
        self.hub.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            _tune_socket(writer)
            await HttpConnection(reader, writer, self.control_key, self._upgraded).run()
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._tasks.discard(task)

    async def _upgraded(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: base.Conn, early: bytes
    ) -> None:
        await NoiseSession(reader, writer, conn, self.route).run(early)

    async def route(self, req: Request, resp: Response) -> None:
        """Dispatches one request from the Noise channel."""
        if req.path == "/machine/map":
            await self.poller.handle(req, resp)
        elif req.path == "/machine/register":
            await self.registrar.handle(req, resp)
        else:
            log.debug("control: %s %s from %s: not served", req.method, req.path, req.machine_key.short())
            await resp.respond(404, b"not found\n", "text/plain")


async def start(
    state: State, control_key: MachinePrivate, config: ServeConfig, **kwargs: Any
) -> ControlServer:
    """A started ControlServer (see its Args for kwargs)."""
    server = ControlServer(state, control_key, config, **kwargs)
    await server.start()
    return server


async def run(state: State, control_key: MachinePrivate, config: ServeConfig) -> None:
    """Serves until cancelled."""
    server = await start(state, control_key, config)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


def _ssl_context(config: ServeConfig) -> ssl.SSLContext | None:
    cert, key = config.tls_cert, config.tls_key
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key or None)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, TCP_KEEPIDLE_S)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_S * 1000)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
