"""The TS2021 connection to a control server: GET /key, the Noise upgrade, HTTP/2 inside.

The asyncio shell around the core's controlbase (`meshlet.control.base`,
shared/protocol/control.md §4-§5); h2 (sans-I/O) speaks the HTTP/2 inside
the Noise records. It knows requests and response streams, not what they
mean: that is controlclient's.

    fetch_server_key(host, port)  GET /key?v=130 -> the server's Noise key ("publicKey", §4)
    ControlConn.dial(...)         POST /ts2021, Upgrade: tailscale-control-protocol,
                                  X-Tailscale-Handshake: <base64 initiation> -> 101 (§5.2);
                                  the 51-byte Noise response, optional early payload, then
                                  HTTP/2 with prior knowledge inside Noise records (§5.3-§5.6)
    conn.request(path, body)      one POST, the whole answer
    conn.open_stream(path, body)  one POST, its answer as it arrives (the long poll)

One TCP connection carries every request (`MaxConnsPerHost: 1` in
Tailscale). Nothing here retries or redials. Failures are `ControlError`
(transport, HTTP status, a server that answers nonsense).
"""

import asyncio
import json
import logging
import os
import ssl as _ssl
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from meshlet.control import base
from meshlet.control.requests import CAPABILITY_VERSION
from meshlet.errors import RemoteProtocolError
from meshlet.key import MachinePrivate, MachinePublic

log = logging.getLogger("meshlet_agent.control")

# --- specification constants (control.md §4, §5) ---------------------------------

UPGRADE_PROTOCOL = "tailscale-control-protocol"
MAX_KEY_BYTES = 64 << 10  # the client reads at most 64 KiB of /key
MAX_REGISTER_BYTES = 1 << 20  # and at most 1 MiB of a RegisterResponse

# --- implementation constants --------------------------------------------------------

CONNECT_TIMEOUT_S = 15.0  # TCP + upgrade + Noise response
REQUEST_TIMEOUT_S = 30.0  # register and lite updates
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


class ResponseStream:
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
        self.streams: dict[int, ResponseStream] = {}
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

    async def open_stream(self, path: str, body: bytes) -> ResponseStream:
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
        s = self.streams[sid] = ResponseStream(sid)
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

    def cancel(self, stream: ResponseStream) -> None:
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
