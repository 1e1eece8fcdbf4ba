"""Key types: one class per role, never interchangeable.

Tailscale gives every node three Curve25519 key pairs, and mixing them up is
a classic bug, so each role is its own type (after Tailscale's types/key):

| role    | public class  | text form   | used for                                   |
| ------- | ------------- | ----------- | ------------------------------------------ |
| node    | NodePublic    | nodekey:hex | WireGuard static key and DERP identity     |
| disco   | DiscoPublic   | discokey:hex| NaCl box for disco; new at every start     |
| machine | MachinePublic | mkey:hex    | Noise static key towards control           |
| private | *Private      | privkey:hex | stored in state files, never on the wire   |

Text forms are the prefix plus exactly 64 hex digits, written lowercase and
parsed in either case (shared/protocol/control.md §2). Node keys also have
WireGuard's base64 form, for wg-quick configs.

Private keys compare in constant time, refuse to be hashed (they do not
belong in dicts or sets) and never show their bytes in `repr`.
"""

import binascii

from . import crypto
from ._compat import TYPE_CHECKING
from .errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from typing import Callable, Self

    RandomBytes = Callable[[int], bytes]

KEY_LEN = 32


def _check_len(raw: "bytes | bytearray | memoryview") -> bytes:
    if len(raw) != KEY_LEN:
        raise LocalProtocolError("bad_length", "a key is 32 bytes, got %d" % len(raw))
    return bytes(raw)


def _parse_hex(text: str, prefix: str) -> bytes:
    if not text.startswith(prefix) or len(text) != len(prefix) + 2 * KEY_LEN:
        raise RemoteProtocolError("bad_key_text", "want %s and 64 hex digits" % prefix)
    try:
        return bytes.fromhex(text[len(prefix) :])
    except ValueError:
        raise RemoteProtocolError("bad_key_text", "not hex after " + prefix)


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw).decode().strip()


def _parse_b64(text: str) -> bytes:
    # Accept only the canonical 44-character form, so one key has one spelling.
    if len(text) != 44 or not text.endswith("="):
        raise RemoteProtocolError("bad_key_text", "want 44 base64 characters")
    try:
        raw = binascii.a2b_base64(text)
    except ValueError:
        raise RemoteProtocolError("bad_key_text", "not base64")
    if len(raw) != KEY_LEN or _b64(raw) != text:
        raise RemoteProtocolError("bad_key_text", "not a canonical 32-byte key")
    return raw


def clamp(raw: bytes) -> bytes:
    """X25519 scalar clamping (RFC 7748 §5), as Tailscale applies to new keys."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


class _Public:
    """A public key of one role. Subclasses set PREFIX."""

    __slots__ = ("raw",)
    PREFIX = ""

    def __init__(self, raw: "bytes | bytearray | memoryview") -> None:
        self.raw = _check_len(raw)

    @classmethod
    def from_text(cls, text: str) -> "Self":
        """Parses `<prefix><64 hex>`; raises RemoteProtocolError("bad_key_text")."""
        return cls(_parse_hex(text, cls.PREFIX))

    @classmethod
    def zero(cls) -> "Self":
        return cls(bytes(KEY_LEN))

    def to_text(self) -> str:
        return self.PREFIX + self.raw.hex()

    def is_zero(self) -> bool:
        return self.raw == bytes(KEY_LEN)

    def short(self) -> str:
        """Tailscale's log form: the first five base64 digits in brackets."""
        return "[" + _b64(self.raw)[:5] + "]"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.raw == other.raw

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self.raw)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return type(self).__name__ + "(" + self.to_text() + ")"


class NodePublic(_Public):
    """A node's WireGuard static public key, also its DERP address."""

    __slots__ = ()
    PREFIX = "nodekey:"

    @classmethod
    def from_base64(cls, text: str) -> "NodePublic":
        """Parses WireGuard's base64 form (wg-quick `PublicKey =`)."""
        return cls(_parse_b64(text))

    def to_base64(self) -> str:
        return _b64(self.raw)

    def wireguard_short(self) -> str:
        """wireguard-go's log form, `peer(AbCd…WxYz)`."""
        b64 = _b64(self.raw)
        return "peer(" + b64[:4] + "\u2026" + b64[39:43] + ")"


class DiscoPublic(_Public):
    """A disco public key; peers learn it from the netmap."""

    __slots__ = ()
    PREFIX = "discokey:"

    def short(self) -> str:
        """Tailscale's disco log form, `d:` and the first 8 bytes in hex."""
        return "d:" + self.raw[:8].hex()


class MachinePublic(_Public):
    """A machine's Noise static public key towards control (and control's own)."""

    __slots__ = ()
    PREFIX = "mkey:"


class _Private:
    """A private key of one role. Subclasses set PUBLIC to their public class."""

    __slots__ = ("_raw", "_public")
    PREFIX = "privkey:"
    PUBLIC: "type[_Public]" = _Public

    def __init__(self, raw: "bytes | bytearray | memoryview") -> None:
        self._raw = _check_len(raw)
        self._public: "_Public | None" = None

    @classmethod
    def generate(cls, random_bytes: "RandomBytes") -> "Self":
        """A fresh clamped key from the caller's randomness (the core has none)."""
        return cls(clamp(random_bytes(KEY_LEN)))

    @classmethod
    def from_text(cls, text: str) -> "Self":
        return cls(_parse_hex(text, cls.PREFIX))

    def to_text(self) -> str:
        """`privkey:<hex>`, for state files written with mode 0600."""
        return self.PREFIX + self._raw.hex()

    def raw_private(self) -> bytes:
        """The secret bytes; named loudly so that uses stand out in review."""
        return self._raw

    def public(self) -> "_Public":
        """The matching public key, computed once."""
        if self._public is None:
            self._public = self.PUBLIC(crypto.x25519_base(self._raw))
        return self._public

    def shared_secret(self, peer: "_Public") -> bytes:
        """X25519 with a peer's public key of the same role.

        Raises:
            LocalProtocolError: the peer key belongs to another role.
            CryptoError: the peer key is a low-order point.
        """
        if type(peer) is not self.PUBLIC:
            raise LocalProtocolError("wrong_key_role", type(peer).__name__)
        return crypto.x25519(self._raw, peer.raw)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return False
        return crypto.constant_time_equal(self._raw, other._raw)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return type(self).__name__ + "(<secret>)"

    __str__ = __repr__


class NodePrivate(_Private):
    __slots__ = ()
    PUBLIC = NodePublic

    if TYPE_CHECKING:

        def public(self) -> NodePublic: ...

    @classmethod
    def from_base64(cls, text: str) -> "NodePrivate":
        """Parses WireGuard's base64 form (wg-quick `PrivateKey =`)."""
        return cls(_parse_b64(text))

    def to_base64(self) -> str:
        return _b64(self._raw)


class DiscoPrivate(_Private):
    __slots__ = ()
    PUBLIC = DiscoPublic

    if TYPE_CHECKING:

        def public(self) -> DiscoPublic: ...


class MachinePrivate(_Private):
    __slots__ = ()
    PUBLIC = MachinePublic

    if TYPE_CHECKING:

        def public(self) -> MachinePublic: ...
