"""The agent's control client: register with a control server and follow its map stream.

One node's requests to control (shared/protocol/control.md §6-§7), over a
`controlconn.ControlConn` (the TS2021 connection); the request documents
come from the core (`meshlet.control.requests`), `meshlet.control.netmap`
merges MapResponses, zstandard unpacks the map messages.

    ControlClient.connect()                  GET /key if needed, then the TS2021 connection
    register(auth_key, hostinfo, ephemeral)  POST /machine/register   (§6)
    stream_map(endpoints, ...)               POST /machine/map, Stream:true (§7):
           4b little-endian length + one zstd frame of JSON, per message;
           each non-keep-alive message is applied to a NetMap, which is yielded
    lite_update(endpoints, ...)              POST /machine/map, Stream:false, OmitPeers (§7.2)

This module neither retries nor redials: errors reach the caller, who owns
the backoff. Failures are `ControlError` (transport, HTTP status, a server
that answers nonsense) or the core's `RemoteProtocolError` (a map message
that does not parse). A refused registration is not an exception:
`RegisterResult.error` carries the server's text for the user.
"""

import asyncio
import json
import logging
import ssl as _ssl
from collections.abc import AsyncIterator
from typing import Any

import zstandard

from meshlet.control import netmap
from meshlet.control.requests import LOGOUT_TIME, ZERO_TIME, map_request, register_request
from meshlet.errors import RemoteProtocolError
from meshlet.key import DiscoPublic, MachinePrivate, MachinePublic, NodePrivate, NodePublic

from .controlconn import (
    READ_CHUNK,
    REQUEST_TIMEOUT_S,
    ControlConn,
    ControlError,
    ResponseStream,
    fetch_server_key,
)

# What callers import from here, the connection's and the core's names included.
__all__ = [
    "LOGOUT_TIME",
    "MAP_WATCHDOG_S",
    "ZERO_TIME",
    "ControlClient",
    "ControlConn",
    "ControlError",
    "MapStream",
    "RegisterResult",
    "fetch_server_key",
    "map_request",
    "register_request",
]

log = logging.getLogger("meshlet_agent.control")

# --- specification constants (control.md §7) -----------------------------------------

MAP_WATCHDOG_S = 120.0  # the client kills a long poll silent for this long

# --- implementation constants --------------------------------------------------------

FOLLOWUP_TIMEOUT_S = 150.0  # a Followup register is held until the login completes (meshlet-control: 60 s)
MAX_MAP_MESSAGE_BYTES = 16 << 20  # testcontrol's cap on one compressed message
MAX_MAP_JSON_BYTES = 64 << 20  # a 10k-peer full map is a few MB of JSON; far below this


class MapStream:
    """A long poll's body, one decoded MapResponse at a time (control.md §7.3).

    4b  length N, little-endian
    Nb  one zstd frame; decompressed, one JSON MapResponse
    """

    def __init__(self, conn: ControlConn, stream: ResponseStream) -> None:
        self.conn = conn
        self.stream = stream
        self._dctx = zstandard.ZstdDecompressor()

    @property
    def status(self) -> int:
        return self.stream.status

    @property
    def stream_id(self) -> int:
        return self.stream.stream_id

    @property
    def ended(self) -> bool:
        """The server ended or reset the stream, or the connection died."""
        return self.stream.ended or self.stream.error is not None

    def _take_message(self) -> dict[str, Any] | None:
        buf = self.stream.body
        if len(buf) < 4:
            return None
        n = int.from_bytes(buf[:4], "little")
        if n > MAX_MAP_MESSAGE_BYTES:
            raise RemoteProtocolError("frame_too_large", "map message of %d bytes" % n)
        if len(buf) < 4 + n:
            return None
        frame = bytes(buf[4 : 4 + n])
        del buf[: 4 + n]
        plain = bytearray()
        try:  # bounded: a small frame may claim or inflate to gigabytes
            with self._dctx.stream_reader(frame, read_across_frames=True) as reader:
                while True:
                    chunk = reader.read(READ_CHUNK)
                    if not chunk:
                        break
                    plain += chunk
                    if len(plain) > MAX_MAP_JSON_BYTES:
                        raise RemoteProtocolError("frame_too_large", "map JSON over the limit")
        except zstandard.ZstdError as e:
            raise RemoteProtocolError("bad_zstd", str(e)) from None
        return netmap.decode(bytes(plain))

    async def next(self, timeout: float = MAP_WATCHDOG_S) -> dict[str, Any]:
        """The next MapResponse, keep-alives included.

        Raises:
            EOFError: the stream ended cleanly.
            ControlError: non-200 status, reset, connection lost, or `timeout` of silence.
            RemoteProtocolError: a message that does not unframe, unpack or parse.
        """

        async def wait() -> dict[str, Any]:
            s = self.stream
            while True:
                if s.status and s.status != 200:
                    detail = bytes(s.body[:200]).decode("utf-8", "replace").strip() if s.ended else ""
                    if not s.ended and s.error is None:
                        await s.wait()  # the body names the problem; it follows the headers at once
                        continue
                    raise ControlError(
                        "control: map answered HTTP %d%s" % (s.status, ": " + detail if detail else ""),
                        s.status,
                    )
                msg = self._take_message()
                if msg is not None:
                    return msg
                if s.error is not None:
                    raise ControlError("control: map stream failed: %r" % s.error)
                if s.ended:
                    raise EOFError("map stream ended")
                await s.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise ControlError("control: map stream silent for %.0f s" % timeout) from None

    async def next_non_keepalive(self, timeout: float = MAP_WATCHDOG_S) -> dict[str, Any]:
        while True:
            msg = await self.next(timeout)
            if not netmap.is_keepalive(msg):
                return msg


class RegisterResult:
    """What `POST /machine/register` answered (control.md §6.2)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.raw = doc
        self.error = str(doc.get("Error") or "")  # non-empty: refused; show it to the user
        self.machine_authorized = doc.get("MachineAuthorized") is True
        self.node_key_expired = doc.get("NodeKeyExpired") is True
        self.auth_url = str(doc.get("AuthURL") or "")  # non-empty: interactive login needed
        user, login = doc.get("User"), doc.get("Login")
        self.user: dict[str, Any] = user if isinstance(user, dict) else {}
        self.login: dict[str, Any] = login if isinstance(login, dict) else {}

    @property
    def ok(self) -> bool:
        """Registered and usable: no error, no login URL pending, machine authorized."""
        return not self.error and not self.auth_url and self.machine_authorized and not self.node_key_expired

    def __repr__(self) -> str:
        return "RegisterResult(ok=%s error=%r auth_url=%r)" % (self.ok, self.error, self.auth_url)


class ControlClient:
    """One node's session with control: register, follow the map, report changes.

    Args:
        host, port: where the control server listens.
        machine: this machine's key (the Noise static key).
        node: this node's key (registered; WireGuard and DERP identity).
        disco: this node's disco public key (new at every start).
        server_key: the control server's Noise key; fetched from /key when None.
        ssl, server_hostname: for a TLS control URL.
    """

    def __init__(
        self,
        host: str,
        port: int,
        machine: MachinePrivate,
        node: NodePrivate,
        disco: DiscoPublic,
        *,
        server_key: MachinePublic | None = None,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.machine = machine
        self.node = node
        self.disco = disco
        self.server_key = server_key
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.hostinfo: dict[str, Any] = {}
        self.conn: ControlConn | None = None

    async def connect(self) -> ControlConn:
        """The connection, dialled (and the server key fetched) if there is none or it died."""
        if self.conn is not None and self.conn._closed is None:
            return self.conn
        if self.conn is not None:
            await self.conn.close()
            self.conn = None
        if self.server_key is None:
            self.server_key = await fetch_server_key(
                self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname
            )
        self.conn = await ControlConn.dial(
            self.host,
            self.port,
            self.machine,
            self.server_key,
            ssl=self.ssl,
            server_hostname=self.server_hostname,
        )
        return self.conn

    async def register(
        self,
        auth_key: str | None,
        hostinfo: dict[str, Any],
        ephemeral: bool = False,
        *,
        old_node_key: NodePublic | None = None,
        expiry: str = ZERO_TIME,
        followup: str = "",
    ) -> RegisterResult:
        """`POST /machine/register` (control.md §6): a pre-auth key, an interactive login, a
        Followup on one, a key renewal (`old_node_key`) or a logout (`expiry=LOGOUT_TIME`).

        Returns the result even when the server refused (`result.error`).

        Raises:
            ControlError: transport failure, HTTP status other than 200, a body that is not JSON.
        """
        self.hostinfo = dict(hostinfo)
        conn = await self.connect()
        request = register_request(
            self.node,
            auth_key,
            hostinfo,
            ephemeral,
            old_node_key=old_node_key,
            expiry=expiry,
            followup=followup,
        )
        timeout = FOLLOWUP_TIMEOUT_S if followup else REQUEST_TIMEOUT_S
        status, answer = await conn.request(
            "/machine/register", json.dumps(request).encode(), timeout=timeout
        )
        if status != 200:
            raise ControlError(
                "control: register answered HTTP %d: %s" % (status, answer[:200].decode("latin-1")), status
            )
        try:
            doc = json.loads(answer)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ControlError("control: register answer is not a JSON object")
        result = RegisterResult(doc)
        if result.error:
            log.warning("control: registration refused: %s", result.error)
        else:
            log.info(
                "control: registered %s, authorized=%s", self.node.public().short(), result.machine_authorized
            )
        return result

    async def open_map(
        self,
        endpoints: list[str],
        hostinfo: dict[str, Any] | None = None,
        home_derp: int = 0,
        endpoint_types: list[int] | None = None,
    ) -> MapStream:
        """Starts the long poll (`Stream: true`) and returns its raw message stream."""
        if hostinfo is not None:
            self.hostinfo = dict(hostinfo)
        conn = await self.connect()
        doc = map_request(self.node, self.disco, True, endpoints, self.hostinfo, home_derp, endpoint_types)
        return MapStream(conn, await conn.open_stream("/machine/map", json.dumps(doc).encode()))

    async def stream_map(
        self,
        endpoints: list[str],
        hostinfo: dict[str, Any] | None = None,
        home_derp: int = 0,
        endpoint_types: list[int] | None = None,
        watchdog_s: float = MAP_WATCHDOG_S,
    ) -> AsyncIterator[netmap.NetMap]:
        """The long poll as NetMaps: yields after every message that is not a bare keep-alive.

        The same NetMap object is yielded each time, updated in place; copy
        what must not change. Ends when the server ends the stream.

        Raises:
            ControlError: see `MapStream.next`; RemoteProtocolError: a bad message.
        """
        stream = await self.open_map(endpoints, hostinfo, home_derp, endpoint_types)
        nm = netmap.NetMap()
        try:
            while True:
                try:
                    msg = await stream.next(watchdog_s)
                except EOFError:
                    return
                if netmap.is_keepalive(msg):
                    continue
                nm.apply(msg)
                yield nm
        finally:
            stream.conn.cancel(stream.stream)

    async def lite_update(
        self,
        endpoints: list[str],
        disco_key: DiscoPublic | None = None,
        hostinfo: dict[str, Any] | None = None,
        home_derp: int = 0,
        endpoint_types: list[int] | None = None,
    ) -> None:
        """Reports new endpoints / disco key / Hostinfo / home DERP (`Stream: false, OmitPeers`).

        Raises:
            ControlError: transport failure or a status other than 200.
        """
        if disco_key is not None:
            self.disco = disco_key
        if hostinfo is not None:
            self.hostinfo = dict(hostinfo)
        conn = await self.connect()
        doc = map_request(self.node, self.disco, False, endpoints, self.hostinfo, home_derp, endpoint_types)
        status, _ = await conn.request("/machine/map", json.dumps(doc).encode(), limit=MAX_MAP_MESSAGE_BYTES)
        if status != 200:
            raise ControlError("control: lite update answered HTTP %d" % status, status)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None
