"""The Noise channel after `POST /ts2021`: HTTP/2 (h2, prior knowledge) inside TS2021 records.

Flow on one TCP connection (shared/protocol/control.md §5):

    client                                   server (this module + http.py)
    POST /ts2021, X-Tailscale-Handshake ->   meshlet.control.base.accept_initiation
                                        <-   101 Switching Protocols
                                        <-   51-byte Noise response
                                        <-   early payload record(s): ff ff ff 'T' 'S',
                                             4-byte BE length, {"nodeKeyChallenge":"chalpub:…"}
    HTTP/2 preface + SETTINGS           ->   records -> Conn.read -> h2 (server side)
    HEADERS+DATA /machine/register      ->   handler task  -> HEADERS+DATA, END_STREAM
    HEADERS+DATA /machine/map (stream)  ->   handler task  -> HEADERS, DATA… (stays open)
    HEADERS+DATA /machine/map (lite)    ->   handler task  -> HEADERS, END_STREAM

Every request is handed to the application's handler with the machine key
the Noise handshake proved (`Request.machine_key`); the handler must check
that the node key in the body belongs to it (§5.6). Streams are independent:
the long poll stays open while other requests come and go.

Limits: request bodies up to 4 MiB (a RegisterRequest or MapRequest is a few
KiB; Hostinfo is the big part), 100 concurrent streams (advertised in
SETTINGS), 64 KiB of plaintext taken from the socket per read. Responses
obey the client's flow-control windows: a writer whose window is empty
waits for WINDOW_UPDATE (Go's client opens 4 MiB per stream), then the
socket's own backpressure (drain). A connection with no open stream for
`idle_timeout_s` is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from meshlet.control import base
from meshlet.errors import ProtocolError
from meshlet.key import MachinePublic

log = logging.getLogger("meshlet_control.noise")

# --- implementation constants ------------------------------------------------------

MAX_BODY_BYTES = 4 << 20  # a request body; Tailscale's own server reads at most 1 MiB of register
MAX_CONCURRENT_STREAMS = 100  # h2's default SETTINGS; the long poll, lite updates and register need a handful
READ_CHUNK_BYTES = 64 << 10
WRITE_BUFFER_HIGH_BYTES = 256 << 10  # beyond this, writers wait for the socket instead of piling on
IDLE_TIMEOUT_S = 300.0  # no stream open for this long: the client went away without closing


class Request:
    """One complete request on the Noise channel.

    Attributes:
        method, path: from the pseudo-headers (path without the query).
        headers: the other headers, lower-case names; the first of repeats wins.
        body: the whole request body.
        machine_key: the client's machine key, proven by the Noise handshake.
        version: the protocol (capability) version of the handshake.
    """

    __slots__ = ("method", "path", "headers", "body", "machine_key", "version")

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        machine_key: MachinePublic,
        version: int,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.machine_key = machine_key
        self.version = version


class StreamClosed(Exception):
    """The client reset the stream or the connection went away; stop writing."""


class Response:
    """The answer side of one HTTP/2 stream, for handlers.

    Call `start` once, `write` any number of times, then `end`. Each call
    sends at once (the data is flushed to the socket); `write` waits for the
    client's flow-control window when it is empty.
    """

    def __init__(self, session: NoiseSession, stream_id: int) -> None:
        self._session = session
        self.stream_id = stream_id
        self.started = False
        self.ended = False
        self.closed = asyncio.Event()  # set when the stream is gone (reset, or connection closed)
        self._window = asyncio.Event()

    async def start(
        self, status: int, headers: list[tuple[str, str]] | None = None, end: bool = False
    ) -> None:
        """Sends the response headers; `end` finishes the stream at once (no body)."""
        self._check()
        s = self._session
        fields = [(":status", str(status))] + (headers or [])
        s.h2.send_headers(self.stream_id, fields, end_stream=end)
        self.started = True
        self.ended = end
        s.flush()

    async def write(self, data: bytes) -> None:
        """Sends body bytes, obeying flow control; raises StreamClosed if the stream died."""
        s = self._session
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            self._check()
            try:
                window = s.h2.local_flow_control_window(self.stream_id)
            except h2.exceptions.StreamClosedError:
                raise StreamClosed("stream %d closed" % self.stream_id) from None
            n = min(window, s.h2.max_outbound_frame_size, len(view) - pos)
            if n <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            s.h2.send_data(self.stream_id, bytes(view[pos : pos + n]))
            pos += n
            s.flush()
        await s.drain()

    def write_nowait(self, data: bytes) -> bool:
        """Sends `data` at once if the flow-control windows take all of it; False (nothing sent) if not.

        Also False when the socket's buffer is already over its high-water
        mark: the caller then queues and lets `write` wait for the drain.

        Raises:
            StreamClosed: the stream or the connection is gone.
        """
        self._check()
        s = self._session
        if s.write_buffer_full():
            return False
        try:
            window = s.h2.local_flow_control_window(self.stream_id)
        except h2.exceptions.StreamClosedError:
            raise StreamClosed("stream %d closed" % self.stream_id) from None
        if window < len(data):
            return False
        step = s.h2.max_outbound_frame_size
        for at in range(0, len(data), step):
            s.h2.send_data(self.stream_id, data[at : at + step])
        s.flush()
        return True

    async def end(self) -> None:
        """Finishes the stream (END_STREAM)."""
        if self.ended or self.closed.is_set():
            return
        self._session.h2.end_stream(self.stream_id)
        self.ended = True
        self._session.flush()

    async def respond(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        """A whole small response: headers, body, end."""
        headers = [("content-type", content_type), ("content-length", str(len(body)))]
        await self.start(status, headers, end=not body)
        if body:
            await self.write(body)
            await self.end()

    def window_opened(self) -> None:
        self._window.set()

    def close(self) -> None:
        self.closed.set()
        self._window.set()

    def _check(self) -> None:
        if self.closed.is_set() or self._session.closing:
            raise StreamClosed("stream %d closed" % self.stream_id)


Handler = Callable[[Request, Response], Awaitable[None]]


class _Incoming:
    __slots__ = ("headers", "body", "response", "task")

    def __init__(self, headers: dict[str, str], response: Response) -> None:
        self.headers = headers
        self.body = bytearray()
        self.response = response
        self.task: asyncio.Task[None] | None = None


class NoiseSession:
    """HTTP/2 server over one authenticated Noise connection.

    Args:
        reader, writer: the TCP connection after the 101 and the handshake response.
        conn: the server's meshlet.control.base.Conn.
        handler: called once per request, in its own task.
        idle_timeout_s: close when no stream has been open this long.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: base.Conn,
        handler: Handler,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.machine_key = conn.peer
        self.handler = handler
        self.idle_timeout_s = idle_timeout_s
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: dict[int, _Incoming] = {}
        self.closing = False
        self.peer = _peername(writer)

    def flush(self) -> None:
        """Seals whatever h2 has to send into Noise records and hands it to the socket."""
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(self.conn.send(data))

    def write_buffer_full(self) -> bool:
        """Whether the socket has more unsent bytes than its high-water mark."""
        transport = self.writer.transport
        if transport is None:
            return False
        return transport.get_write_buffer_size() > WRITE_BUFFER_HIGH_BYTES

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.closing = True
            raise StreamClosed("connection lost") from None

    async def run(self, early: bytes = b"") -> None:
        """Serves until the client goes away; `early` is sent sealed before anything else.

        Args:
            early: plaintext for the first records (the early payload), or b"".
        """
        self.h2.initiate_connection()
        out = self.conn.send(early) if early else b""
        self.writer.write(out + self.conn.send(self.h2.data_to_send()))
        try:
            await self._read_loop()
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
            log.debug("noise %s: connection lost: %s", self.peer, e)
        except ProtocolError as e:
            log.info("noise %s %s: closing: %s", self.peer, self.machine_key.short(), e)
        finally:
            await self._close()

    async def _read_loop(self) -> None:
        while not self.closing:
            timeout = None if self.streams else self.idle_timeout_s
            try:
                data = await asyncio.wait_for(self.reader.read(READ_CHUNK_BYTES), timeout)
            except asyncio.TimeoutError:
                log.debug("noise %s: idle for %.0f s, closing", self.peer, self.idle_timeout_s)
                return
            self.conn.receive_data(data)
            if not data:
                return
            plain = self.conn.read()
            if not plain:
                continue
            try:
                events = self.h2.receive_data(plain)
            except h2.exceptions.ProtocolError as e:
                log.info("noise %s: HTTP/2 error: %s", self.peer, e)
                self.flush()  # the GOAWAY
                return
            for ev in events:
                self._event(ev)
            self.flush()

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            assert ev.stream_id is not None
            headers: dict[str, str] = {}
            for name, value in ev.headers or ():
                headers.setdefault(str(name), str(value))
            self.streams[ev.stream_id] = _Incoming(headers, Response(self, ev.stream_id))
        elif isinstance(ev, h2.events.DataReceived):
            assert ev.stream_id is not None
            self.h2.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
            inc = self.streams.get(ev.stream_id)
            if inc is None or inc.task is not None:
                return
            inc.body.extend(ev.data or b"")
            if len(inc.body) > MAX_BODY_BYTES:
                log.info("noise %s: request body over %d bytes, refusing", self.peer, MAX_BODY_BYTES)
                self._forget(ev.stream_id)
                self.h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif isinstance(ev, h2.events.StreamEnded):
            assert ev.stream_id is not None
            inc = self.streams.get(ev.stream_id)
            if inc is not None and inc.task is None:
                inc.task = asyncio.create_task(self._serve(ev.stream_id, inc))
        elif isinstance(ev, h2.events.StreamReset):
            assert ev.stream_id is not None
            self._forget(ev.stream_id)
        elif isinstance(ev, h2.events.WindowUpdated):
            if not ev.stream_id:
                for inc in self.streams.values():
                    inc.response.window_opened()
            elif ev.stream_id in self.streams:
                self.streams[ev.stream_id].response.window_opened()
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            for inc in self.streams.values():
                inc.response.window_opened()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.closing = True

    async def _serve(self, stream_id: int, inc: _Incoming) -> None:
        h = inc.headers
        path = h.get(":path", "").split("?", 1)[0]
        req = Request(h.get(":method", ""), path, h, bytes(inc.body), self.machine_key, self.conn.version)
        inc.body = bytearray()
        resp = inc.response
        try:
            await self.handler(req, resp)
            if resp.started:
                await resp.end()
            else:
                await resp.respond(500, b"no response\n", "text/plain")
        except StreamClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("noise %s: handler for %s failed", self.peer, path)
            try:
                if not resp.started:
                    await resp.respond(500, b"internal error\n", "text/plain")
                elif not resp.ended:
                    self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                    self.flush()
            except (StreamClosed, h2.exceptions.ProtocolError):
                pass
        finally:
            if self.streams.get(stream_id) is inc:
                del self.streams[stream_id]

    def _forget(self, stream_id: int) -> None:
        inc = self.streams.pop(stream_id, None)
        if inc is None:
            return
        inc.response.close()
        if inc.task is not None:
            inc.task.cancel()

    async def _close(self) -> None:
        self.closing = True
        tasks = [inc.task for inc in self.streams.values() if inc.task is not None]
        for sid in list(self.streams):
            self._forget(sid)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.h2.close_connection()
            self.flush()
        except (h2.exceptions.ProtocolError, ProtocolError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass


def _peername(writer: asyncio.StreamWriter) -> str:
    addr = writer.get_extra_info("peername")
    if isinstance(addr, tuple) and len(addr) >= 2:
        return "%s:%d" % (addr[0], addr[1])
    return "?"
