"""What a DERP client connection reports: past-tense nouns, plain data.

`client.ClientConn.next_event()` returns these; the shell acts on them
(deliver a packet, drop a route on PeerGone, reconnect on ConnectionTimedOut).
Kept apart from the state machine so that a reader of either file sees one
job, as wg/events.py does for WireGuard.
"""

from .._compat import TYPE_CHECKING
from ..key import NodePublic


class Connected:
    """The server's ServerInfo arrived: the region counts as connected (derp.md §4).

    Attributes:
        server_key: the DERP server's public key, from its greeting.
        token_bucket: (bytes per second, burst bytes) the server asked sends
            to respect, or None when it set no limit.
    """

    __slots__ = ("server_key", "token_bucket")

    def __init__(self, server_key: NodePublic, token_bucket: "tuple[int, int] | None") -> None:
        self.server_key = server_key
        self.token_bucket = token_bucket

    def __repr__(self) -> str:
        return "Connected(%s, %r)" % (self.server_key.short(), self.token_bucket)


class PacketReceived:
    """A RecvPacket: `data` (a WireGuard or disco packet) sent to us by `src`."""

    __slots__ = ("src", "data")

    def __init__(self, src: NodePublic, data: bytes) -> None:
        self.src = src
        self.data = data

    def __repr__(self) -> str:
        return "PacketReceived(%s, %d bytes)" % (self.src.short(), len(self.data))


class PeerGone:
    """`peer` left (reason PEER_GONE_DISCONNECTED) or is not here (PEER_GONE_NOT_HERE)."""

    __slots__ = ("peer", "reason")

    def __init__(self, peer: NodePublic, reason: int) -> None:
        self.peer = peer
        self.reason = reason

    def __repr__(self) -> str:
        return "PeerGone(%s, %d)" % (self.peer.short(), self.reason)


class PeerPresent:
    """A client connected to the server (mesh watchers only; see frames.parse_peer_present).

    Attributes:
        key: its node key; ip: 4 or 16 bytes, or None from old servers;
        port: its source port; flags: PEER_PRESENT_* bits.
    """

    __slots__ = ("key", "ip", "port", "flags")

    def __init__(self, key: NodePublic, ip: "bytes | None", port: int, flags: int) -> None:
        self.key = key
        self.ip = ip
        self.port = port
        self.flags = flags

    def __repr__(self) -> str:
        return "PeerPresent(%s, flags=%d)" % (self.key.short(), self.flags)


class KeepAliveReceived:
    """The server's keep-alive (every 60-65 s); proof that the connection is alive."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KeepAliveReceived()"


class PongReceived:
    """The answer to our `ping(data)`."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return "PongReceived(%s)" % self.data.hex()


class HealthChanged:
    """The server's health message: a problem, or "" for healthy again."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem

    def __repr__(self) -> str:
        return "HealthChanged(%r)" % self.problem


class ServerRestarting:
    """The server is restarting: reconnect after `reconnect_in_ms`, keep trying for `try_for_ms`."""

    __slots__ = ("reconnect_in_ms", "try_for_ms")

    def __init__(self, reconnect_in_ms: int, try_for_ms: int) -> None:
        self.reconnect_in_ms = reconnect_in_ms
        self.try_for_ms = try_for_ms

    def __repr__(self) -> str:
        return "ServerRestarting(%d, %d)" % (self.reconnect_in_ms, self.try_for_ms)


class ConnectionTimedOut:
    """A deadline passed: the login ("login") or the next frame ("read") took too long.

    The connection is over; the shell closes the socket and reconnects.
    """

    __slots__ = ("phase",)

    def __init__(self, phase: str) -> None:
        self.phase = phase

    def __repr__(self) -> str:
        return "ConnectionTimedOut(%r)" % self.phase


class ConnectionClosed:
    """The server closed the stream cleanly between frames."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ConnectionClosed()"


if TYPE_CHECKING:
    Event = (
        Connected
        | PacketReceived
        | PeerGone
        | PeerPresent
        | KeepAliveReceived
        | PongReceived
        | HealthChanged
        | ServerRestarting
        | ConnectionTimedOut
        | ConnectionClosed
    )
