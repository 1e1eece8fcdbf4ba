"""The client end of a DERP connection, sans-I/O: HTTP upgrade, login, frames both ways.

The shell opens TCP (or TLS) to the DERP node, then only moves bytes and time
(shared/protocol/derp.md §2, §4, §5, §8):

    conn = ClientConn(node_private, random_bytes, now_ms, preferred=True)
    conn.connect("derp1.example.net")        queue the HTTP upgrade request
    write(conn.data_to_send())
    conn.receive_data(bytes_read, now_ms)    b"" when the socket reports EOF
    conn.next_event()   -> Connected | PacketReceived | PeerGone | ... | None
    conn.send_packet(dst, packet, now_ms)    -> False if dropped
    conn.handle_timer(now_ms)                at or after conn.next_deadline()

Protocol flow:

    client                                            server
    GET /derp HTTP/1.1, Upgrade: DERP       --->
                                            <---      HTTP/1.1 101 Switching Protocols
                                            <---      ServerKey   magic + server key
    ClientInfo   key + nonce + box(JSON)    --->
    [NotePreferred(1), if preferred]        --->      (sent without waiting, as tsnet does)
                                            <---      ServerInfo  => event Connected
    SendPacket, NotePreferred, Ping, Pong   --->
                                            <---      RecvPacket, KeepAlive, PeerGone, Ping,
                                                      Pong, Health, Restarting, PeerPresent

Theory of operation.

* States, in order: IDLE (before `connect`), HTTP (waiting for the 101),
  SERVER_KEY, SERVER_INFO (ClientInfo sent), CONNECTED; then CLOSED (a clean
  EOF or a timeout) or FAILED (a ProtocolError was raised). Transitions happen
  only in `connect`, `_receive_http`, `_on_server_key`, `_on_server_info`,
  `_end`, `handle_timer` and `receive_data`'s error path.
* Like Tailscale's client, packets may be sent as soon as ClientInfo is out
  (SERVER_INFO): ServerInfo is a welcome, not a permission. It is what makes
  the region count as connected, hence the `Connected` event.
* Bad input. The stream entry point raises `RemoteProtocolError` for what
  breaks the stream: a non-101 answer (`HttpStatusError`, reason
  "http_status"), a bad status line, oversized headers, a first frame other
  than ServerKey, a bad greeting or ServerInfo box, a frame over 1 MiB, or
  an EOF inside the login or a frame. The connection is then dead; the shell
  closes it and backs off. Known steady-state frames that are too short are
  dropped and counted (`stats.dropped`), and unknown frame types skipped,
  exactly as Tailscale's client does.
* Timers. One deadline: the login must reach ServerKey within
  `login_timeout_ms` of construction (derphttp's 10 s for the whole
  connect), and afterwards a frame must arrive every `read_timeout_ms`
  (Tailscale's 120 s, twice the server's keep-alive). A missed deadline ends
  the connection with the event `ConnectionTimedOut`.
* Sending is limited by the token bucket the server announces in ServerInfo
  (whole frame bytes, as Tailscale counts them); excess packets are dropped
  and counted as "rate_limited".

Drop reasons (`stats.dropped` keys), stable: "short" and "bad_utf8" (frames
from the server), "rate_limited" and "not_connected" (our own sends).
"""

import struct

from .._compat import TYPE_CHECKING, const
from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ..key import NodePrivate, NodePublic
from .events import (
    Connected,
    ConnectionClosed,
    ConnectionTimedOut,
    HealthChanged,
    KeepAliveReceived,
    PacketReceived,
    PeerGone,
    PeerPresent,
    PongReceived,
    ServerRestarting,
)
from .frames import (
    CLIENT_MAX_FRAME_LEN,
    FRAME_HEADER_LEN,
    FRAME_HEALTH,
    FRAME_KEEP_ALIVE,
    FRAME_PEER_GONE,
    FRAME_PEER_PRESENT,
    FRAME_PING,
    FRAME_PONG,
    FRAME_RECV_PACKET,
    FRAME_RESTARTING,
    FRAME_SEND_PACKET,
    FRAME_SERVER_INFO,
    FRAME_SERVER_KEY,
    KEEP_ALIVE_MS,
    KEY_LEN,
    MAX_PACKET_SIZE,
    NONCE_LEN,
    PROTOCOL_VERSION,
    FrameReader,
    build_note_preferred,
    build_ping,
    build_pong,
    parse_health,
    parse_peer_gone,
    parse_peer_present,
    parse_pong,
    parse_recv_packet,
    parse_restarting,
)
from .login import build_client_info, parse_server_info, parse_server_key

if TYPE_CHECKING:
    from typing import Callable, Protocol

    from .events import Event

    class Log(Protocol):
        def __call__(self, fmt: str, *args: object) -> None: ...

# --- specification constants (derp.md §2, §3; Tailscale derphttp and derp_client.go) --

READ_TIMEOUT_MS = 2 * KEEP_ALIVE_MS  # Client.Recv's read deadline: two missed keep-alives
LOGIN_TIMEOUT_MS = 10_000  # derphttp: DNS + TCP + TLS + HTTP + DERP upgrade within 10 s
DERP_PATH = "/derp"
_GREETING_MAX_LEN = const(1024)  # the client reads ServerKey with a 1 KiB limit

# --- implementation constants ----------------------------------------------------

# Room for a 101 with a few headers, or a proxy's error page's headers; far
# more than a DERP server sends, and small enough to hold on a board.
MAX_HTTP_HEADER_LEN = 8192

_IDLE = const(0)
_HTTP = const(1)
_SERVER_KEY = const(2)
_SERVER_INFO = const(3)
_CONNECTED = const(4)
_CLOSED = const(5)
_FAILED = const(6)
_STATE_NAMES = ("idle", "http", "server_key", "server_info", "connected", "closed", "failed")


def _nolog(fmt: str, *args: object) -> None:
    pass


class HttpStatusError(RemoteProtocolError):
    """The server answered the upgrade with something other than 101.

    Attributes:
        status: the HTTP status code (426 from a server that wants an Upgrade
            header, 404 from a web server without DERP, ...).
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__("http_status", detail)
        self.status = status


class ClientStats:
    """Counters. `dropped` maps a stable reason ("rate_limited", "short", ...) to a count."""

    __slots__ = (
        "dropped",
        "rx_packets",
        "rx_bytes",
        "tx_packets",
        "tx_bytes",
        "pongs_sent",
        "unknown_frames",
    )

    def __init__(self) -> None:
        self.dropped: "dict[str, int]" = {}
        self.rx_packets = 0
        self.rx_bytes = 0  # packet data only, as Tailscale's derp counters
        self.tx_packets = 0
        self.tx_bytes = 0
        self.pongs_sent = 0
        self.unknown_frames = 0


class _TokenBucket:
    """golang.org/x/time/rate's Limiter for integer milliseconds, kept in milli-bytes.

    It starts full; `allow(n)` takes n bytes if there are that many, and a
    request larger than the burst never fits.
    """

    __slots__ = ("rate", "burst", "_milli", "_at_ms")

    def __init__(self, bytes_per_s: int, burst: int, now_ms: int) -> None:
        self.rate = bytes_per_s  # milli-bytes per millisecond
        self.burst = burst
        self._milli = burst * 1000
        self._at_ms = now_ms

    def allow(self, n: int, now_ms: int) -> bool:
        elapsed = now_ms - self._at_ms
        if elapsed > 0:
            self._milli = min(self.burst * 1000, self._milli + elapsed * self.rate)
            self._at_ms = now_ms
        need = n * 1000
        if need > self._milli:
            return False
        self._milli -= need
        return True


def build_upgrade_request(host: str, ideal_node: "str | None" = None) -> bytes:
    """The HTTP/1.1 request that turns the connection into DERP (derp.md §2.2).

    Args:
        host: the Host header: the node's HostName, with ":port" when the
            port is not the scheme's default.
        ideal_node: Nodes[0].Name of the region, sent only when connected to
            another node of it.

    Raises:
        LocalProtocolError("bad_header"): a value that is empty or would break
            the request (spaces, control characters, non-ASCII).
    """
    lines = ["GET " + DERP_PATH + " HTTP/1.1", "Host: " + _header_value(host)]
    lines.append("Upgrade: DERP")
    lines.append("Connection: Upgrade")
    if ideal_node is not None:
        lines.append("Ideal-Node: " + _header_value(ideal_node))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _header_value(value: str) -> str:
    if not value:
        raise LocalProtocolError("bad_header", "empty header value")
    for c in value:
        if not "!" <= c <= "~":
            raise LocalProtocolError("bad_header", "%r in a header value" % c)
    return value


def _find_header_end(buf: bytearray, start: int) -> int:
    """Index just past the blank line ending the headers, or -1. Bare LF is accepted, as Go does."""
    crlf = buf.find(b"\r\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    if crlf < 0:
        return -1 if lf < 0 else lf + 2
    if lf < 0 or crlf + 2 < lf:
        return crlf + 4
    return lf + 2


def parse_status_line(head: bytes) -> "tuple[int, str]":
    """(status code, reason phrase) from the first line of an HTTP/1.x response.

    Raises:
        RemoteProtocolError("bad_http"): not an HTTP/1.x status line.
    """
    line = head.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise RemoteProtocolError("bad_http", "not an HTTP/1.x status line: %r" % line[:64])
    try:
        reason = parts[2].decode() if len(parts) > 2 else ""
    except UnicodeError:
        reason = repr(parts[2])
    return int(parts[1]), reason


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


class ClientConn:
    """One DERP connection as a client: upgrade, login, then packets and control frames.

    Args:
        node_private: this node's key; the server knows us by its public half.
        random_bytes: `random_bytes(n)`, for the ClientInfo box's nonce.
        now_ms: the time now; the login deadline counts from here.
        mesh_key: the region's pre-shared mesh key (32 bytes, or 64 hex
            digits) for relays meshing with each other; None for nodes.
        can_ack_pings: advertised in ClientInfo; when True, server Pings are
            answered with Pongs automatically.
        is_prober: advertised in ClientInfo (monitoring clients).
        preferred: this is the node's home region: NotePreferred(1) follows
            ClientInfo at once, as in tsnet.
        max_frame_len: the largest frame accepted (Tailscale's 1 MiB).
        read_timeout_ms: the longest silence before the connection is dead.
        login_timeout_ms: the longest wait from construction to ServerKey.
        max_http_header_len: the most bytes the HTTP response head may take.
        log: `log(fmt, *args)`; called once per new drop reason.

    Attributes:
        public_key: our node key.
        server_key: the server's key once its greeting arrived, else None.
        preferred: what the server was (or will be) told by NotePreferred.
        token_bucket: (bytes per second, burst) from ServerInfo, or None.
        read_timeout_ms: as given.
        last_rx_ms: when the last whole frame arrived, or None (netcheck's
            "heard from this region recently", derp.md §9).
        stats: ClientStats.
    """

    def __init__(
        self,
        node_private: NodePrivate,
        random_bytes: "Callable[[int], bytes]",
        now_ms: int,
        mesh_key: "bytes | str | None" = None,
        can_ack_pings: bool = True,
        is_prober: bool = False,
        preferred: bool = False,
        max_frame_len: int = CLIENT_MAX_FRAME_LEN,
        read_timeout_ms: int = READ_TIMEOUT_MS,
        login_timeout_ms: int = LOGIN_TIMEOUT_MS,
        max_http_header_len: int = MAX_HTTP_HEADER_LEN,
        log: "Log" = _nolog,
    ) -> None:
        self._private = node_private
        self.public_key = node_private.public()
        self._random_bytes = random_bytes
        info: "dict[str, object]" = {"version": PROTOCOL_VERSION, "CanAckPings": can_ack_pings}
        if is_prober:
            info["IsProber"] = True
        if mesh_key is not None:
            info["meshKey"] = _mesh_key_text(mesh_key)
        self._info = info
        self._can_ack_pings = can_ack_pings
        self.preferred = preferred
        self._max_frame_len = max_frame_len
        self.read_timeout_ms = read_timeout_ms
        self._max_http_header_len = max_http_header_len
        self._log = log
        self.server_key: "NodePublic | None" = None
        self.token_bucket: "tuple[int, int] | None" = None
        self._bucket: "_TokenBucket | None" = None
        self.last_rx_ms: "int | None" = None
        self.stats = ClientStats()
        self._state = _IDLE
        self._failed = ""
        self._deadline_ms = now_ms + login_timeout_ms
        self._http = bytearray()
        self._reader = FrameReader(_GREETING_MAX_LEN)
        self._out = bytearray()
        self._events: "list[Event]" = []
        self._event_pos = 0

    # --- the shell's side ---------------------------------------------------------

    def connect(self, host: str, ideal_node: "str | None" = None) -> None:
        """Queues the HTTP upgrade request (see `build_upgrade_request`); call once, first.

        Raises:
            LocalProtocolError: "out_of_order" (called twice) or "bad_header".
        """
        if self._state != _IDLE:
            raise LocalProtocolError("out_of_order", "connect() in state " + self.state())
        self._out.extend(build_upgrade_request(host, ideal_node))
        self._state = _HTTP

    def data_to_send(self) -> bytes:
        """Everything queued for the server since the last call (b"" if nothing)."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out = bytearray()
        return out

    def next_event(self) -> "Event | None":
        """The oldest event not yet taken, or None."""
        pos = self._event_pos
        events = self._events
        if pos >= len(events):
            return None
        ev = events[pos]
        if pos + 1 == len(events):
            self._events = []
            self._event_pos = 0
        else:
            self._event_pos = pos + 1
        return ev

    def next_deadline(self) -> "int | None":
        """When `handle_timer` must be called next, or None once the connection is over."""
        if self._state >= _CLOSED:
            return None
        return self._deadline_ms

    def handle_timer(self, now_ms: int) -> None:
        """Checks the login and read deadlines; a missed one ends the connection (ConnectionTimedOut)."""
        if self._state >= _CLOSED or now_ms < self._deadline_ms:
            return
        phase = "read" if self._state >= _SERVER_INFO else "login"
        self._state = _CLOSED
        self._events.append(ConnectionTimedOut(phase))

    def state(self) -> str:
        """The state's name: idle, http, server_key, server_info, connected, closed or failed."""
        return _STATE_NAMES[self._state]

    def is_connected(self) -> bool:
        """True once ServerInfo arrived, until the connection ends."""
        return self._state == _CONNECTED

    # --- receiving ------------------------------------------------------------------

    def receive_data(self, data: "bytes | bytearray | memoryview", now_ms: int) -> None:
        """Takes bytes read from the socket; b"" means the server closed it.

        Raises (and the connection is dead afterwards):
            HttpStatusError("http_status"): the upgrade was refused.
            RemoteProtocolError: "bad_http", "http_headers_too_large",
                "unexpected_frame" (a first frame other than ServerKey),
                "bad_magic", "short", "bad_json", "frame_too_large" or
                "truncated" (EOF inside the login or a frame).
            CryptoError: the ServerInfo box does not open.
        Raises LocalProtocolError: "out_of_order" before `connect()` or after
        the end, "conn_dead" after a failure.
        """
        state = self._state
        if state == _FAILED:
            raise LocalProtocolError("conn_dead", "failed earlier: " + self._failed)
        if state == _CLOSED:
            if data:
                raise LocalProtocolError("out_of_order", "data after the connection ended")
            return
        if state == _IDLE:
            raise LocalProtocolError("out_of_order", "receive_data() before connect()")
        try:
            if not data:
                self._end()
            elif state == _HTTP:
                rest = self._receive_http(data)
                if rest:
                    self._receive_frames(rest, now_ms)
            else:
                self._receive_frames(data, now_ms)
        except ProtocolError as e:
            self._state = _FAILED
            self._failed = e.reason
            raise

    def _receive_http(self, data: "bytes | bytearray | memoryview") -> bytes:
        """Collects the response head; returns the DERP bytes after it once it is complete."""
        buf = self._http
        start = len(buf) - 3 if len(buf) > 3 else 0
        buf.extend(data)
        end = _find_header_end(buf, start)
        limit = self._max_http_header_len
        if end < 0 and len(buf) > limit or end > limit:
            raise RemoteProtocolError("http_headers_too_large", "no end of headers in %d bytes" % limit)
        if end < 0:
            return b""
        status, reason = parse_status_line(bytes(buf[:end]))
        if status != 101:
            raise HttpStatusError(status, "%d %s" % (status, reason))
        rest = bytes(buf[end:])
        self._http = bytearray()
        self._state = _SERVER_KEY
        return rest

    def _receive_frames(self, data: "bytes | bytearray | memoryview", now_ms: int) -> None:
        reader = self._reader
        reader.feed(data)
        while True:
            frame = reader.next_frame()
            if frame is None:
                return
            self.last_rx_ms = now_ms
            self._deadline_ms = now_ms + self.read_timeout_ms
            frame_type, payload = frame
            if self._state == _SERVER_KEY:
                if frame_type != FRAME_SERVER_KEY:
                    raise RemoteProtocolError(
                        "unexpected_frame", "frame type %d before ServerKey" % frame_type
                    )
                self._on_server_key(payload)
                continue
            handler = _HANDLERS.get(frame_type)
            if handler is None:
                self.stats.unknown_frames += 1  # ServerKey again, or a frame from the future
                continue
            if frame_type == FRAME_SERVER_INFO:
                handler(self, payload, now_ms)  # a bad welcome is fatal, as in Tailscale
                continue
            try:
                handler(self, payload, now_ms)
            except RemoteProtocolError as e:  # Tailscale logs and skips malformed frames
                self._drop(e.reason)

    def _end(self) -> None:
        if self._state == _HTTP:
            raise RemoteProtocolError("truncated", "the server closed before its HTTP response")
        if self._state == _SERVER_KEY:
            raise RemoteProtocolError("truncated", "the server closed before its key")
        self._reader.feed_eof()
        self._state = _CLOSED
        self._events.append(ConnectionClosed())

    # --- the login ------------------------------------------------------------------

    def _on_server_key(self, payload: bytes) -> None:
        server_key = parse_server_key(payload)
        self.server_key = server_key
        self._reader.max_frame_len = self._max_frame_len
        nonce = self._random_bytes(NONCE_LEN)
        self._out.extend(build_client_info(self._private, server_key, nonce, self._info))
        if self.preferred:
            self._out.extend(build_note_preferred(True))
        self._state = _SERVER_INFO

    def _on_server_info(self, payload: bytes, now_ms: int) -> None:
        assert self.server_key is not None  # ServerKey came first
        info = parse_server_info(payload, self._private, self.server_key)
        rate = _int(info.get("TokenBucketBytesPerSecond"))
        burst = _int(info.get("TokenBucketBytesBurst"))
        if rate > 0:
            burst = burst if burst > 0 else 0
            self._bucket = _TokenBucket(rate, burst, now_ms)
            self.token_bucket = (rate, burst)
        else:
            self._bucket = None
            self.token_bucket = None
        if self._state != _CONNECTED:  # a later ServerInfo only updates the limit
            self._state = _CONNECTED
            self._events.append(Connected(self.server_key, self.token_bucket))

    # --- steady-state frames from the server ----------------------------------------

    def _on_recv_packet(self, payload: bytes, now_ms: int) -> None:
        src, data = parse_recv_packet(payload)
        self.stats.rx_packets += 1
        self.stats.rx_bytes += len(data)
        self._events.append(PacketReceived(src, data))

    def _on_keep_alive(self, payload: bytes, now_ms: int) -> None:
        self._events.append(KeepAliveReceived())

    def _on_peer_gone(self, payload: bytes, now_ms: int) -> None:
        peer, reason = parse_peer_gone(payload)
        self._events.append(PeerGone(peer, reason))

    def _on_peer_present(self, payload: bytes, now_ms: int) -> None:
        p = parse_peer_present(payload)
        self._events.append(PeerPresent(p.key, p.ip, p.port, p.flags))

    def _on_ping(self, payload: bytes, now_ms: int) -> None:
        data = parse_pong(payload)  # the first 8 bytes; the rest is room for extensions
        if self._can_ack_pings:
            self._out.extend(build_pong(data))
            self.stats.pongs_sent += 1

    def _on_pong(self, payload: bytes, now_ms: int) -> None:
        self._events.append(PongReceived(parse_pong(payload)))

    def _on_health(self, payload: bytes, now_ms: int) -> None:
        self._events.append(HealthChanged(parse_health(payload)))

    def _on_restarting(self, payload: bytes, now_ms: int) -> None:
        reconnect_in_ms, try_for_ms = parse_restarting(payload)
        self._events.append(ServerRestarting(reconnect_in_ms, try_for_ms))

    # --- sending --------------------------------------------------------------------

    def send_packet(self, dst: NodePublic, data: "bytes | bytearray | memoryview", now_ms: int) -> bool:
        """Queues a SendPacket of `data` for the node `dst`; False if it was dropped.

        Drops (counted in `stats.dropped`) are "not_connected" before the
        login or after the end, and "rate_limited" beyond the server's token
        bucket.

        Raises:
            LocalProtocolError("packet_too_large"): over 64 KiB.
        """
        n = len(data)
        if n > MAX_PACKET_SIZE:
            raise LocalProtocolError("packet_too_large", "%d bytes" % n)
        if self._state != _CONNECTED and self._state != _SERVER_INFO:
            self._drop("not_connected")
            return False
        bucket = self._bucket
        if bucket is not None and not bucket.allow(FRAME_HEADER_LEN + KEY_LEN + n, now_ms):
            self._drop("rate_limited")
            return False
        out = self._out
        out.extend(struct.pack(">BI", FRAME_SEND_PACKET, KEY_LEN + n))
        out.extend(dst.raw)
        out.extend(data)
        self.stats.tx_packets += 1
        self.stats.tx_bytes += n
        return True

    def note_preferred(self, preferred: bool) -> None:
        """Tells the server whether it is our home region; sent only when the answer changes."""
        if preferred == self.preferred:
            return
        self.preferred = preferred
        if self._state == _CONNECTED or self._state == _SERVER_INFO:
            self._out.extend(build_note_preferred(preferred))

    def ping(self, data: bytes) -> None:
        """Queues a Ping with 8 bytes of our choosing; the server's Pong comes back as PongReceived.

        Raises:
            LocalProtocolError: "not_connected" before the login or after the
                end; "bad_length" unless `data` is 8 bytes.
        """
        if self._state != _CONNECTED and self._state != _SERVER_INFO:
            raise LocalProtocolError("not_connected", "ping in state " + self.state())
        self._out.extend(build_ping(data))

    def _drop(self, reason: str) -> None:
        dropped = self.stats.dropped
        n = dropped.get(reason, 0)
        dropped[reason] = n + 1
        if not n:
            self._log("derp: dropped (%s), first time", reason)


# Frame type -> handler, for frames after the login. Anything absent is skipped.
_HANDLERS: "dict[int, Callable[[ClientConn, bytes, int], None]]" = {
    FRAME_SERVER_INFO: ClientConn._on_server_info,
    FRAME_RECV_PACKET: ClientConn._on_recv_packet,
    FRAME_KEEP_ALIVE: ClientConn._on_keep_alive,
    FRAME_PEER_GONE: ClientConn._on_peer_gone,
    FRAME_PEER_PRESENT: ClientConn._on_peer_present,
    FRAME_PING: ClientConn._on_ping,
    FRAME_PONG: ClientConn._on_pong,
    FRAME_HEALTH: ClientConn._on_health,
    FRAME_RESTARTING: ClientConn._on_restarting,
}


def _mesh_key_text(mesh_key: "bytes | str") -> str:
    """The mesh key as ClientInfo carries it: 64 lowercase hex digits."""
    if isinstance(mesh_key, str):
        raw = b""
        if len(mesh_key) == 2 * KEY_LEN:
            try:
                raw = bytes.fromhex(mesh_key)
            except ValueError:
                pass
        if len(raw) != KEY_LEN:
            raise LocalProtocolError("bad_mesh_key", "want 64 hex digits")
        return mesh_key.lower()
    if len(mesh_key) != KEY_LEN:
        raise LocalProtocolError("bad_mesh_key", "want 32 bytes, got %d" % len(mesh_key))
    return bytes(mesh_key).hex()
