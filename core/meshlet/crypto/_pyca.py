"""The `cryptography` (pyca, OpenSSL) crypto backend. CPython only.

A complete backend with the facade's contract (`meshlet.crypto`), built on
`cryptography` wherever that library has the primitive, so that
tools/bench/crypto.py can weigh it against `_sodium` primitive by primitive
and tests/props/test_crypto_backends.py can check the two against each other.

Where each primitive comes from:

* ChaCha20-Poly1305 (RFC 8439): `cryptography`'s `ChaCha20Poly1305`.
* X25519 (RFC 7748): `X25519PrivateKey.from_private_bytes(...).exchange(...)`.
  OpenSSL clamps the scalar itself and raises ValueError when the shared
  secret is all zeros, which is mapped to CryptoError("low_order_point").
* BLAKE2s: `hashlib.blake2s`. (`cryptography` has BLAKE2s too, but only
  unkeyed with a 32-byte digest, and it measured several times slower
  than hashlib for WireGuard-sized inputs.)
* HMAC-BLAKE2s: the stdlib's one-shot `hmac.digest(key, data, "blake2s")`,
  which is OpenSSL's HMAC, the library `cryptography` wraps.
* XChaCha20-Poly1305, the NaCl box precomputation (X25519 + HSalsa20) and
  secretbox (XSalsa20-Poly1305): `cryptography` has no XChaCha20, HSalsa20
  or Salsa20, so these are `_sodium`'s functions, re-exported unchanged.

Lengths are checked before the library is called, so a caller's mistake is
LocalProtocolError("bad_length") and never OpenSSL's ValueError.
"""

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import CryptoError, LocalProtocolError
from ._sodium import box_beforenm, secretbox_open, secretbox_seal, xaead_open, xaead_seal

NAME = "pyca"

__all__ = [
    "NAME",
    "aead_cipher",
    "aead_open",
    "aead_seal",
    "blake2s",
    "box_beforenm",
    "hmac_blake2s",
    "secretbox_open",
    "secretbox_seal",
    "x25519",
    "x25519_base",
    "xaead_open",
    "xaead_seal",
]

_In = bytes | bytearray | memoryview

# Specification (RFC 7748, RFC 8439, RFC 7693).
_KEY_LEN = 32
_AEAD_NONCE_LEN = 12
_BLAKE2S_MAX_LEN = 32


def _b(data: _In) -> bytes:
    """The X25519 key constructors accept only `bytes`; copy only when we must."""
    return data if type(data) is bytes else bytes(data)


def _takes_buffers() -> bool:
    """Whether this `cryptography` seals bytearray/memoryview without a copy (42 and newer).

    Debian bookworm ships 38, which wants `bytes`; the armhf images use it.
    Probed once here rather than per packet.
    """
    try:
        ChaCha20Poly1305(bytes(_KEY_LEN)).encrypt(bytes(_AEAD_NONCE_LEN), memoryview(b"x"), None)
    except TypeError:
        return False
    return True


_TAKES_BUFFERS = _takes_buffers()


def _data(data: _In) -> _In:
    return data if _TAKES_BUFFERS else _b(data)


def _check(key: _In, nonce: _In, nonce_len: int) -> None:
    """Wrong key or nonce sizes are the caller's bug, reported before any work."""
    if len(key) != _KEY_LEN or len(nonce) != nonce_len:
        raise LocalProtocolError("bad_length", "key %d, nonce %d" % (len(key), len(nonce)))


def x25519(private: _In, public: _In) -> bytes:
    """X25519(private, public) per RFC 7748 §5, the scalar clamped by OpenSSL.

    Raises:
        LocalProtocolError("bad_length"): either key is not 32 bytes.
        CryptoError("low_order_point"): the shared secret is all zeros (§6.1).
    """
    _check(private, public, _KEY_LEN)
    mine = X25519PrivateKey.from_private_bytes(_b(private))
    theirs = X25519PublicKey.from_public_bytes(_b(public))
    try:
        return mine.exchange(theirs)
    except ValueError:
        raise CryptoError("low_order_point")


def x25519_base(private: _In) -> bytes:
    """The public key of a private key: X25519(private, 9)."""
    if len(private) != _KEY_LEN:
        raise LocalProtocolError("bad_length", "private key %d" % len(private))
    public = X25519PrivateKey.from_private_bytes(_b(private)).public_key()
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def aead_seal(key: _In, nonce12: _In, plaintext: _In, ad: _In) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439 §2.8); returns ciphertext || tag."""
    _check(key, nonce12, _AEAD_NONCE_LEN)
    return ChaCha20Poly1305(_b(key)).encrypt(_b(nonce12), _data(plaintext), _data(ad))


def aead_open(key: _In, nonce12: _In, ciphertext_and_tag: _In, ad: _In) -> bytes:
    """Inverse of `aead_seal`; raises CryptoError("bad_tag") on any forgery,
    including input too short to hold a tag (OpenSSL reports that as InvalidTag)."""
    _check(key, nonce12, _AEAD_NONCE_LEN)
    try:
        return ChaCha20Poly1305(_b(key)).decrypt(_b(nonce12), _data(ciphertext_and_tag), _data(ad))
    except InvalidTag:
        raise CryptoError("bad_tag")


class AeadCipher:
    """ChaCha20-Poly1305 bound to one key, reusing OpenSSL's prepared context.

    Building `ChaCha20Poly1305(key)` costs about as much as sealing a
    1400-byte packet, so WireGuard sessions bind their keys once.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: _In) -> None:
        if len(key) != _KEY_LEN:
            raise LocalProtocolError("bad_length", "AEAD key of %d bytes" % len(key))
        self._aead = ChaCha20Poly1305(bytes(key))

    def seal(self, nonce12: _In, plaintext: _In, ad: _In) -> bytes:
        try:
            if not _TAKES_BUFFERS:
                nonce12, plaintext, ad = _b(nonce12), _b(plaintext), _b(ad)
            return self._aead.encrypt(nonce12, plaintext, ad)
        except ValueError:
            raise LocalProtocolError("bad_length", "AEAD nonce of %d bytes" % len(nonce12))

    def open(self, nonce12: _In, ciphertext_and_tag: _In, ad: _In) -> bytes:
        try:
            if not _TAKES_BUFFERS:
                nonce12, ciphertext_and_tag, ad = _b(nonce12), _b(ciphertext_and_tag), _b(ad)
            return self._aead.decrypt(nonce12, ciphertext_and_tag, ad)
        except InvalidTag:
            raise CryptoError("bad_tag")
        except ValueError:
            raise LocalProtocolError("bad_length", "AEAD nonce of %d bytes" % len(nonce12))


aead_cipher = AeadCipher


def blake2s(data: _In, key: _In = b"", digest_size: int = 32) -> bytes:
    """BLAKE2s (RFC 7693), optionally keyed, with a 1..32 byte digest.

    Raises:
        LocalProtocolError("bad_length"): digest_size outside 1..32 or a key
            longer than 32 bytes.
    """
    if not 0 < digest_size <= _BLAKE2S_MAX_LEN or len(key) > _BLAKE2S_MAX_LEN:
        raise LocalProtocolError("bad_length", "digest_size %d, key %d" % (digest_size, len(key)))
    return hashlib.blake2s(data, digest_size=digest_size, key=key).digest()


def hmac_blake2s(key: _In, data: _In) -> bytes:
    """HMAC-BLAKE2s (RFC 2104), 32 bytes, computed by OpenSSL in one call."""
    return hmac.digest(key, data, "blake2s")
