"""Keypairs: the transport keys a handshake yields, and the per-packet crypto.

A `Keypair` holds one session (whitepaper §5.4.6): a bound ChaCha20-Poly1305
cipher per direction, the next send counter, the replay filter for received
counters, both indices, when it was derived and whether we initiated it.

A peer holds up to three (`Keypairs`, wireguard-go's names and rules):

* `current`: what we send with;
* `previous`: the one before, still accepted on receive so that packets in
  flight during a rekey are not lost;
* `next`: a responder's new keypair, not yet used by us. The initiator must
  confirm it first (whitepaper §5.4.6: the responder may not send until it
  has received), so it becomes `current` when the first packet under it
  arrives (`confirm`).

Transport plaintext is the IP packet padded with zeros to a multiple of 16,
but never beyond the MTU (wireguard-go's `calculatePaddingSize`); the receiver
cuts the padding off using the IP header's length (`unpad`).

The per-packet functions avoid every object they can: the AEAD is bound once,
the padding comes from a table of zero strings, the header and nonce are
single `struct.pack` calls.
"""

import struct

from .. import crypto
from .._compat import TYPE_CHECKING, const
from ..errors import RemoteProtocolError
from .constants import MESSAGE_TRANSPORT, PADDING_MULTIPLE, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME_MS
from .replay import ReplayFilter

if TYPE_CHECKING:
    from .peer import Peer

_PADS = tuple(bytes(i) for i in range(16))
_IPV4_HEADER_LEN = const(20)
_IPV6_HEADER_LEN = const(40)


class Keypair:
    """One session's keys and counters.

    Attributes:
        send, receive: objects with `seal(nonce, pt, ad)` / `open(nonce, ct, ad)`.
        send_counter: the counter the next sent packet carries.
        replay: the receive side's ReplayFilter.
        created_ms: when the keys were derived.
        is_initiator: True if we sent the initiation.
        local_index: the receiver index the peer puts on packets to us.
        remote_index: the receiver index we put on packets to the peer.
        peer: the peer this keypair belongs to.
    """

    __slots__ = (
        "send",
        "receive",
        "send_counter",
        "replay",
        "created_ms",
        "is_initiator",
        "local_index",
        "remote_index",
        "peer",
    )

    def __init__(
        self,
        send_key: bytes,
        receive_key: bytes,
        is_initiator: bool,
        local_index: int,
        remote_index: int,
        created_ms: int,
        peer: "Peer",
    ) -> None:
        self.send = crypto.aead_cipher(send_key)
        self.receive = crypto.aead_cipher(receive_key)
        self.send_counter = 0
        self.replay = ReplayFilter()
        self.created_ms = created_ms
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index
        self.peer = peer

    def can_send(self, now_ms: int) -> bool:
        """Whether this keypair may still encrypt (Reject-After-Messages and -Time)."""
        return self.send_counter < REJECT_AFTER_MESSAGES and now_ms - self.created_ms < REJECT_AFTER_TIME_MS

    def encrypt(self, packet: bytes, mtu: int) -> bytes:
        """A whole transport message carrying `packet` (b"" for a keepalive).

        The caller checks `can_send` first.
        """
        counter = self.send_counter
        self.send_counter = counter + 1
        pad = padding_len(len(packet), mtu)
        if pad:
            packet = packet + _PADS[pad]
        sealed = self.send.seal(struct.pack("<IQ", 0, counter), packet, b"")
        return struct.pack("<IIQ", MESSAGE_TRANSPORT, self.remote_index, counter) + sealed

    def decrypt(self, data: bytes, counter: int) -> bytes:
        """The padded plaintext of transport message `data` carrying `counter`.

        The caller checks the replay window afterwards: only authenticated
        counters may move it.

        Raises:
            CryptoError("bad_tag"): forged, corrupted, or not for this key.
        """
        # A memoryview, not a slice: the ciphertext is not copied.
        content = memoryview(data)[16:]
        return self.receive.open(struct.pack("<IQ", 0, counter), content, b"")


def padding_len(size: int, mtu: int) -> int:
    """Zero bytes to append to a `size`-byte packet (wireguard-go's calculatePaddingSize)."""
    last_unit = size
    if mtu == 0:
        return ((last_unit + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)) - last_unit
    if last_unit > mtu:
        last_unit %= mtu
    padded = (last_unit + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)
    if padded > mtu:
        padded = mtu
    return padded - last_unit


def unpad(plaintext: bytes) -> bytes:
    """The IP packet inside a decrypted plaintext, padding cut off by its header's length.

    Raises:
        RemoteProtocolError: "bad_ip_version" (neither 4 nor 6), "bad_ip_length"
            (shorter than its header or its own length field).
    """
    n = len(plaintext)
    version = plaintext[0] >> 4 if n else 0
    if version == 4:
        if n < _IPV4_HEADER_LEN:
            raise RemoteProtocolError("bad_ip_length", "IPv4 packet of %d bytes" % n)
        length = (plaintext[2] << 8) | plaintext[3]
    elif version == 6:
        if n < _IPV6_HEADER_LEN:
            raise RemoteProtocolError("bad_ip_length", "IPv6 packet of %d bytes" % n)
        length = ((plaintext[4] << 8) | plaintext[5]) + _IPV6_HEADER_LEN
    else:
        raise RemoteProtocolError("bad_ip_version", "IP version %d" % version)
    if length > n:
        raise RemoteProtocolError("bad_ip_length", "header says %d bytes, have %d" % (length, n))
    if length == n:
        return plaintext
    return plaintext[:length]


class Keypairs:
    """A peer's previous, current and next keypairs, rotated by wireguard-go's rules.

    Methods that retire keypairs return them, so the device can drop their
    indices.
    """

    __slots__ = ("previous", "current", "next")

    def __init__(self) -> None:
        self.previous: "Keypair | None" = None
        self.current: "Keypair | None" = None
        self.next: "Keypair | None" = None

    def install(self, kp: Keypair) -> "list[Keypair]":
        """Adds a freshly derived keypair; returns the keypairs it retires.

        An initiator's keypair is confirmed (the response proved the peer has
        it) and becomes current at once. A responder's waits in `next`.
        """
        retired: "list[Keypair]" = []
        if kp.is_initiator:
            if self.next is not None:
                # A responder keypair never confirmed: keep it as previous,
                # since the peer may already be sending with it.
                _append(retired, self.previous)
                _append(retired, self.current)
                self.previous = self.next
                self.next = None
            else:
                _append(retired, self.previous)
                self.previous = self.current
            self.current = kp
        else:
            _append(retired, self.next)
            _append(retired, self.previous)
            self.next = kp
            self.previous = None
        return retired

    def confirm(self, kp: Keypair) -> "Keypair | None":
        """A packet arrived under `kp`: if it is `next`, it becomes current.

        Returns the keypair this retires (the old previous), or None. Callers
        first check `kp is keypairs.next`, which is rare, so the common path
        costs one comparison.
        """
        if kp is not self.next:
            return None
        retired = self.previous
        self.previous = self.current
        self.current = kp
        self.next = None
        return retired

    def clear(self) -> "list[Keypair]":
        """Forgets every keypair (key zeroing); returns them."""
        out: "list[Keypair]" = []
        _append(out, self.previous)
        _append(out, self.current)
        _append(out, self.next)
        self.previous = self.current = self.next = None
        return out

    def all(self) -> "list[Keypair]":
        out: "list[Keypair]" = []
        _append(out, self.previous)
        _append(out, self.current)
        _append(out, self.next)
        return out


def _append(out: "list[Keypair]", kp: "Keypair | None") -> None:
    if kp is not None:
        out.append(kp)
