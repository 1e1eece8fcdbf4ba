"""mac1, mac2 and cookie replies: WireGuard's DoS defence (whitepaper §5.4.4, §5.4.7).

Every handshake message ends in two 16-byte MACs (keyed BLAKE2s, not HMAC):

    mac1 = MAC(HASH("mac1----" || receiver's static public key), msg[:mac1 offset])
    mac2 = MAC(cookie, msg[:mac2 offset])      or 16 zero bytes without a cookie

mac1 proves the sender knows our public key, so a receiver drops anything
without a valid mac1 before spending a Diffie-Hellman on it. mac2 proves the
sender can receive at its source address: when a receiver is under load it
answers a handshake lacking a valid mac2 with a cookie reply and nothing else:

    cookie    = MAC(Rm, source ip || port)       Rm: 32 random bytes, renewed every 120 s
    reply     = XAEAD(HASH("cookie--" || receiver's public key), random nonce24,
                      cookie, AD = mac1 of the message answered)

The sender decrypts it with the mac1 it last sent, and uses the cookie for
mac2 on its handshake messages for the next 120 s (Cookie-Refresh-Time). It
does not resend at once: the normal retransmit timer does that.

Two sides, as in wireguard-go: a `CookieChecker` per device (receiving:
checks MACs, makes replies, rotates Rm), a `CookieGenerator` per peer
(sending: adds MACs, keeps the cookie). `LoadMonitor` is the device's
"under load" policy: more than `handshakes_per_s` handshake messages in a
one-second window puts it under load for the next second.
"""

from .. import crypto
from .._compat import TYPE_CHECKING
from ..errors import RemoteProtocolError
from ..key import NodePublic
from .constants import COOKIE_REFRESH_TIME_MS, UNDER_LOAD_AFTER_MS, UNDER_LOAD_HANDSHAKES_PER_S
from .messages import MAC_LEN, MessageCookieReply

if TYPE_CHECKING:
    from typing import Callable

LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"
_ZERO_MAC = bytes(16)


def _mac(key: bytes, data: "bytes | memoryview") -> bytes:
    return crypto.blake2s(data, key=key, digest_size=MAC_LEN)


def source_bytes(src: "tuple[bytes, int]") -> bytes:
    """The bytes a cookie binds to: ip then port, big-endian. Opaque to the peer."""
    port = src[1]
    return src[0] + bytes((port >> 8 & 0xFF, port & 0xFF))


class CookieChecker:
    """The receiving side, one per device, keyed by our own public key.

    Args:
        local: our static public key.
        random_bytes: for the cookie secret and reply nonces.
    """

    __slots__ = ("_mac1_key", "_encryption_key", "_random_bytes", "_secret", "_secret_set_ms")

    def __init__(self, local: NodePublic, random_bytes: "Callable[[int], bytes]") -> None:
        self._mac1_key = crypto.blake2s(LABEL_MAC1 + local.raw)
        self._encryption_key = crypto.blake2s(LABEL_COOKIE + local.raw)
        self._random_bytes = random_bytes
        self._secret = b""
        self._secret_set_ms: "int | None" = None

    def check_mac1(self, msg: bytes, mac1_offset: int) -> bool:
        """Whether `msg` carries a valid mac1 for us."""
        want = _mac(self._mac1_key, memoryview(msg)[:mac1_offset])
        return crypto.constant_time_equal(want, msg[mac1_offset : mac1_offset + MAC_LEN])

    def _fresh(self, now_ms: int) -> bool:
        return self._secret_set_ms is not None and now_ms - self._secret_set_ms <= COOKIE_REFRESH_TIME_MS

    def check_mac2(self, msg: bytes, mac2_offset: int, src: "tuple[bytes, int]", now_ms: int) -> bool:
        """Whether `msg` carries a mac2 made with the cookie we would give `src` now."""
        if not self._fresh(now_ms):
            return False
        cookie = _mac(self._secret, source_bytes(src))
        want = _mac(cookie, memoryview(msg)[:mac2_offset])
        return crypto.constant_time_equal(want, msg[mac2_offset : mac2_offset + MAC_LEN])

    def create_reply(self, msg: bytes, mac1_offset: int, src: "tuple[bytes, int]", now_ms: int) -> bytes:
        """The cookie reply to handshake message `msg` (whose sender index is at offset 4)."""
        if not self._fresh(now_ms):
            self._secret = self._random_bytes(32)
            self._secret_set_ms = now_ms
        cookie = _mac(self._secret, source_bytes(src))
        nonce = self._random_bytes(24)
        mac1 = msg[mac1_offset : mac1_offset + MAC_LEN]
        sealed = crypto.xaead_seal(self._encryption_key, nonce, cookie, mac1)
        receiver = msg[4] | msg[5] << 8 | msg[6] << 16 | msg[7] << 24
        return MessageCookieReply(receiver, nonce, sealed).to_bytes()


class CookieGenerator:
    """The sending side, one per peer, keyed by the peer's public key."""

    __slots__ = ("_mac1_key", "_encryption_key", "_cookie", "_cookie_set_ms", "_last_mac1")

    def __init__(self, remote: NodePublic) -> None:
        self._mac1_key = crypto.blake2s(LABEL_MAC1 + remote.raw)
        self._encryption_key = crypto.blake2s(LABEL_COOKIE + remote.raw)
        self._cookie = b""
        self._cookie_set_ms: "int | None" = None
        self._last_mac1: "bytes | None" = None

    def add_macs(self, msg: bytes, mac1_offset: int, now_ms: int) -> bytes:
        """`msg` with its mac1 and mac2 filled in (mac2 zero unless a cookie is fresh)."""
        head = msg[:mac1_offset]
        mac1 = _mac(self._mac1_key, head)
        self._last_mac1 = mac1
        mac2 = _ZERO_MAC
        if self._cookie_set_ms is not None and now_ms - self._cookie_set_ms <= COOKIE_REFRESH_TIME_MS:
            mac2 = _mac(self._cookie, head + mac1)
        return head + mac1 + mac2

    def consume_reply(self, reply: MessageCookieReply, now_ms: int) -> None:
        """Stores the cookie a reply carries, for mac2 on our next handshake message.

        Raises:
            RemoteProtocolError("unexpected_cookie"): we never sent a handshake to this peer.
            CryptoError("bad_tag"): not from the peer, or not about our last message.
        """
        if self._last_mac1 is None:
            raise RemoteProtocolError("unexpected_cookie", "no handshake message sent")
        cookie = crypto.xaead_open(self._encryption_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        self._cookie = cookie
        self._cookie_set_ms = now_ms


class LoadMonitor:
    """Decides when the device is under load, from how many handshakes arrive.

    Args:
        handshakes_per_s: the rate above which cookies are demanded; 0 demands
            them always, None never.
    """

    __slots__ = ("_limit", "_window_start_ms", "_count", "_until_ms")

    def __init__(self, handshakes_per_s: "int | None" = UNDER_LOAD_HANDSHAKES_PER_S) -> None:
        self._limit = handshakes_per_s
        self._window_start_ms = 0
        self._count = 0
        self._until_ms: "int | None" = None

    def note_handshake(self, now_ms: int) -> bool:
        """Counts one arriving handshake message; returns whether we are under load."""
        if self._limit is None:
            return False
        if now_ms - self._window_start_ms >= 1000 or now_ms < self._window_start_ms:
            self._window_start_ms = now_ms
            self._count = 0
        self._count += 1
        if self._count > self._limit:
            self._until_ms = now_ms + UNDER_LOAD_AFTER_MS
        return self._until_ms is not None and now_ms < self._until_ms
