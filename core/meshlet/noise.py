"""The Noise Protocol Framework (revision 34), as much of it as meshlet needs.

Implements `Noise_IK_25519_ChaChaPoly_BLAKE2s`, the handshake of Tailscale's
TS2021 control protocol (meshlet.control.base builds the framing on top).
The objects and methods carry the spec's names (§5):

* `CipherState` (§5.1): a key `k` and a counter `n`; `encrypt_with_ad`,
  `decrypt_with_ad`.
* `SymmetricState` (§5.2): `h` and `ck`; `mix_key`, `mix_hash`,
  `encrypt_and_hash`, `decrypt_and_hash`, `split`.
* `HandshakeState` (§5.3): the IK pattern's two messages, for either role.

Primitives (§12): DH = X25519, cipher = ChaCha20-Poly1305 (IETF), hash =
BLAKE2s-256, HKDF = HMAC-BLAKE2s with two or three 32-byte outputs; all come
from meshlet.crypto.

The pattern (§7.5), with the responder's static key known in advance:

    IK:
      <- s
      ...
      -> e, es, s, ss      initiator: 32 e | 48 enc(s) | enc(payload)
      <- e, ee, se         responder: 32 e | enc(payload)

Every `enc(...)` is ciphertext plus a 16-byte tag (an empty payload still
costs its tag). After the second message both sides call `split()`: `c1`
carries initiator -> responder, `c2` responder -> initiator.

Where TS2021 departs from the spec: the 12-byte ChaCha20-Poly1305 nonce is
4 zero bytes then `n` as a 64-bit integer, little-endian per spec §12.3 (and
in WireGuard), but big-endian in TS2021 transport records
(shared/protocol/control.md §5.4). Every constructor here
takes `byteorder` ("little" or "big"). The two agree for n = 0, which is the
only nonce a handshake message ever uses, so the choice matters only for
transport messages from the second one on.

Ephemeral keys are arguments: the core has no randomness of its own.

Failures:

* a tag that does not verify, or a low-order DH result: CryptoError (from
  meshlet.crypto); the handshake is then dead;
* a message too short for its pattern: RemoteProtocolError("short");
* calls out of order (writing when it is the peer's turn, splitting early):
  LocalProtocolError("out_of_order");
* a counter that reached 2^64-1 (§5.1: reserved, never used as a nonce):
  LocalProtocolError("nonce_exhausted") when sending,
  RemoteProtocolError("nonce_exhausted") when receiving.

Pre-shared keys (psk modifiers) are not implemented.
"""

from . import crypto
from ._compat import TYPE_CHECKING, const
from .errors import LocalProtocolError, RemoteProtocolError
from .wire import Reader

if TYPE_CHECKING:
    from typing import Literal

    ByteOrder = Literal["little", "big"]
    _Buf = bytes | bytearray | memoryview

PROTOCOL_NAME_IK = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"

# --- specification constants ---------------------------------------------

DHLEN = 32  # §12.1, X25519
HASHLEN = 32  # §12.7, BLAKE2s
_TAG_LEN = const(16)
_MAX_MESSAGE_LEN = const(65535)  # §3: "Noise messages ... 65535 bytes"
_MAX_NONCE = const(0xFFFFFFFFFFFFFFFF)  # 2^64-1, reserved (§5.1)

# The IK pattern as data (§7.5): the tokens of message 0 (initiator writes)
# and message 1 (responder writes). Pre-message `<- s` is handled in __init__.
_IK = (("e", "es", "s", "ss"), ("e", "ee", "se"))


def _nonce(n: int, byteorder: "ByteOrder") -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, byteorder)


class CipherState:
    """A key `k` (or None: no encryption yet) and a counter `n` (§5.1).

    Args:
        k: a 32-byte key, or None.
        byteorder: "little" (the Noise spec, WireGuard) or "big" (TS2021) for
            the counter inside the 12-byte nonce.
    """

    __slots__ = ("k", "n", "byteorder")

    def __init__(self, k: "bytes | None" = None, byteorder: "ByteOrder" = "little") -> None:
        if byteorder != "little" and byteorder != "big":
            raise LocalProtocolError("bad_byteorder", byteorder)
        self.byteorder = byteorder
        self.k: "bytes | None" = None
        self.n = 0
        self.initialize_key(k)

    def initialize_key(self, k: "bytes | None") -> None:
        if k is not None and len(k) != 32:
            raise LocalProtocolError("bad_length", "a cipher key is 32 bytes, got %d" % len(k))
        self.k = k
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def set_nonce(self, n: int) -> None:
        self.n = n

    def encrypt_with_ad(self, ad: "_Buf", plaintext: "_Buf") -> bytes:
        """ENCRYPT(k, n++, ad, plaintext); the plaintext itself while k is unset.

        Raises:
            LocalProtocolError("nonce_exhausted"): n reached 2^64-1.
        """
        k = self.k
        if k is None:
            return bytes(plaintext)
        if self.n >= _MAX_NONCE:
            raise LocalProtocolError("nonce_exhausted", "no nonces left for this key")
        out = crypto.aead_seal(k, _nonce(self.n, self.byteorder), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: "_Buf", ciphertext: "_Buf") -> bytes:
        """DECRYPT(k, n++, ad, ciphertext); n stays put when the tag fails (§5.1).

        Raises:
            CryptoError("bad_tag"): the ciphertext is not authentic.
            RemoteProtocolError("nonce_exhausted"): n reached 2^64-1.
        """
        k = self.k
        if k is None:
            return bytes(ciphertext)
        if self.n >= _MAX_NONCE:
            raise RemoteProtocolError("nonce_exhausted", "no nonces left for this key")
        out = crypto.aead_open(k, _nonce(self.n, self.byteorder), ciphertext, ad)
        self.n += 1
        return out


class SymmetricState:
    """The chaining key `ck`, the handshake hash `h` and a CipherState (§5.2).

    Args:
        protocol_name: e.g. b"Noise_IK_25519_ChaChaPoly_BLAKE2s"; names longer
            than HASHLEN bytes are hashed, shorter ones zero-padded.
        byteorder: passed to every CipherState made here.
    """

    __slots__ = ("ck", "h", "cipher", "_done")

    def __init__(self, protocol_name: bytes, byteorder: "ByteOrder" = "little") -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name + bytes(HASHLEN - len(protocol_name))
        else:
            self.h = crypto.blake2s(protocol_name)
        self.ck = self.h
        self.cipher = CipherState(None, byteorder)
        self._done = False

    def mix_key(self, input_key_material: bytes) -> None:
        """ck, temp_k = HKDF(ck, ikm, 2); the cipher starts over with temp_k."""
        self._check()
        self.ck, temp_k = crypto.hkdf_blake2s(self.ck, input_key_material, 2)
        self.cipher.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        """h = HASH(h || data)."""
        self._check()
        self.h = crypto.blake2s(self.h + bytes(data))

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        self._check()
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Raises CryptoError("bad_tag"); h is then left unchanged."""
        self._check()
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> "tuple[CipherState, CipherState]":
        """(c1, c2) from HKDF(ck, empty, 2); this state is finished afterwards."""
        self._check()
        k1, k2 = crypto.hkdf_blake2s(self.ck, b"", 2)
        self._done = True
        order = self.cipher.byteorder
        return CipherState(k1, order), CipherState(k2, order)

    def get_handshake_hash(self) -> bytes:
        return self.h

    def _check(self) -> None:
        if self._done:
            raise LocalProtocolError("out_of_order", "symmetric state used after split")


class HandshakeState:
    """One side of a Noise_IK_25519_ChaChaPoly_BLAKE2s handshake (§5.3).

    The initiator writes message 0 and reads message 1; the responder reads
    message 0 and writes message 1. Then `split()` gives the transport
    CipherStates and `get_handshake_hash()` the channel binding.

    Args:
        initiator: True for the side that knows the peer's static key.
        s: our static private key (32 bytes).
        e: our ephemeral private key (32 bytes), fresh per handshake.
        rs: the responder's static public key; required for the initiator,
            must be None for the responder (it learns rs from message 0).
        prologue: bytes both sides must agree on (§6).
        byteorder: nonce byte order of the CipherStates `split()` returns.
        s_pub: our static public key, if the caller has it already (saves
            one X25519); it must match `s`.
    """

    def __init__(
        self,
        initiator: bool,
        s: bytes,
        e: bytes,
        rs: "bytes | None" = None,
        prologue: bytes = b"",
        byteorder: "ByteOrder" = "little",
        s_pub: "bytes | None" = None,
    ) -> None:
        if initiator != (rs is not None):
            raise LocalProtocolError("bad_keys", "IK: the initiator, and only it, knows rs")
        self.initiator = initiator
        self.s = bytes(s)
        self.s_pub = bytes(s_pub) if s_pub is not None else crypto.x25519_base(self.s)
        self.e = bytes(e)
        self.e_pub = crypto.x25519_base(self.e)
        self.rs = rs
        self.re: "bytes | None" = None
        self.symmetric = SymmetricState(PROTOCOL_NAME_IK, byteorder)
        self._message = 0  # index of the next message in _IK; -1 once broken
        self.symmetric.mix_hash(prologue)
        # Pre-message `<- s`: the responder's static public key.
        self.symmetric.mix_hash(bytes(rs) if rs is not None else self.s_pub)

    def is_complete(self) -> bool:
        return self._message == len(_IK)

    def write_message(self, payload: bytes = b"") -> bytes:
        """Builds our next handshake message around `payload`.

        Raises:
            LocalProtocolError("out_of_order"): it is the peer's turn.
            LocalProtocolError("too_large"): the message would exceed 65535 bytes.
        """
        self._turn(True)
        sym = self.symmetric
        out = bytearray()
        try:
            for token in _IK[self._message]:
                if token == "e":
                    out.extend(self.e_pub)
                    sym.mix_hash(self.e_pub)
                elif token == "s":
                    out.extend(sym.encrypt_and_hash(self.s_pub))
                else:
                    sym.mix_key(self._dh(token))
            out.extend(sym.encrypt_and_hash(payload))
        except Exception:
            self._message = -1
            raise
        if len(out) > _MAX_MESSAGE_LEN:
            self._message = -1
            raise LocalProtocolError("too_large", "handshake message of %d bytes" % len(out))
        self._message += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Processes the peer's next handshake message; returns its payload.

        A failure leaves this handshake unusable (its hash has already
        absorbed part of the message).

        Raises:
            RemoteProtocolError("short"), RemoteProtocolError("too_large"),
            CryptoError("bad_tag") or CryptoError("low_order_point").
            LocalProtocolError("out_of_order"): it is our turn to write.
        """
        self._turn(False)
        sym = self.symmetric
        try:
            if len(message) > _MAX_MESSAGE_LEN:
                raise RemoteProtocolError("too_large", "handshake message of %d bytes" % len(message))
            r = Reader(message)
            for token in _IK[self._message]:
                if token == "e":
                    self.re = r.take(DHLEN)
                    sym.mix_hash(self.re)
                elif token == "s":
                    n = DHLEN + _TAG_LEN if sym.cipher.has_key() else DHLEN
                    self.rs = sym.decrypt_and_hash(r.take(n))
                else:
                    sym.mix_key(self._dh(token))
            payload = sym.decrypt_and_hash(r.rest())
        except Exception:
            self._message = -1
            raise
        self._message += 1
        return payload

    def split(self) -> "tuple[CipherState, CipherState]":
        """(c1, c2): c1 encrypts initiator -> responder, c2 the other way."""
        if not self.is_complete():
            raise LocalProtocolError("out_of_order", "handshake not complete")
        return self.symmetric.split()

    def get_handshake_hash(self) -> bytes:
        return self.symmetric.get_handshake_hash()

    def _turn(self, writing: bool) -> None:
        if self._message < 0:
            raise LocalProtocolError("out_of_order", "handshake failed earlier")
        if self._message >= len(_IK):
            raise LocalProtocolError("out_of_order", "handshake already complete")
        # Message 0 is the initiator's, message 1 the responder's.
        if writing != ((self._message == 0) == self.initiator):
            raise LocalProtocolError("out_of_order", "not our turn to " + ("write" if writing else "read"))

    def _dh(self, token: str) -> bytes:
        """DH for `ee`, `es`, `se` or `ss` (§7.1: first letter is the initiator's key)."""
        if token == "ee":
            mine, theirs = self.e, self.re
        elif token == "ss":
            mine, theirs = self.s, self.rs
        elif (token == "es") == self.initiator:
            mine, theirs = self.e, self.rs
        else:
            mine, theirs = self.s, self.re
        if theirs is None:  # unreachable for IK: the pattern always supplies the key first
            raise LocalProtocolError("out_of_order", "no remote key for " + token)
        return crypto.x25519(mine, theirs)
