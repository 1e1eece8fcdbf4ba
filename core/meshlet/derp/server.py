"""The server side of one DERP connection, sans-I/O: bytes in, events and bytes out.

CPython only (servers/meshlet_derp drives it; firmware never freezes it),
but written in the core's subset like its neighbours. Routing between
connections is not here: a connection only knows its own client. The shell
(servers/meshlet_derp) owns the registry of connections, the per-client
queues and the sockets. shared/protocol/derp.md is the reference; the
section numbers below are its.

Flow (§4, §5), after the HTTP upgrade (§2.3):

    conn = ServerConn(server_private, random_bytes, now_ms)
    write(conn.greeting())                         ServerKey, at once
    conn.receive_data(chunk, now_ms)               b"" means EOF
    while (ev := conn.next_event()) is not None:   ClientLoggedIn first,
        handle(ev)                                  then one event per frame
    write(conn.data_to_send())                     ServerInfo, KeepAlives
    at conn.next_deadline(): conn.handle_timer(now_ms)

Theory of operation. Two states: AWAIT_CLIENT_INFO, where the only frame
accepted is ClientInfo (at most login.MAX_CLIENT_INFO_LEN, as Tailscale's
server) and a deadline runs (10 s, against slowloris); then LOGGED_IN,
where the reader's limit drops to frames.SERVER_MAX_FRAME_LEN and each
frame becomes one event. The shell must handle ClientLoggedIn (register the
client) before it writes `data_to_send()`, because Tailscale's server
registers the client first and only then sends ServerInfo (§4).

Frame checks are Tailscale's (§6; derpserver.go `handleFrame*`):
NotePreferred exactly 1 byte, WatchConns 0, ClosePeer 32, Ping 8..1000,
SendPacket and ForwardPacket at most 64 KiB of data; WatchConns, ClosePeer
and ForwardPacket only from a client that presented the mesh key. A
violation raises RemoteProtocolError and leaves the connection in ERROR:
the shell closes that connection. Unknown frame types are skipped (the
FrameSkipped event lets the shell count them).

Every exception out of `receive_data`, `next_event` and `handle_timer` is
a RemoteProtocolError (CryptoError included) or, for a caller's mistake, a
LocalProtocolError; anything else is a bug (tests/props holds it to that).
"""

from .. import crypto
from .._compat import TYPE_CHECKING, const
from ..errors import LocalProtocolError, RemoteProtocolError
from ..key import NodePrivate, NodePublic
from . import frames, login

if TYPE_CHECKING:
    from typing import Callable, Union

    RandomBytes = Callable[[int], bytes]
    Event = Union[
        "ClientLoggedIn",
        "PacketForPeer",
        "ForwardPacketReceived",
        "NotePreferred",
        "PingReceived",
        "WatchConnsRequested",
        "ClosePeerRequested",
        "FrameSkipped",
        "ConnectionClosed",
    ]

# Implementation constants (derp.md §4, §6; Tailscale derpserver.go).
HANDSHAKE_TIMEOUT_MS = 10_000  # for ClientInfo to arrive; Tailscale's accept() deadline
KEEP_ALIVE_JITTER_MS = 5_000  # keep-alives every 60 s + random(0..5 s), drawn once per connection

AWAIT_CLIENT_INFO = "AWAIT_CLIENT_INFO"
LOGGED_IN = "LOGGED_IN"
CLOSED = "CLOSED"
ERROR = "ERROR"

_MESH_KEY_LEN = const(32)


# --- events -----------------------------------------------------------------------


class ClientLoggedIn:
    """ClientInfo opened: the client is `key`.

    Attributes:
        key: the client's node public key (its DERP address).
        info: ClientInfo's JSON, the four canonical keys of
            login.parse_client_info ("meshKey", "version", "CanAckPings", "IsProber").
        is_mesh_peer: it presented this server's mesh key.
    """

    __slots__ = ("key", "info", "is_mesh_peer")

    def __init__(self, key: NodePublic, info: "dict[str, object]", is_mesh_peer: bool) -> None:
        self.key = key
        self.info = info
        self.is_mesh_peer = is_mesh_peer

    def __repr__(self) -> str:
        return "ClientLoggedIn(%s, mesh=%r)" % (self.key.short(), self.is_mesh_peer)


class PacketForPeer:
    """SendPacket (0x04): deliver `data` to the node `dst`."""

    __slots__ = ("dst", "data")

    def __init__(self, dst: NodePublic, data: bytes) -> None:
        self.dst = dst
        self.data = data

    def __repr__(self) -> str:
        return "PacketForPeer(%s, %d bytes)" % (self.dst.short(), len(self.data))


class ForwardPacketReceived:
    """ForwardPacket (0x0a) from a mesh peer: deliver `data` to `dst` as if `src` sent it."""

    __slots__ = ("src", "dst", "data")

    def __init__(self, src: NodePublic, dst: NodePublic, data: bytes) -> None:
        self.src = src
        self.dst = dst
        self.data = data

    def __repr__(self) -> str:
        return "ForwardPacketReceived(%s -> %s, %d bytes)" % (
            self.src.short(),
            self.dst.short(),
            len(self.data),
        )


class NotePreferred:
    """NotePreferred (0x07): whether this server is the client's home region (stats only)."""

    __slots__ = ("preferred",)

    def __init__(self, preferred: bool) -> None:
        self.preferred = preferred

    def __repr__(self) -> str:
        return "NotePreferred(%r)" % self.preferred


class PingReceived:
    """Ping (0x12): answer with a Pong carrying `data` (8 bytes), at most one pending."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return "PingReceived(%s)" % self.data.hex()


class WatchConnsRequested:
    """WatchConns (0x10) from a mesh peer: send it PeerPresent for everyone, then changes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "WatchConnsRequested()"


class ClosePeerRequested:
    """ClosePeer (0x11) from a mesh peer: close every connection of `key`."""

    __slots__ = ("key",)

    def __init__(self, key: NodePublic) -> None:
        self.key = key

    def __repr__(self) -> str:
        return "ClosePeerRequested(%s)" % self.key.short()


class FrameSkipped:
    """A frame the server does not act on (unknown type, or a type clients never send)."""

    __slots__ = ("frame_type", "length")

    def __init__(self, frame_type: int, length: int) -> None:
        self.frame_type = frame_type
        self.length = length

    def __repr__(self) -> str:
        return "FrameSkipped(0x%02x, %d bytes)" % (self.frame_type, self.length)


class ConnectionClosed:
    """The client closed its side cleanly, between frames."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ConnectionClosed()"


# --- the connection ---------------------------------------------------------------


class ServerConn:
    """One client connection, from the server's side.

    Args:
        server_private: the server's key; ClientInfo is sealed to its public half.
        random_bytes: `random_bytes(n)`: ServerInfo nonces and keep-alive jitter.
        now_ms: the time the connection was accepted (the handshake deadline
            counts from here).
        mesh_key: the region's 32-byte pre-shared mesh key, or None. A client
            whose ClientInfo carries it is a mesh peer (§7); compared in
            constant time. An all-zero key means no mesh, as in Tailscale.
        server_info: the ServerInfo JSON fields (login.build_server_info);
            default `{"version": 2}`. Put TokenBucketBytesPerSecond/Burst here
            when the shell rate-limits clients, so they pace themselves.
        handshake_timeout_ms: how long ClientInfo may take to arrive.
        keep_alive_ms: the keep-alive interval once logged in (60 s), plus a
            random extra of up to `keep_alive_jitter_ms` drawn once per
            connection (so connections spread out). 0 turns keep-alives off.

    Attributes:
        state: AWAIT_CLIENT_INFO, LOGGED_IN, CLOSED or ERROR.
        client_key: the client's node key once logged in, else None.
        info: its ClientInfo JSON once logged in.
        is_mesh_peer: whether it presented the mesh key.
    """

    __slots__ = (
        "state", "client_key", "info", "is_mesh_peer", "_private", "_random", "_mesh_key", "_server_info",
        "_reader", "_out", "_events_eof", "_handshake_deadline_ms", "_keep_alive_ms", "_jitter_ms",
        "_next_keep_alive_ms", "_error", "_now_ms",
    )  # fmt: skip

    def __init__(
        self,
        server_private: NodePrivate,
        random_bytes: "RandomBytes",
        now_ms: int,
        mesh_key: "bytes | None" = None,
        server_info: "dict[str, object] | None" = None,
        handshake_timeout_ms: int = HANDSHAKE_TIMEOUT_MS,
        keep_alive_ms: int = frames.KEEP_ALIVE_MS,
        keep_alive_jitter_ms: int = KEEP_ALIVE_JITTER_MS,
    ) -> None:
        if mesh_key is not None and len(mesh_key) != _MESH_KEY_LEN:
            raise LocalProtocolError("bad_length", "a mesh key is 32 bytes, got %d" % len(mesh_key))
        if mesh_key == bytes(_MESH_KEY_LEN):
            mesh_key = None
        self.state = AWAIT_CLIENT_INFO
        self.client_key: "NodePublic | None" = None
        self.info: "dict[str, object]" = {}
        self.is_mesh_peer = False
        self._private = server_private
        self._random = random_bytes
        self._mesh_key = mesh_key
        default_info: "dict[str, object]" = {"version": frames.PROTOCOL_VERSION}
        self._server_info = server_info if server_info is not None else default_info
        self._reader = frames.FrameReader(login.MAX_CLIENT_INFO_LEN)
        self._out: "list[bytes]" = []
        self._events_eof = False
        self._handshake_deadline_ms = now_ms + handshake_timeout_ms
        self._keep_alive_ms = keep_alive_ms
        self._jitter_ms = keep_alive_jitter_ms
        self._next_keep_alive_ms = -1
        self._error: "RemoteProtocolError | None" = None
        self._now_ms = now_ms

    def greeting(self) -> bytes:
        """The ServerKey frame (§4.1), to write as soon as the upgrade is done."""
        return login.build_server_key(self._private.public())

    def receive_data(self, data: "bytes | bytearray | memoryview", now_ms: int) -> None:
        """Buffers bytes from the client; b"" means the client closed its side.

        Call `next_event()` until it returns None before feeding more.

        Raises:
            RemoteProtocolError: the connection already failed (the same error again).
            LocalProtocolError("not_drained"): fed twice without draining.
        """
        self._check_usable()
        self._now_ms = now_ms
        if not data:
            self._events_eof = True
            return
        self._reader.feed(data)

    def next_event(self) -> "Event | None":
        """The next event, or None until more bytes arrive (or after ConnectionClosed).

        Raises:
            RemoteProtocolError: a protocol violation (reason says which:
                "unexpected_frame", "frame_too_large", "bad_length", "short",
                "not_mesh_peer", "truncated", "bad_json", ...). The
                connection is dead; close it.
            CryptoError: ClientInfo's box did not open.
        """
        self._check_usable()
        if self.state == CLOSED:
            return None
        try:
            frame = self._reader.next_frame()
            if frame is None:
                if self._events_eof:
                    self._reader.feed_eof()  # raises "truncated" inside a frame
                    self.state = CLOSED
                    return ConnectionClosed()
                return None
            if self.state == AWAIT_CLIENT_INFO:
                return self._login(frame[0], frame[1])
            return self._dispatch(frame[0], frame[1])
        except RemoteProtocolError as e:
            self.state = ERROR
            self._error = e
            raise

    def data_to_send(self) -> bytes:
        """Bytes for the client that the connection itself produced: ServerInfo, KeepAlive."""
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out = []
        return out

    def next_deadline(self) -> "int | None":
        """When `handle_timer` must run next: the handshake deadline, then keep-alives."""
        if self.state == AWAIT_CLIENT_INFO:
            return self._handshake_deadline_ms
        if self.state == LOGGED_IN and self._next_keep_alive_ms >= 0:
            return self._next_keep_alive_ms
        return None

    def handle_timer(self, now_ms: int) -> None:
        """Runs what is due: a KeepAlive into `data_to_send()`, or the handshake timeout.

        Raises:
            RemoteProtocolError("handshake_timeout"): no ClientInfo in time
                (Tailscale's 10 s deadline against slow clients).
        """
        if self.state == AWAIT_CLIENT_INFO and now_ms >= self._handshake_deadline_ms:
            self.state = ERROR
            self._error = RemoteProtocolError("handshake_timeout", "no ClientInfo within the deadline")
            raise self._error
        if self.state == LOGGED_IN and 0 <= self._next_keep_alive_ms <= now_ms:
            self._out.append(frames.build_keep_alive())
            self._schedule_keep_alive(now_ms)

    # -- internals ------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error

    def _login(self, frame_type: int, payload: bytes) -> ClientLoggedIn:
        # Tailscale's recvClientKey reads exactly one frame and insists on its type.
        if frame_type != frames.FRAME_CLIENT_INFO:
            raise RemoteProtocolError("unexpected_frame", "frame 0x%02x before ClientInfo" % frame_type)
        key, info = login.parse_client_info(payload, self._private)
        self.client_key = key
        self.info = info
        self.is_mesh_peer = self._holds_mesh_key(info)
        self.state = LOGGED_IN
        self._reader.max_frame_len = frames.SERVER_MAX_FRAME_LEN
        nonce = self._random(frames.NONCE_LEN)
        self._out.append(login.build_server_info(self._private, key, nonce, self._server_info))
        self._schedule_keep_alive(self._now_ms)
        return ClientLoggedIn(key, info, self.is_mesh_peer)

    def _holds_mesh_key(self, info: "dict[str, object]") -> bool:
        text = info.get("meshKey")
        if self._mesh_key is None or not isinstance(text, str) or not text:
            return False
        return crypto.constant_time_equal(bytes.fromhex(text), self._mesh_key)

    def _schedule_keep_alive(self, now_ms: int) -> None:
        if self._keep_alive_ms <= 0:
            self._next_keep_alive_ms = -1
            return
        if self._next_keep_alive_ms < 0 and self._jitter_ms > 0:
            # Drawn once per connection, as Tailscale's ticker: NewTicker(KeepAlive + rand.N(5 s)).
            self._keep_alive_ms += int.from_bytes(self._random(4), "big") % self._jitter_ms
        self._next_keep_alive_ms = now_ms + self._keep_alive_ms

    def _dispatch(self, frame_type: int, payload: bytes) -> "Event":
        if frame_type == frames.FRAME_SEND_PACKET:
            dst, data = frames.parse_send_packet(payload)
            return PacketForPeer(dst, data)
        if frame_type == frames.FRAME_FORWARD_PACKET:
            self._require_mesh("ForwardPacket")
            src, dst, data = frames.parse_forward_packet(payload)
            return ForwardPacketReceived(src, dst, data)
        if frame_type == frames.FRAME_NOTE_PREFERRED:
            return NotePreferred(frames.parse_note_preferred(payload))
        if frame_type == frames.FRAME_PING:
            return PingReceived(frames.parse_ping(payload))
        if frame_type == frames.FRAME_WATCH_CONNS:
            frames.parse_watch_conns(payload)  # the length check comes first, as in Tailscale
            self._require_mesh("WatchConns")
            return WatchConnsRequested()
        if frame_type == frames.FRAME_CLOSE_PEER:
            key = frames.parse_close_peer(payload)
            self._require_mesh("ClosePeer")
            return ClosePeerRequested(key)
        return FrameSkipped(frame_type, len(payload))

    def _require_mesh(self, what: str) -> None:
        if not self.is_mesh_peer:
            raise RemoteProtocolError("not_mesh_peer", "%s needs the mesh key" % what)
