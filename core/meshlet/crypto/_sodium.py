"""The PyNaCl (libsodium) crypto backend, plus the stdlib for BLAKE2s. CPython only.

A complete backend on its own: everything the facade (`meshlet.crypto`)
exports, with the facade's error contract. `_cpython` takes some of its
primitives from here and some from `_pyca`, whichever tools/bench/crypto.py
measured faster (docs/crypto.md).

Where each primitive comes from:

* X25519, ChaCha20-Poly1305 (IETF, RFC 8439), XChaCha20-Poly1305
  (draft-irtf-cfrg-xchacha), the NaCl box precomputation (X25519 + HSalsa20)
  and secretbox (XSalsa20-Poly1305): libsodium through `nacl.bindings`.
* BLAKE2s and HMAC-BLAKE2s: `hashlib.blake2s`. libsodium has BLAKE2b only.
  HMAC is written out (RFC 2104) rather than taken from `hmac.new`, whose
  generic path costs nearly twice as much per call; each KDF runs it two to
  four times, and a handshake runs several KDFs.

Layouts (libsodium's):

    aead_seal / xaead_seal -> ciphertext || 16b tag
    secretbox_seal         -> 16b tag || ciphertext     (as crypto_secretbox_easy)

PyNaCl insists on `bytes`, so bytearray and memoryview inputs are copied
first. Lengths are checked here, before the call, so a caller's mistake is a
`LocalProtocolError("bad_length")` rather than whatever PyNaCl raises.
"""

import hashlib

import nacl.bindings as _nacl
import nacl.exceptions as _nacl_exc

from ..errors import CryptoError, LocalProtocolError

NAME = "sodium"

_In = bytes | bytearray | memoryview

# Specification (RFC 7748, RFC 8439, draft-irtf-cfrg-xchacha, NaCl).
_KEY_LEN = 32
_TAG_LEN = 16
_AEAD_NONCE_LEN = 12
_XNONCE_LEN = 24
_BLAKE2S_MAX_LEN = 32
_BLAKE2S_BLOCK_LEN = 64  # RFC 7693 §2.1; also HMAC's block size B (RFC 2104 §2)

_IPAD = bytes(b ^ 0x36 for b in range(256))  # RFC 2104 §2, as a bytes.translate table
_OPAD = bytes(b ^ 0x5C for b in range(256))


def _b(data: _In) -> bytes:
    """PyNaCl rejects anything but `bytes`; copy only when we must."""
    return data if type(data) is bytes else bytes(data)


def _check(key: _In, nonce: _In, nonce_len: int) -> None:
    """Wrong key or nonce sizes are the caller's bug, reported before any work."""
    if len(key) != _KEY_LEN or len(nonce) != nonce_len:
        raise LocalProtocolError("bad_length", "key %d, nonce %d" % (len(key), len(nonce)))


def x25519(private: _In, public: _In) -> bytes:
    """X25519(private, public) per RFC 7748 §5; libsodium clamps the scalar.

    Raises:
        LocalProtocolError("bad_length"): either key is not 32 bytes.
        CryptoError("low_order_point"): the shared secret is all zeros
            (RFC 7748 §6.1). libsodium also refuses the listed small-order
            points outright; both cases surface as its RuntimeError.
    """
    _check(private, public, _KEY_LEN)
    try:
        return _nacl.crypto_scalarmult(_b(private), _b(public))
    except _nacl_exc.RuntimeError:
        raise CryptoError("low_order_point")


def x25519_base(private: _In) -> bytes:
    """The public key of a private key: X25519(private, 9)."""
    if len(private) != _KEY_LEN:
        raise LocalProtocolError("bad_length", "private key %d" % len(private))
    return _nacl.crypto_scalarmult_base(_b(private))


def aead_seal(key: _In, nonce12: _In, plaintext: _In, ad: _In) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439 §2.8); returns ciphertext || tag."""
    _check(key, nonce12, _AEAD_NONCE_LEN)
    return _nacl.crypto_aead_chacha20poly1305_ietf_encrypt(_b(plaintext), _b(ad), _b(nonce12), _b(key))


def aead_open(key: _In, nonce12: _In, ciphertext_and_tag: _In, ad: _In) -> bytes:
    """Inverse of `aead_seal`; raises CryptoError("bad_tag") on any forgery.

    Input shorter than a tag is a forgery too: it came off the network.
    """
    _check(key, nonce12, _AEAD_NONCE_LEN)
    if len(ciphertext_and_tag) < _TAG_LEN:
        raise CryptoError("bad_tag", "short")
    sealed = _b(ciphertext_and_tag)
    try:
        return _nacl.crypto_aead_chacha20poly1305_ietf_decrypt(sealed, _b(ad), _b(nonce12), _b(key))
    except _nacl_exc.CryptoError:
        raise CryptoError("bad_tag")


def xaead_seal(key: _In, nonce24: _In, plaintext: _In, ad: _In) -> bytes:
    """XChaCha20-Poly1305 with a 24-byte nonce; returns ciphertext || tag."""
    _check(key, nonce24, _XNONCE_LEN)
    return _nacl.crypto_aead_xchacha20poly1305_ietf_encrypt(_b(plaintext), _b(ad), _b(nonce24), _b(key))


def xaead_open(key: _In, nonce24: _In, ciphertext_and_tag: _In, ad: _In) -> bytes:
    """Inverse of `xaead_seal`; raises CryptoError("bad_tag") on any forgery."""
    _check(key, nonce24, _XNONCE_LEN)
    if len(ciphertext_and_tag) < _TAG_LEN:
        raise CryptoError("bad_tag", "short")
    sealed = _b(ciphertext_and_tag)
    try:
        return _nacl.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, _b(ad), _b(nonce24), _b(key))
    except _nacl_exc.CryptoError:
        raise CryptoError("bad_tag")


def blake2s(data: _In, key: _In = b"", digest_size: int = 32) -> bytes:
    """BLAKE2s (RFC 7693), optionally keyed, with a 1..32 byte digest.

    WireGuard uses HASH (32 bytes, no key) and MAC (16 bytes, keyed).

    Raises:
        LocalProtocolError("bad_length"): digest_size outside 1..32 or a key
            longer than 32 bytes.
    """
    if not 0 < digest_size <= _BLAKE2S_MAX_LEN or len(key) > _BLAKE2S_MAX_LEN:
        raise LocalProtocolError("bad_length", "digest_size %d, key %d" % (digest_size, len(key)))
    return hashlib.blake2s(data, digest_size=digest_size, key=key).digest()


def hmac_blake2s(key: _In, data: _In) -> bytes:
    """HMAC-BLAKE2s (RFC 2104), 32 bytes: the HMAC of Noise and WireGuard.

    Any key length is allowed; keys longer than the block are hashed first.
    """
    k = _b(key)
    if len(k) > _BLAKE2S_BLOCK_LEN:
        k = hashlib.blake2s(k).digest()
    k = k.ljust(_BLAKE2S_BLOCK_LEN, b"\x00")
    inner = hashlib.blake2s(k.translate(_IPAD))
    inner.update(data)
    return hashlib.blake2s(k.translate(_OPAD) + inner.digest()).digest()


def box_beforenm(their_public: _In, my_private: _In) -> bytes:
    """libsodium `crypto_box_beforenm`: HSalsa20(X25519(my_private, their_public), 0).

    The result is the secretbox key of a NaCl box between the two parties.

    Raises:
        LocalProtocolError("bad_length"): either key is not 32 bytes.
        CryptoError("low_order_point"): their_public is a small-order point.
    """
    _check(their_public, my_private, _KEY_LEN)
    try:
        return _nacl.crypto_box_beforenm(_b(their_public), _b(my_private))
    except _nacl_exc.RuntimeError:
        raise CryptoError("low_order_point")


def secretbox_seal(key: _In, nonce24: _In, plaintext: _In) -> bytes:
    """XSalsa20-Poly1305 (`crypto_secretbox`); returns tag || ciphertext.

    The classic binding (PyNaCl strips the zero padding, so its output is the
    same as `crypto_secretbox_easy`'s) exists in every PyNaCl, including
    Debian bookworm's 1.5, which the armhf images use; `_easy` arrived in 1.6.
    """
    _check(key, nonce24, _XNONCE_LEN)
    return _nacl.crypto_secretbox(_b(plaintext), _b(nonce24), _b(key))


def secretbox_open(key: _In, nonce24: _In, tag_and_ct: _In) -> bytes:
    """Inverse of `secretbox_seal`; raises CryptoError("bad_tag") on any forgery."""
    _check(key, nonce24, _XNONCE_LEN)
    if len(tag_and_ct) < _TAG_LEN:
        raise CryptoError("bad_tag", "short")
    try:
        return _nacl.crypto_secretbox_open(_b(tag_and_ct), _b(nonce24), _b(key))
    except _nacl_exc.CryptoError:
        raise CryptoError("bad_tag")
