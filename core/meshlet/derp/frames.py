"""The DERP frame layer: the header, a stream reader, and the steady-state frames.

After the HTTP upgrade (shared/protocol/derp.md §2) a DERP connection is a
stream of frames in both directions (§3):

    1b  frame type (FRAME_*)
    4b  payload length L, big-endian (the 5 header bytes not included)
    L   payload

Protocol flow (§4, §5):

    server -> client   ServerKey    8b magic "DERP🔑" + 32b server key
    client -> server   ClientInfo   32b client node key + 24b nonce + box(JSON)
    server -> client   ServerInfo   24b nonce + box(JSON)
    then               SendPacket (C->S) / RecvPacket (S->C), KeepAlive,
                       Ping/Pong, PeerGone, NotePreferred, ...; mesh peers also
                       WatchConns, PeerPresent, ForwardPacket, ClosePeer

The boxes are NaCl `crypto_box` between the client's node key and the
server's key; the JSON inside is Go's encoding of `derp.ClientInfo` and
`derp.ServerInfo`, reproduced byte for byte here (tsnet sends exactly
`{"version":2,"CanAckPings":true}`).

The login frames (ServerKey, ClientInfo, ServerInfo) and their sealed JSON
live in `derp.login`; everything after the login is here.

Builders (`build_*`) return whole frames, header included, ready to write.
Parsers (`parse_*`) take a payload, as `FrameReader.next_frame()` yields it.
Receivers are lax where Tailscale is (extra bytes after ServerKey, PeerGone,
Ping, Restarting) and strict where Tailscale's server is (NotePreferred,
WatchConns and ClosePeer lengths, the 64 KiB packet limit).
"""

import struct

from .._compat import const
from ..errors import LocalProtocolError, RemoteProtocolError
from ..key import NodePublic
from ..wire import Reader, Writer, ip16, ip_compact

# Specification (derp.md §3; Tailscale derp/derp.go).
MAGIC = b"DERP\xf0\x9f\x94\x91"
PROTOCOL_VERSION = 2
KEY_LEN = 32
NONCE_LEN = 24
FRAME_HEADER_LEN = 5
MAX_PACKET_SIZE = 64 << 10  # the data part of Send/Recv/ForwardPacket
KEEP_ALIVE_MS = 60_000

FRAME_SERVER_KEY = 0x01
FRAME_CLIENT_INFO = 0x02
FRAME_SERVER_INFO = 0x03
FRAME_SEND_PACKET = 0x04
FRAME_RECV_PACKET = 0x05
FRAME_KEEP_ALIVE = 0x06
FRAME_NOTE_PREFERRED = 0x07
FRAME_PEER_GONE = 0x08
FRAME_PEER_PRESENT = 0x09
FRAME_FORWARD_PACKET = 0x0A
FRAME_WATCH_CONNS = 0x10
FRAME_CLOSE_PEER = 0x11
FRAME_PING = 0x12
FRAME_PONG = 0x13
FRAME_HEALTH = 0x14
FRAME_RESTARTING = 0x15

PEER_GONE_DISCONNECTED = 0x00  # a peer we received from left
PEER_GONE_NOT_HERE = 0x01  # the destination of our packet is not connected
PEER_GONE_MESH_CONN_BROKE = 0xF0  # client-side only, never on the wire

PEER_PRESENT_IS_REGULAR = 0x01
PEER_PRESENT_IS_MESH_PEER = 0x02
PEER_PRESENT_IS_PROBER = 0x04
PEER_PRESENT_NOT_IDEAL = 0x08  # connected to a node that is not Nodes[0] of its region

# Implementation limits, each Tailscale's own (derp.md §3, §6).
CLIENT_MAX_FRAME_LEN = 1 << 20  # the client's Recv refuses anything larger
# The largest steady-state frame a server accepts: a ForwardPacket's two keys and 64 KiB.
SERVER_MAX_FRAME_LEN = MAX_PACKET_SIZE + 2 * KEY_LEN
MAX_WRITE_FRAME_LEN = 10 << 20  # Tailscale's WriteFrame refuses "unreasonably large" frames
_PING_MAX_LEN = const(1000)  # the server leaves room for extensions, "but not too much"
_PING_LEN = const(8)
_PEER_PRESENT_LEN = const(51)  # key + IP + port + flags


# --- framing -----------------------------------------------------------------


def encode_header(frame_type: int, length: int) -> bytes:
    """The 5-byte header: type, then the payload length big-endian."""
    return Writer().u8(frame_type).u32(length).getvalue()


def parse_header(data: bytes) -> "tuple[int, int]":
    """(frame type, payload length) from the first 5 bytes; raises "short"."""
    r = Reader(data)
    return r.u8(), r.u32()


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    """Header plus payload.

    Raises:
        LocalProtocolError("frame_too_large"): over 10 MiB, which Tailscale's
            writer refuses too.
    """
    if len(payload) > MAX_WRITE_FRAME_LEN:
        raise LocalProtocolError("frame_too_large", "%d bytes" % len(payload))
    return Writer().u8(frame_type).u32(len(payload)).raw(payload).getvalue()


def decode_frame(data: bytes) -> "tuple[int, bytes]":
    """Splits exactly one whole frame into (type, payload).

    Raises:
        RemoteProtocolError: "short" (truncated) or "trailing" (more than one frame).
    """
    r = Reader(data)
    frame_type = r.u8()
    payload = r.take(r.u32())
    r.expect_end()
    return frame_type, payload


class FrameReader:
    """Cuts a DERP byte stream into frames, holding at most one frame in memory.

    `feed()` what the socket gave, then call `next_frame()` until it returns
    None (it needs more bytes); only then feed again. A declared length over
    `max_frame_len` is refused as soon as its header arrives, before any of the
    payload does. After that error the stream is unusable: every later
    `next_frame()` raises it again and `feed()` discards its input.

    Theory of operation: one bytearray whose capacity the reader manages
    itself, because MicroPython's bytearray grows by exactly what is appended
    (a byte-at-a-time feed would copy quadratically). Unconsumed bytes sit at
    `[_start:_end]`. When a chunk does not fit, the unconsumed rest (after a
    full drain, part of one frame) slides to the front, or moves into a new
    buffer of twice the size, capped at one whole frame. Every byte is thus
    copied O(1) times, and the capacity never exceeds
    `FRAME_HEADER_LEN + max_frame_len` plus the chunk being fed.

    Args:
        max_frame_len: the largest payload accepted. The client default is
            Tailscale's 1 MiB; a server passes SERVER_MAX_FRAME_LEN (and
            login.MAX_CLIENT_INFO_LEN while it waits for ClientInfo). Unlike
            Tailscale's server, which skips an oversized frame of an unknown
            type, this reader refuses it.
    """

    __slots__ = ("max_frame_len", "_buf", "_start", "_end", "_failed")

    def __init__(self, max_frame_len: int = CLIENT_MAX_FRAME_LEN) -> None:
        self.max_frame_len = max_frame_len
        self._buf = bytearray()
        self._start = 0
        self._end = 0
        self._failed = ""

    def feed(self, data: "bytes | bytearray | memoryview") -> None:
        """Appends bytes from the stream.

        Raises:
            LocalProtocolError("not_drained"): more than a frame is already
                buffered; call `next_frame()` until None first.
        """
        n = len(data)
        if self._failed or not n:
            return
        start = self._start
        end = self._end
        held = end - start
        one_frame = FRAME_HEADER_LEN + self.max_frame_len
        if held > one_frame:
            raise LocalProtocolError("not_drained", "%d bytes buffered" % held)
        buf = self._buf
        if end + n > len(buf) or len(buf) > one_frame + n:
            if held + n <= len(buf) <= one_frame + n:
                buf[0:held] = buf[start:end]  # slide the partial frame to the front
            else:
                new = bytearray(max(held + n, min(2 * len(buf), one_frame)))
                new[0:held] = buf[start:end]
                self._buf = buf = new
            self._start = 0
            end = held
        buf[end : end + n] = data
        self._end = end + n

    def next_frame(self) -> "tuple[int, bytes] | None":
        """The next whole frame as (type, payload), or None until more bytes arrive.

        Unknown frame types are returned like any other; the caller skips them.

        Raises:
            RemoteProtocolError("frame_too_large"): the header declares more
                than `max_frame_len` bytes.
        """
        if self._failed:
            raise RemoteProtocolError("frame_too_large", self._failed)
        buf = self._buf
        start = self._start
        if self._end - start < FRAME_HEADER_LEN:
            return None
        length = int(struct.unpack_from(">I", buf, start + 1)[0])
        if length > self.max_frame_len:
            self._failed = "frame of %d bytes, limit %d" % (length, self.max_frame_len)
            self._buf = bytearray()
            self._start = self._end = 0
            raise RemoteProtocolError("frame_too_large", self._failed)
        end = start + FRAME_HEADER_LEN + length
        if end > self._end:
            return None
        frame_type = buf[start]
        payload = bytes(buf[start + FRAME_HEADER_LEN : end])
        if end == self._end:
            self._start = self._end = 0  # drained: the next chunk starts at the front
        else:
            self._start = end
        return frame_type, payload

    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return self._end - self._start

    def feed_eof(self) -> None:
        """Tells the reader the stream ended.

        Raises:
            RemoteProtocolError("truncated"): it ended inside a frame.
        """
        if self.buffered():
            raise RemoteProtocolError("truncated", "stream ended %d bytes into a frame" % self.buffered())


# --- packets -----------------------------------------------------------------------


def build_send_packet(dst: NodePublic, packet: bytes) -> bytes:
    """SendPacket (0x04), client to server: a packet for the node `dst`.

    Raises:
        LocalProtocolError("packet_too_large"): over 64 KiB, as Tailscale's client.
    """
    _check_packet_local(packet)
    return encode_frame(FRAME_SEND_PACKET, dst.raw + packet)


def parse_send_packet(payload: bytes) -> "tuple[NodePublic, bytes]":
    """(destination, packet). Raises "short" or "packet_too_large"."""
    r = Reader(payload)
    dst = NodePublic(r.take(KEY_LEN))
    return dst, _packet(r)


def build_recv_packet(src: NodePublic, packet: bytes) -> bytes:
    """RecvPacket (0x05), server to client, protocol v2: the source key, then the packet."""
    _check_packet_local(packet)
    return encode_frame(FRAME_RECV_PACKET, src.raw + packet)


def parse_recv_packet(payload: bytes) -> "tuple[NodePublic, bytes]":
    """(source, packet). Raises "short". The size is bounded by the reader's limit."""
    r = Reader(payload)
    src = NodePublic(r.take(KEY_LEN))
    return src, r.rest()


def build_forward_packet(src: NodePublic, dst: NodePublic, packet: bytes) -> bytes:
    """ForwardPacket (0x0a), mesh peer to server: deliver as if `src` had sent it."""
    _check_packet_local(packet)
    return encode_frame(FRAME_FORWARD_PACKET, src.raw + dst.raw + packet)


def parse_forward_packet(payload: bytes) -> "tuple[NodePublic, NodePublic, bytes]":
    """(source, destination, packet). Raises "short" or "packet_too_large"."""
    r = Reader(payload)
    src = NodePublic(r.take(KEY_LEN))
    dst = NodePublic(r.take(KEY_LEN))
    return src, dst, _packet(r)


def _check_packet_local(packet: bytes) -> None:
    if len(packet) > MAX_PACKET_SIZE:
        raise LocalProtocolError("packet_too_large", "%d bytes" % len(packet))


def _packet(r: Reader) -> bytes:
    if r.remaining() > MAX_PACKET_SIZE:
        raise RemoteProtocolError("packet_too_large", "%d bytes" % r.remaining())
    return r.rest()


# --- small control frames -------------------------------------------------------


def build_keep_alive() -> bytes:
    """KeepAlive (0x06), server to client: empty."""
    return encode_header(FRAME_KEEP_ALIVE, 0)


def parse_keep_alive(payload: bytes) -> None:
    """Nothing to parse; Tailscale's client ignores any payload."""


def build_note_preferred(preferred: bool) -> bytes:
    """NotePreferred (0x07): 1 if this server is the client's home region."""
    return encode_frame(FRAME_NOTE_PREFERRED, b"\x01" if preferred else b"\x00")


def parse_note_preferred(payload: bytes) -> bool:
    """Any non-zero byte means preferred. Raises "bad_length" unless exactly 1 byte."""
    if len(payload) != 1:
        raise RemoteProtocolError("bad_length", "note preferred of %d bytes" % len(payload))
    return payload[0] != 0


def build_peer_gone(peer: NodePublic, reason: int = PEER_GONE_DISCONNECTED) -> bytes:
    """PeerGone (0x08): the peer's key and a PEER_GONE_* reason."""
    return encode_frame(FRAME_PEER_GONE, Writer().raw(peer.raw).u8(reason).getvalue())


def parse_peer_gone(payload: bytes) -> "tuple[NodePublic, int]":
    """(peer, reason); older servers omit the reason, which then is Disconnected."""
    r = Reader(payload)
    peer = NodePublic(r.take(KEY_LEN))
    return peer, r.u8() if r.remaining() else PEER_GONE_DISCONNECTED


class PeerPresent:
    """A PeerPresent frame (0x09), sent to mesh watchers.

    Attributes:
        key: the connected client's node key.
        ip: its address, 4 or 16 bytes, or None from servers too old to send it.
        port: its source port (0 when ip is None).
        flags: PEER_PRESENT_* bits; 0 from servers that predate them.
    """

    __slots__ = ("key", "ip", "port", "flags")

    def __init__(self, key: NodePublic, ip: "bytes | None" = None, port: int = 0, flags: int = 0) -> None:
        self.key = key
        self.ip = ip
        self.port = port
        self.flags = flags


def build_peer_present(key: NodePublic, ip: bytes, port: int, flags: int) -> bytes:
    """The 51-byte form current servers send: key, 16-byte IP, port, flags."""
    w = Writer().raw(key.raw).raw(ip16(ip)).u16(port).u8(flags)
    return encode_frame(FRAME_PEER_PRESENT, w.getvalue())


def parse_peer_present(payload: bytes) -> PeerPresent:
    """Reads the 32-, 50- and 51-byte forms; anything after byte 51 is ignored."""
    r = Reader(payload)
    msg = PeerPresent(NodePublic(r.take(KEY_LEN)))
    if r.remaining() >= 18:
        msg.ip = ip_compact(r.take(16))
        msg.port = r.u16()
        if r.remaining():
            msg.flags = r.u8()
    return msg


def build_watch_conns() -> bytes:
    """WatchConns (0x10), mesh peer to server: empty."""
    return encode_header(FRAME_WATCH_CONNS, 0)


def parse_watch_conns(payload: bytes) -> None:
    """Raises "bad_length" unless empty (Tailscale's server closes the connection)."""
    if payload:
        raise RemoteProtocolError("bad_length", "watch conns of %d bytes" % len(payload))


def build_close_peer(peer: NodePublic) -> bytes:
    """ClosePeer (0x11), mesh peer to server: close `peer`'s connections."""
    return encode_frame(FRAME_CLOSE_PEER, peer.raw)


def parse_close_peer(payload: bytes) -> NodePublic:
    """Raises "bad_length" unless exactly a key."""
    if len(payload) != KEY_LEN:
        raise RemoteProtocolError("bad_length", "close peer of %d bytes" % len(payload))
    return NodePublic(payload)


def build_ping(data: bytes) -> bytes:
    """Ping (0x12), either direction: 8 opaque bytes to be echoed."""
    return encode_frame(FRAME_PING, Writer().fixed(data, _PING_LEN).getvalue())


def parse_ping(payload: bytes) -> bytes:
    """The first 8 bytes. Raises "short", or "frame_too_large" over 1000 bytes."""
    if len(payload) > _PING_MAX_LEN:
        raise RemoteProtocolError("frame_too_large", "ping of %d bytes" % len(payload))
    return Reader(payload).take(_PING_LEN)


def build_pong(data: bytes) -> bytes:
    """Pong (0x13): the 8 bytes of the Ping it answers."""
    return encode_frame(FRAME_PONG, Writer().fixed(data, _PING_LEN).getvalue())


def parse_pong(payload: bytes) -> bytes:
    """The first 8 bytes. Raises "short"."""
    return Reader(payload).take(_PING_LEN)


def build_health(problem: str) -> bytes:
    """Health (0x14), server to client: a problem, or "" for healthy again."""
    return encode_frame(FRAME_HEALTH, problem.encode())


def parse_health(payload: bytes) -> str:
    """The problem text. Raises "bad_utf8"."""
    try:
        return bytes(payload).decode()
    except UnicodeError:
        raise RemoteProtocolError("bad_utf8", "health text is not UTF-8")


def build_restarting(reconnect_in_ms: int, try_for_ms: int) -> bytes:
    """Restarting (0x15), server to client: when to reconnect, how long to keep trying."""
    return encode_frame(FRAME_RESTARTING, Writer().u32(reconnect_in_ms).u32(try_for_ms).getvalue())


def parse_restarting(payload: bytes) -> "tuple[int, int]":
    """(reconnect_in_ms, try_for_ms). Raises "short"; extra bytes are ignored."""
    r = Reader(payload)
    return r.u32(), r.u32()
