"""Per-peer state, and the records a shell uses to configure and inspect peers.

A `Peer` is everything the device knows about one remote static key
(wireguard-go's `Peer`): its configuration, its handshake state, its up to
three keypairs, its cookie state, its timers and the packets staged while
a handshake runs. The device owns the logic; a Peer is data.
"""

from .._compat import TYPE_CHECKING
from ..errors import LocalProtocolError
from ..key import NodePrivate, NodePublic
from .cookie import CookieGenerator
from .handshake import Handshake
from .session import Keypairs
from .timers import PeerTimers

if TYPE_CHECKING:
    from typing import Callable


class PeerConfig:
    """One `[Peer]` section.

    Attributes:
        public_key: the peer's static key.
        allowed_ips: (ip bytes, prefix length) pairs routed to this peer and
            accepted from it.
        endpoint: (ip bytes, port) to send to until the peer roams, or None.
        preshared_key: 32 bytes, or None.
        persistent_keepalive_s: send a keepalive after this many seconds
            without traffic; 0 for never.
    """

    __slots__ = ("public_key", "allowed_ips", "endpoint", "preshared_key", "persistent_keepalive_s")

    def __init__(
        self,
        public_key: NodePublic,
        allowed_ips: "list[tuple[bytes, int]] | None" = None,
        endpoint: "tuple[bytes, int] | None" = None,
        preshared_key: "bytes | None" = None,
        persistent_keepalive_s: int = 0,
    ) -> None:
        if preshared_key is not None and len(preshared_key) != 32:
            raise LocalProtocolError("bad_length", "a preshared key is 32 bytes, got %d" % len(preshared_key))
        if not 0 <= persistent_keepalive_s <= 65535:
            raise LocalProtocolError("out_of_range", "persistent keepalive %d s" % persistent_keepalive_s)
        self.public_key = public_key
        self.allowed_ips = [] if allowed_ips is None else list(allowed_ips)
        self.endpoint = endpoint
        self.preshared_key = preshared_key
        self.persistent_keepalive_s = persistent_keepalive_s


class PeerStatus:
    """A snapshot of one peer, for `wg show`.

    Attributes:
        public_key, endpoint, allowed_ips, persistent_keepalive_s: as configured
            (endpoint as last seen).
        preshared_key_set: whether a preshared key is configured.
        last_handshake_unix_ms: wall-clock time of the last completed handshake, 0 for never.
        rx_bytes, tx_bytes: authenticated datagram bytes received from and sent to the peer.
    """

    __slots__ = (
        "public_key",
        "endpoint",
        "allowed_ips",
        "preshared_key_set",
        "persistent_keepalive_s",
        "last_handshake_unix_ms",
        "rx_bytes",
        "tx_bytes",
    )

    def __init__(
        self,
        public_key: NodePublic,
        endpoint: "tuple[bytes, int] | None",
        allowed_ips: "list[tuple[bytes, int]]",
        preshared_key_set: bool,
        persistent_keepalive_s: int,
        last_handshake_unix_ms: int,
        rx_bytes: int,
        tx_bytes: int,
    ) -> None:
        self.public_key = public_key
        self.endpoint = endpoint
        self.allowed_ips = allowed_ips
        self.preshared_key_set = preshared_key_set
        self.persistent_keepalive_s = persistent_keepalive_s
        self.last_handshake_unix_ms = last_handshake_unix_ms
        self.rx_bytes = rx_bytes
        self.tx_bytes = tx_bytes


class Peer:
    """The device's state for one peer.

    Args:
        local: our static key (the handshake precomputes DH(local, peer) once).
        cfg: the peer's configuration.
        jitter_ms: the device's jitter source, for the timers.
    """

    __slots__ = (
        "public_key",
        "endpoint",
        "preshared_key_set",
        "handshake",
        "keypairs",
        "cookie",
        "timers",
        "staged",
        "last_sent_timestamp",
        "last_handshake_unix_ms",
        "rx_bytes",
        "tx_bytes",
    )

    def __init__(self, local: NodePrivate, cfg: PeerConfig, jitter_ms: "Callable[[], int]") -> None:
        self.public_key = cfg.public_key
        self.endpoint = cfg.endpoint
        self.preshared_key_set = cfg.preshared_key is not None
        self.handshake = Handshake(local, cfg.public_key, cfg.preshared_key)
        self.keypairs = Keypairs()
        self.cookie = CookieGenerator(cfg.public_key)
        self.timers = PeerTimers(jitter_ms, cfg.persistent_keepalive_s)
        self.staged: "list[bytes]" = []
        self.last_sent_timestamp: "bytes | None" = None
        self.last_handshake_unix_ms = 0
        self.rx_bytes = 0
        self.tx_bytes = 0

    def update(self, cfg: PeerConfig) -> None:
        """Applies a changed configuration; sessions and counters survive."""
        if cfg.endpoint is not None:
            self.endpoint = cfg.endpoint
        self.handshake.set_preshared_key(cfg.preshared_key)
        self.preshared_key_set = cfg.preshared_key is not None
        self.timers.persistent_keepalive_s = cfg.persistent_keepalive_s
        if not cfg.persistent_keepalive_s:
            self.timers.persistent_keepalive_ms = None
