"""The crypto facade: every primitive meshlet's protocols need, behind one import.

WireGuard, TS2021 Noise, disco and DERP's login boxes need X25519,
ChaCha20-Poly1305, XChaCha20-Poly1305, BLAKE2s (plain, keyed, HMAC, HKDF) and
the NaCl box (X25519 + HSalsa20 + XSalsa20-Poly1305). MicroPython has none of
them, so the core calls this module and never a library.

Backends, picked at import time, in order:

* `_cpython`: PyNaCl (libsodium) and `cryptography`, choosing per primitive
  the faster of the two as measured by tools/bench/crypto.py (docs/crypto.md
  has the table);
* `_pure`: the pure-Python reference. It runs on MicroPython and is what
  tests/core exercises there. Slow, and not constant-time: fine for tests and
  for a board without a native module, never a server's first choice.

Contract every backend keeps (tests/props/test_crypto_backends.py checks the
backends against each other):

* `aead_cipher(key)` binds a ChaCha20-Poly1305 key once and returns an object
  with `seal(nonce, plaintext, ad)` and `open(nonce, ciphertext, ad)`: the
  per-packet form, since WireGuard uses one key for many packets.
* `x25519(private, public)` clamps the scalar (RFC 7748 §5) and raises
  `CryptoError("low_order_point")` when the shared secret is all zeros.
* `*_open` functions raise `CryptoError("bad_tag")` on any forgery, and
  nothing else for well-typed input.
* Keys and nonces of the wrong length raise `LocalProtocolError("bad_length")`.
* Inputs may be bytes, bytearray or memoryview; outputs are bytes.

Sizes in bytes: keys 32, AEAD nonce 12 (4 zero bytes then a 64-bit counter
in the byte order the protocol chooses), XAEAD and box nonces 24, tags 16.
"""

try:
    from ._cpython import (
        NAME,
        aead_cipher,
        aead_open,
        aead_seal,
        blake2s,
        box_beforenm,
        hmac_blake2s,
        secretbox_open,
        secretbox_seal,
        x25519,
        x25519_base,
        xaead_open,
        xaead_seal,
    )
except ImportError:  # MicroPython, or a CPython without the libraries
    from ._pure import (  # type: ignore[assignment]
        NAME,
        aead_cipher,
        aead_open,
        aead_seal,
        blake2s,
        box_beforenm,
        hmac_blake2s,
        secretbox_open,
        secretbox_seal,
        x25519,
        x25519_base,
        xaead_open,
        xaead_seal,
    )

KEY_LEN = 32
TAG_LEN = 16
AEAD_NONCE_LEN = 12
XNONCE_LEN = 24

__all__ = [
    "NAME",
    "aead_cipher",
    "aead_open",
    "aead_seal",
    "blake2s",
    "box_beforenm",
    "box_open",
    "box_seal",
    "constant_time_equal",
    "hkdf_blake2s",
    "hmac_blake2s",
    "secretbox_open",
    "secretbox_seal",
    "x25519",
    "x25519_base",
    "xaead_open",
    "xaead_seal",
]


def hkdf_blake2s(key: bytes, ikm: bytes, n: int) -> "list[bytes]":
    """The HKDF of Noise and WireGuard (KDF_n): n (1..3) 32-byte outputs.

    prk = HMAC(key, ikm); T1 = HMAC(prk, 0x01); Ti = HMAC(prk, T(i-1) || i).
    """
    prk = hmac_blake2s(key, ikm)
    out: "list[bytes]" = []
    prev = b""
    for i in range(1, n + 1):
        prev = hmac_blake2s(prk, prev + bytes((i,)))
        out.append(prev)
    return out


def box_seal(my_private: bytes, their_public: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    """NaCl `crypto_box_easy`: returns tag || ciphertext (the nonce is not included)."""
    return secretbox_seal(box_beforenm(their_public, my_private), nonce, plaintext)


def box_open(my_private: bytes, their_public: bytes, nonce: bytes, sealed: bytes) -> bytes:
    """NaCl `crypto_box_open_easy`; raises CryptoError("bad_tag") on forgery."""
    return secretbox_open(box_beforenm(their_public, my_private), nonce, sealed)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compares secrets without an early exit (hmac.compare_digest is not on MicroPython).

    Only the lengths leak, and every secret compared here has a fixed length.
    """
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0

