"""Noise_IKpsk2 as WireGuard uses it (whitepaper §5.4; wireguard.md §3), both roles.

Theory of operation. A `Handshake` is one peer's handshake state
(wireguard-go's `Handshake`): the running hash H, the chaining key C, our
ephemeral key, both indices, and what protects the responder (the last
timestamp accepted and when). It moves through five states:

    ZEROED --create_initiation--> INITIATION_CREATED --consume_response--> RESPONSE_CONSUMED
    ZEROED --consume_initiation-> INITIATION_CONSUMED --create_response--> RESPONSE_CREATED

and `derive_keys` turns either final state into transport keys and zeroes it.
A fresh initiation may overwrite any state, as in wireguard-go: whichever
handshake finishes first wins.

The steps, with HASH = BLAKE2s-256, KDFn = HKDF over HMAC-BLAKE2s, DH = X25519,
and every AEAD under the zero nonce:

    initiator                                   responder
    C = Ci; H = HASH(Hi || S_r.pub)             (the same, with its own S_r.pub)
    E_i = new; C = KDF1(C, E_i.pub); H = HASH(H || E_i.pub)
    C, k = KDF2(C, DH(E_i, S_r))          ==    DH(S_r, E_i)
    static = AEAD(k, S_i.pub, H); H = HASH(H || static)
    C, k = KDF2(C, DH(S_i, S_r))          ==    precomputed per peer
    timestamp = AEAD(k, TAI64N, H); H = HASH(H || timestamp)
                                                E_r = new; C = KDF1(C, E_r.pub); H = HASH(H || E_r.pub)
                                                C = KDF1(C, DH(E_r, E_i)); C = KDF1(C, DH(E_r, S_i))
                                                C, t, k = KDF3(C, psk); H = HASH(H || t)
                                                empty = AEAD(k, "", H); H = HASH(H || empty)
    send, recv = KDF2(C, "")                    recv, send = KDF2(C, "")

The initial C and H are fixed (HASH of the construction name, then HASH of
that and the identifier) and are written out below; tests recompute them.

Everything here raises; the device turns a raise into a counted drop:
`CryptoError("bad_tag")` for a tag that does not verify (a wrong key or a
wrong preshared key), `CryptoError("low_order_point")` for a bad ephemeral,
and `RemoteProtocolError` with "unknown_peer", "stale_timestamp" (replay),
"flood" or "unexpected_response".
"""

from .. import crypto
from .._compat import TYPE_CHECKING, const
from ..errors import CryptoError, LocalProtocolError, RemoteProtocolError
from ..key import NodePrivate, NodePublic, clamp
from .constants import HANDSHAKE_INITIATION_RATE_MS
from .messages import MessageInitiation, MessageResponse

if TYPE_CHECKING:
    from typing import Callable, Protocol, TypeVar

    class HasHandshake(Protocol):
        handshake: "Handshake"

    P = TypeVar("P", bound=HasHandshake)

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
# HASH(CONSTRUCTION) and HASH(INITIAL_CHAIN_KEY || IDENTIFIER), wireguard.md §1.
INITIAL_CHAIN_KEY = bytes.fromhex("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
INITIAL_HASH = bytes.fromhex("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")

STATE_ZEROED = const(0)
STATE_INITIATION_CREATED = const(1)
STATE_INITIATION_CONSUMED = const(2)
STATE_RESPONSE_CREATED = const(3)
STATE_RESPONSE_CONSUMED = const(4)

_ZERO_NONCE = bytes(12)
_ZERO_KEY = bytes(32)


def mix_hash(h: bytes, data: bytes) -> bytes:
    return crypto.blake2s(h + data)


def mix_key(c: bytes, data: bytes) -> bytes:
    return crypto.hkdf_blake2s(c, data, 1)[0]


def _kdf2(c: bytes, data: bytes) -> "tuple[bytes, bytes]":
    out = crypto.hkdf_blake2s(c, data, 2)
    return out[0], out[1]


def new_ephemeral(random_bytes: "Callable[[int], bytes]") -> bytes:
    """A fresh clamped ephemeral private key from the caller's randomness."""
    return clamp(random_bytes(32))


class Handshake:
    """One peer's handshake state.

    Args:
        local: our static key.
        remote_static: the peer's static public key.
        preshared_key: 32 bytes, or None for none (32 zero bytes on the wire).

    Raises:
        LocalProtocolError("bad_length"): a preshared key that is not 32 bytes.
    """

    __slots__ = (
        "state",
        "hash",
        "chain_key",
        "local_ephemeral",
        "remote_ephemeral",
        "local_index",
        "remote_index",
        "remote_static",
        "preshared_key",
        "precomputed_static_static",
        "last_timestamp",
        "last_initiation_consumed_ms",
        "last_sent_ms",
    )

    def __init__(
        self, local: NodePrivate, remote_static: NodePublic, preshared_key: "bytes | None" = None
    ) -> None:
        self.state = STATE_ZEROED
        self.hash = b""
        self.chain_key = b""
        self.local_ephemeral = b""
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0
        self.remote_static = remote_static
        self.preshared_key = _ZERO_KEY
        self.set_preshared_key(preshared_key)
        self.precomputed_static_static: "bytes | None" = None
        try:
            self.precomputed_static_static = local.shared_secret(remote_static)
        except CryptoError:
            pass  # a low-order peer key: every handshake with it fails with "bad_peer_key"
        self.last_timestamp = bytes(12)
        self.last_initiation_consumed_ms: "int | None" = None
        self.last_sent_ms: "int | None" = None

    def set_preshared_key(self, preshared_key: "bytes | None") -> None:
        if preshared_key is None:
            preshared_key = _ZERO_KEY
        if len(preshared_key) != 32:
            raise LocalProtocolError("bad_length", "a preshared key is 32 bytes, got %d" % len(preshared_key))
        self.preshared_key = bytes(preshared_key)

    def clear(self) -> None:
        """Forgets the handshake in progress (not the replay and flood marks)."""
        self.state = STATE_ZEROED
        self.hash = b""
        self.chain_key = b""
        self.local_ephemeral = b""
        self.remote_ephemeral = b""
        self.local_index = 0

    def _static_static(self) -> bytes:
        if self.precomputed_static_static is None:
            raise RemoteProtocolError("bad_peer_key", "the peer's static key is a low-order point")
        return self.precomputed_static_static


def create_initiation(
    local: NodePrivate, hs: Handshake, sender_index: int, timestamp: bytes, ephemeral: bytes
) -> MessageInitiation:
    """Builds an initiation to `hs.remote_static` (mac fields zero: cookie.py adds them).

    Args:
        local: our static key.
        hs: the peer's handshake state; overwritten, now INITIATION_CREATED.
        sender_index: our fresh local index for this handshake.
        timestamp: TAI64N, 12 bytes.
        ephemeral: a fresh private key (`new_ephemeral`).
    """
    static_static = hs._static_static()
    h = mix_hash(INITIAL_HASH, hs.remote_static.raw)
    e_pub = crypto.x25519_base(ephemeral)
    c = mix_key(INITIAL_CHAIN_KEY, e_pub)
    h = mix_hash(h, e_pub)
    c, k = _kdf2(c, crypto.x25519(ephemeral, hs.remote_static.raw))
    encrypted_static = crypto.aead_seal(k, _ZERO_NONCE, local.public().raw, h)
    h = mix_hash(h, encrypted_static)
    c, k = _kdf2(c, static_static)
    encrypted_timestamp = crypto.aead_seal(k, _ZERO_NONCE, timestamp, h)
    hs.hash = mix_hash(h, encrypted_timestamp)
    hs.chain_key = c
    hs.local_ephemeral = ephemeral
    hs.local_index = sender_index
    hs.state = STATE_INITIATION_CREATED
    return MessageInitiation(sender_index, e_pub, encrypted_static, encrypted_timestamp)


def consume_initiation(
    local: NodePrivate, msg: MessageInitiation, find: "Callable[[NodePublic], P | None]", now_ms: int
) -> "P":
    """Authenticates an initiation and records it in the sender's handshake state.

    Args:
        local: our static key.
        msg: the parsed initiation (mac1 already checked by the caller).
        find: returns the peer owning a static key, or None; the peer's
            `handshake` is updated to INITIATION_CONSUMED.
        now_ms: for the flood check.

    Returns:
        The peer `find` returned.

    Raises:
        CryptoError: "bad_tag" or "low_order_point".
        RemoteProtocolError: "unknown_peer", "bad_peer_key", "stale_timestamp", "flood".
    """
    h = mix_hash(mix_hash(INITIAL_HASH, local.public().raw), msg.ephemeral)
    c = mix_key(INITIAL_CHAIN_KEY, msg.ephemeral)
    c, k = _kdf2(c, crypto.x25519(local.raw_private(), msg.ephemeral))
    static = crypto.aead_open(k, _ZERO_NONCE, msg.encrypted_static, h)
    h = mix_hash(h, msg.encrypted_static)
    peer = find(NodePublic(static))
    if peer is None:
        raise RemoteProtocolError("unknown_peer", "initiation from a key we do not know")
    hs = peer.handshake
    c, k = _kdf2(c, hs._static_static())
    timestamp = crypto.aead_open(k, _ZERO_NONCE, msg.encrypted_timestamp, h)
    h = mix_hash(h, msg.encrypted_timestamp)
    # Whitepaper §5.1: a replayed initiation must not reset the responder's session.
    if timestamp <= hs.last_timestamp:
        raise RemoteProtocolError("stale_timestamp", "timestamp not after the last one accepted")
    last = hs.last_initiation_consumed_ms
    if last is not None and now_ms - last <= HANDSHAKE_INITIATION_RATE_MS:
        raise RemoteProtocolError("flood", "initiations less than 20 ms apart")
    hs.hash = h
    hs.chain_key = c
    hs.remote_index = msg.sender
    hs.remote_ephemeral = msg.ephemeral
    hs.last_timestamp = timestamp
    hs.last_initiation_consumed_ms = now_ms
    hs.state = STATE_INITIATION_CONSUMED
    return peer


def create_response(hs: Handshake, sender_index: int, ephemeral: bytes) -> MessageResponse:
    """Builds the response to the initiation `hs` consumed; `hs` becomes RESPONSE_CREATED.

    Raises:
        LocalProtocolError("bad_state"): no initiation was consumed.
        CryptoError("low_order_point"): the initiator's ephemeral is low-order.
    """
    if hs.state != STATE_INITIATION_CONSUMED:
        raise LocalProtocolError("bad_state", "no initiation to respond to")
    e_pub = crypto.x25519_base(ephemeral)
    h = mix_hash(hs.hash, e_pub)
    c = mix_key(hs.chain_key, e_pub)
    c = mix_key(c, crypto.x25519(ephemeral, hs.remote_ephemeral))
    c = mix_key(c, crypto.x25519(ephemeral, hs.remote_static.raw))
    c, tau, k = crypto.hkdf_blake2s(c, hs.preshared_key, 3)
    h = mix_hash(h, tau)
    encrypted_nothing = crypto.aead_seal(k, _ZERO_NONCE, b"", h)
    hs.hash = mix_hash(h, encrypted_nothing)
    hs.chain_key = c
    hs.local_ephemeral = ephemeral
    hs.local_index = sender_index
    hs.state = STATE_RESPONSE_CREATED
    return MessageResponse(sender_index, hs.remote_index, e_pub, encrypted_nothing)


def consume_response(local: NodePrivate, hs: Handshake, msg: MessageResponse) -> None:
    """Authenticates the response to our initiation; `hs` becomes RESPONSE_CONSUMED.

    `hs` is only changed if everything verifies, so a forged response cannot
    spoil the handshake in flight.

    Raises:
        RemoteProtocolError("unexpected_response"): we have no initiation in flight.
        CryptoError: "bad_tag" (a wrong key or preshared key) or "low_order_point".
    """
    if hs.state != STATE_INITIATION_CREATED:
        raise RemoteProtocolError("unexpected_response", "no initiation in flight")
    h = mix_hash(hs.hash, msg.ephemeral)
    c = mix_key(hs.chain_key, msg.ephemeral)
    c = mix_key(c, crypto.x25519(hs.local_ephemeral, msg.ephemeral))
    c = mix_key(c, crypto.x25519(local.raw_private(), msg.ephemeral))
    c, tau, k = crypto.hkdf_blake2s(c, hs.preshared_key, 3)
    h = mix_hash(h, tau)
    crypto.aead_open(k, _ZERO_NONCE, msg.encrypted_nothing, h)
    hs.hash = mix_hash(h, msg.encrypted_nothing)
    hs.chain_key = c
    hs.remote_index = msg.sender
    hs.state = STATE_RESPONSE_CONSUMED


def derive_keys(hs: Handshake) -> "tuple[bytes, bytes, bool]":
    """(send key, receive key, we initiated) from a finished handshake, which is then zeroed.

    The caller reads `hs.local_index` and `hs.remote_index` first.

    Raises:
        LocalProtocolError("bad_state"): the handshake is not finished.
    """
    if hs.state == STATE_RESPONSE_CONSUMED:
        send, recv = _kdf2(hs.chain_key, b"")
        initiator = True
    elif hs.state == STATE_RESPONSE_CREATED:
        recv, send = _kdf2(hs.chain_key, b"")
        initiator = False
    else:
        raise LocalProtocolError("bad_state", "handshake not finished")
    hs.clear()
    return send, recv, initiator
