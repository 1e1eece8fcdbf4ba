"""What a Device reports through `next_event()`: past-tense nouns, plain data.

Each names the peer by its static public key. A shell logs them, updates its
status, or (for PeerEndpointChanged) tells its path selector.
"""

from ..key import NodePublic


class HandshakeCompleted:
    """A new session with `peer` is in use (initiator: response consumed; responder: first packet)."""

    __slots__ = ("peer",)

    def __init__(self, peer: NodePublic) -> None:
        self.peer = peer

    def __repr__(self) -> str:
        return "HandshakeCompleted(%s)" % self.peer.short()


class HandshakeFailed:
    """No handshake with `peer` completed after every retry (about 95 s); its queue was dropped."""

    __slots__ = ("peer",)

    def __init__(self, peer: NodePublic) -> None:
        self.peer = peer

    def __repr__(self) -> str:
        return "HandshakeFailed(%s)" % self.peer.short()


class PeerEndpointChanged:
    """An authenticated packet from `peer` came from `addr`, a new address (roaming)."""

    __slots__ = ("peer", "addr")

    def __init__(self, peer: NodePublic, addr: "tuple[bytes, int]") -> None:
        self.peer = peer
        self.addr = addr

    def __repr__(self) -> str:
        return "PeerEndpointChanged(%s, %r)" % (self.peer.short(), self.addr)


class KeysZeroed:
    """Every key shared with `peer` was erased (no new session for 540 s)."""

    __slots__ = ("peer",)

    def __init__(self, peer: NodePublic) -> None:
        self.peer = peer

    def __repr__(self) -> str:
        return "KeysZeroed(%s)" % self.peer.short()
