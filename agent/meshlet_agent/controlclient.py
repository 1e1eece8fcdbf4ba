"""The agent's control client: register with a control server and follow its map stream.

The asyncio shell around the core's TS2021 pieces (shared/protocol/control.md
§3-§7): `meshlet.control.base` does the Noise handshake and records,
`meshlet.control.netmap` merges MapResponses; h2 (sans-I/O) speaks the
HTTP/2 inside the records, zstandard unpacks the map messages.

    ControlClient.connect()
      GET /key?v=130            -> the server's Noise key ("publicKey", §4)
      POST /ts2021, Upgrade: tailscale-control-protocol,
           X-Tailscale-Handshake: <base64 initiation>   -> 101 (§5.2)
      51-byte Noise response, optional early payload, then HTTP/2 with
           prior knowledge inside Noise records (§5.3-§5.6)
    register(auth_key, hostinfo, ephemeral)  POST /machine/register   (§6)
    stream_map(endpoints, ...)               POST /machine/map, Stream:true (§7):
           4b little-endian length + one zstd frame of JSON, per message;
           each non-keep-alive message is applied to a NetMap, which is yielded
    lite_update(endpoints, ...)              POST /machine/map, Stream:false, OmitPeers (§7.2)

One TCP connection carries every request (`MaxConnsPerHost: 1` in
Tailscale). This module neither retries nor redials: errors reach the
caller, who owns the backoff. Failures are `ControlError` (transport,
HTTP status, a server that answers nonsense) or the core's
`RemoteProtocolError` (a map message that does not parse). A refused
registration is not an exception: `RegisterResult.error` carries the
server's text for the user.
"""

import asyncio
import json
import logging
import os
import ssl as _ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import zstandard

from meshlet.control import base, netmap
from meshlet.errors import RemoteProtocolError
from meshlet.key import DiscoPublic, MachinePrivate, MachinePublic, NodePrivate, NodePublic

log = logging.getLogger("meshlet_agent.control")

# --- specification constants (control.md §4, §6, §7) ---------------------------------

CAPABILITY_VERSION = base.PROTOCOL_VERSION  # 130, Tailscale v1.90
UPGRADE_PROTOCOL = "tailscale-control-protocol"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time.Time: no expiry requested
LOGOUT_TIME = (
    "1970-01-01T00:02:03Z"  # `tailscale logout` asks for Expiry = Unix 123: a time in the past (§6.1)
)
MAX_KEY_BYTES = 64 << 10  # the client reads at most 64 KiB of /key
MAX_REGISTER_BYTES = 1 << 20  # and at most 1 MiB of a RegisterResponse
MAP_WATCHDOG_S = 120.0  # the client kills a long poll silent for this long
ENDPOINT_TYPE_LOCAL = 1  # tailcfg.EndpointType: 1 local, 2 STUN, ...

# --- implementation constants --------------------------------------------------------

CONNECT_TIMEOUT_S = 15.0  # TCP + upgrade + Noise response
REQUEST_TIMEOUT_S = 30.0  # register and lite updates
FOLLOWUP_TIMEOUT_S = 150.0  # a Followup register is held until the login completes (meshlet-control: 60 s)
MAX_MAP_MESSAGE_BYTES = 16 << 20  # testcontrol's cap on one compressed message
MAX_MAP_JSON_BYTES = 64 << 20  # a 10k-peer full map is a few MB of JSON; far below this
READ_CHUNK = 65536


class ControlError(Exception):
    """The control server could not be reached, or answered something unusable.

    Attributes:
        status: the HTTP status when the server answered one other than 200
            (401: unknown node key, 403: node not authorized), else 0.
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _zero_node_key() -> str:
    return "nodekey:" + "0" * 64


async def _read_http_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise ControlError("control: HTTP response head too large") from None
    except asyncio.IncompleteReadError:
        raise ControlError("control: connection closed before the HTTP response") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ControlError("control: not an HTTP response: %r" % lines[0][:80])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def fetch_server_key(
    host: str,
    port: int,
    *,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = CONNECT_TIMEOUT_S,
) -> MachinePublic:
    """`GET /key?v=130` (control.md §4): the server's Noise static key.

    Raises:
        ControlError: unreachable, a status other than 200, no usable `publicKey`.
    """

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl, server_hostname=server_hostname if ssl else None
        )
        try:
            writer.write(
                b"GET /key?v=%d HTTP/1.1\r\nHost: %s\r\nUser-Agent: meshlet\r\nConnection: close\r\n\r\n"
                % (CAPABILITY_VERSION, (server_hostname or host).encode())
            )
            status, headers = await _read_http_head(reader)
            if status != 200:
                raise ControlError("control: GET /key answered HTTP %d" % status)
            length = headers.get("content-length")
            if length is not None and length.isdigit():
                if int(length) > MAX_KEY_BYTES:
                    raise ControlError("control: /key body too large")
                return await reader.readexactly(int(length))
            return await reader.read(MAX_KEY_BYTES)
        finally:
            writer.close()

    try:
        body = await asyncio.wait_for(fetch(), timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
        raise ControlError("control: GET /key from %s:%d failed: %s" % (host, port, e or type(e).__name__))
    try:
        doc = json.loads(body)
        key = MachinePublic.from_text(doc["publicKey"])
    except (ValueError, KeyError, TypeError, RemoteProtocolError):
        raise ControlError("control: /key has no usable publicKey") from None
    if key.is_zero():
        raise ControlError("control server is too old; no noise key")
    return key


class _Stream:
    """One HTTP/2 request's response as it arrives."""

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.status = 0
        self.body = bytearray()
        self.ended = False
        self.error: BaseException | None = None
        self.changed = asyncio.Event()

    def wake(self) -> None:
        self.changed.set()

    async def wait(self) -> None:
        """Until something new arrived; raises the connection's error if it died."""
        await self.changed.wait()
        self.changed.clear()


class ControlConn:
    """One Noise connection to control with HTTP/2 inside: requests and response streams.

    Subclassed by the control server's test client, which reaches into `h2`,
    `_events` and `_flush` to send malformed traffic.
    """

    def __init__(self, machine: MachinePrivate) -> None:
        self.machine = machine
        self.early: dict[str, Any] | None = None  # the server's early payload, if any (§5.5)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.streams: dict[int, _Stream] = {}
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.conn: base.Conn
        self._task: asyncio.Task[None] | None = None
        self._window = asyncio.Event()
        self._closed: BaseException | None = None

    @classmethod
    async def dial(
        cls, host: str, port: int, machine: MachinePrivate, control: MachinePublic, **kw: Any
    ) -> "ControlConn":
        """A connected ControlConn (see `open` for kw)."""
        self = cls(machine)
        await self.open(host, port, control, **kw)
        return self

    async def open(
        self,
        host: str,
        port: int,
        control: MachinePublic,
        *,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        """Dials, upgrades, does the Noise handshake and starts HTTP/2.

        Raises:
            ControlError: any failure before HTTP/2 is up (the socket is closed).
        """
        try:
            await asyncio.wait_for(
                self._open(host, port, control, ssl, server_hostname, random_bytes), timeout
            )
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, RemoteProtocolError) as e:
            if hasattr(self, "writer"):
                self.writer.close()
            raise ControlError("control: /ts2021 to %s:%d failed: %r" % (host, port, e)) from None
        except ControlError:
            if hasattr(self, "writer"):
                self.writer.close()
            raise

    async def _open(
        self,
        host: str,
        port: int,
        control: MachinePublic,
        ssl: _ssl.SSLContext | None,
        server_hostname: str | None,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        hs = base.ClientHandshake(self.machine, control, MachinePrivate.generate(random_bytes))
        self.reader, self.writer = await asyncio.open_connection(
            host, port, ssl=ssl, server_hostname=server_hostname if ssl else None
        )
        self.writer.write(
            b"POST /ts2021 HTTP/1.1\r\nHost: %s\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 0\r\n"
            b"Connection: upgrade\r\nUpgrade: %s\r\n%s: %s\r\n\r\n"
            % (
                (server_hostname or host).encode(),
                UPGRADE_PROTOCOL.encode(),
                base.HANDSHAKE_HEADER.encode(),
                hs.initiation_header().encode(),
            )
        )
        status, headers = await _read_http_head(self.reader)
        if status != 101 or headers.get("upgrade", "").lower() != UPGRADE_PROTOCOL:
            raise ControlError("control: /ts2021 answered HTTP %d, not the upgrade" % status)
        conn = hs.receive_response(await self.reader.readexactly(base.RESPONSE_LEN))
        if conn is None:
            raise ControlError("control: the server refused the Noise handshake")
        self.conn = conn
        first = b""
        while True:  # the early payload, then HTTP/2 (§5.5)
            split = base.split_early_payload(first)
            if split is not None:
                payload, rest = split
                break
            data = await self.reader.read(READ_CHUNK)
            if not data:
                raise ControlError("control: connection closed before HTTP/2 started")
            conn.receive_data(data)
            first += conn.read()
        if payload is not None:
            try:
                early = json.loads(payload)
            except ValueError:
                raise ControlError("control: early payload is not JSON") from None
            self.early = early if isinstance(early, dict) else None
        self.h2.initiate_connection()
        self._flush()
        if rest:
            self._events(self.h2.receive_data(rest))
            self._flush()
        self._task = asyncio.create_task(self._read_loop())

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(self.conn.send(data))

    async def _read_loop(self) -> None:
        err: BaseException = EOFError("control connection closed")
        try:
            while True:
                data = await self.reader.read(READ_CHUNK)
                self.conn.receive_data(data)
                if not data:
                    break
                plain = self.conn.read()
                if plain:
                    self._events(self.h2.receive_data(plain))
                    self._flush()
        except (OSError, RemoteProtocolError, h2.exceptions.ProtocolError) as e:
            err = e
            log.info("control: connection lost: %r", e)
        finally:
            self._closed = err
            self._window.set()
            for s in self.streams.values():
                if not s.ended and s.error is None:
                    s.error = err
                s.wake()

    def _events(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            s = self.streams.get(sid) if isinstance(sid, int) else None
            if isinstance(ev, h2.events.ResponseReceived) and s is not None:
                for name, value in ev.headers or []:
                    if name in (":status", b":status"):
                        s.status = int(value)
                s.wake()
            elif isinstance(ev, h2.events.DataReceived):
                if sid:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                if s is not None:
                    s.body.extend(ev.data or b"")
                    s.wake()
            elif isinstance(ev, h2.events.StreamEnded) and s is not None:
                s.ended = True
                s.wake()
            elif isinstance(ev, h2.events.StreamReset) and s is not None:
                s.ended = True
                s.error = ControlError("control: stream reset by the server (code %s)" % ev.error_code)
                s.wake()
            elif isinstance(ev, h2.events.WindowUpdated):
                self._window.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._closed = ControlError("control: GOAWAY (code %s)" % ev.error_code)

    async def _send_body(self, sid: int, body: bytes) -> None:
        """Sends `body` within HTTP/2 flow control, then ends the stream."""
        view = memoryview(body)
        while True:
            if self._closed is not None:
                raise ControlError("control: connection closed: %r" % self._closed)
            n = min(len(view), self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if n < len(view) and n <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            self.h2.send_data(sid, bytes(view[:n]), end_stream=n == len(view))
            self._flush()
            view = view[n:]
            if not view:
                return

    async def open_stream(self, path: str, body: bytes) -> _Stream:
        """Starts `POST path` with `body`; the response arrives on the returned stream."""
        if self._closed is not None:
            raise ControlError("control: connection closed: %r" % self._closed)
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
        s = self.streams[sid] = _Stream(sid)
        await self._send_body(sid, body)
        return s

    async def request(
        self, path: str, body: bytes, *, limit: int = MAX_REGISTER_BYTES, timeout: float = REQUEST_TIMEOUT_S
    ) -> tuple[int, bytes]:
        """One POST; returns (status, whole body).

        Raises:
            ControlError: connection lost, stream reset, body over `limit`, timeout.
        """

        async def run() -> tuple[int, bytes]:
            s = await self.open_stream(path, body)
            try:
                while not s.ended:
                    if s.error is not None:
                        raise ControlError("control: %s: %r" % (path, s.error))
                    if len(s.body) > limit:
                        self.cancel(s)
                        raise ControlError("control: %s: response over %d bytes" % (path, limit))
                    await s.wait()
                if s.error is not None:
                    raise ControlError("control: %s: %r" % (path, s.error))
                return s.status, bytes(s.body)
            finally:
                self.streams.pop(s.stream_id, None)

        try:
            return await asyncio.wait_for(run(), timeout)
        except asyncio.TimeoutError:
            raise ControlError("control: %s timed out" % path) from None

    def cancel(self, stream: _Stream) -> None:
        """Resets a stream (ends a long poll)."""
        self.streams.pop(stream.stream_id, None)
        if self._closed is None and not stream.ended:
            try:
                self.h2.reset_stream(stream.stream_id)
                self._flush()
            except h2.exceptions.ProtocolError:
                pass

    async def close(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass


class MapStream:
    """A long poll's body, one decoded MapResponse at a time (control.md §7.3).

    4b  length N, little-endian
    Nb  one zstd frame; decompressed, one JSON MapResponse
    """

    def __init__(self, conn: ControlConn, stream: _Stream) -> None:
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


def register_request(
    node: NodePrivate,
    auth_key: str | None,
    hostinfo: dict[str, Any],
    ephemeral: bool = False,
    *,
    old_node_key: NodePublic | None = None,
    expiry: str = ZERO_TIME,
    followup: str = "",
) -> dict[str, Any]:
    """A tailcfg.RegisterRequest as tsnet 1.90 sends it (control.md §6.1, §14).

    Args:
        old_node_key: the key this one replaces (key renewal, re-authentication).
        expiry: the requested key expiry, RFC 3339; LOGOUT_TIME (in the past) logs out.
        followup: the AuthURL of an earlier answer: wait for the interactive login.
    """
    doc: dict[str, Any] = {
        "Version": CAPABILITY_VERSION,
        "NodeKey": node.public().to_text(),
        "OldNodeKey": old_node_key.to_text() if old_node_key is not None else _zero_node_key(),
        "Expiry": expiry,
        "Followup": followup,
        "Hostinfo": hostinfo,
    }
    if auth_key is not None:
        doc["Auth"] = {"AuthKey": auth_key}
    if ephemeral:
        doc["Ephemeral"] = True
    return doc


def map_request(
    node: NodePrivate,
    disco: DiscoPublic,
    stream: bool,
    endpoints: list[str],
    hostinfo: dict[str, Any],
    home_derp: int = 0,
    endpoint_types: list[int] | None = None,
) -> dict[str, Any]:
    """A tailcfg.MapRequest: the long poll (stream) or a lite update (control.md §7.1, §7.2)."""
    hi = dict(hostinfo)
    if home_derp:
        net_info = dict(hi.get("NetInfo") or {})
        net_info["PreferredDERP"] = home_derp
        hi["NetInfo"] = net_info
    return {
        "Version": CAPABILITY_VERSION,
        "Compress": "zstd",
        "KeepAlive": True,
        "NodeKey": node.public().to_text(),
        "DiscoKey": disco.to_text(),
        "Stream": stream,
        "OmitPeers": not stream,
        "Hostinfo": hi,
        "Endpoints": list(endpoints),
        "EndpointTypes": list(endpoint_types or [ENDPOINT_TYPE_LOCAL] * len(endpoints)),
    }


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
