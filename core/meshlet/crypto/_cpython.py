"""The CPython crypto backend: per primitive, the faster of `_sodium` and `_pyca`.

Both libraries are C (libsodium) or Rust-over-C (OpenSSL) underneath, so
what differs is mostly the cost of one call from Python. The choice below
was made by measurement, not by reputation, with

    .venv/bin/python tools/bench/crypto.py

run nine times on 2026-11-22 (a 2-core shared x86_64 VM, CPython 3.11.7,
PyNaCl 1.6.2, cryptography 50.0.2 with OpenSSL 4.0.3); docs/crypto.md has a
full table. A ratio under 1.15 counted as a tie, and a tie went to PyNaCl:
it is the smaller library, and it already supplies the primitives
`cryptography` lacks.

    primitive                from     faster/slower, median of 9 (range)
    aead_cipher (bound key)  _pyca    548k vs 300k seals/s of 1400 B for aead_seal
    aead_seal  1400 B        _pyca    2.15x (2.11-2.26)
    aead_open  1400 B        _pyca    2.16x (1.39-2.23; the low one was a noisy run)
    aead_seal  64 B          _pyca    2.31x (2.27-2.46)
    aead_open  64 B          _pyca    2.29x (2.23-2.70)
    x25519                   _sodium  1.80x (1.78-2.10)
    x25519_base              _sodium  1.94x (1.85-2.32)
    hmac_blake2s             _sodium  1.87x (1.82-1.94); hkdf_blake2s follows, 1.86x
    blake2s                  _sodium  tie, 1.01x (1.00-1.02): both are hashlib.blake2s
    box_beforenm             _sodium  only PyNaCl has HSalsa20
    xaead_seal, xaead_open   _sodium  only PyNaCl has XChaCha20-Poly1305
    secretbox_seal, _open    _sodium  only PyNaCl has XSalsa20-Poly1305

So OpenSSL wins where PyNaCl's binding does the most Python-side work per
call (its AEAD wrappers type-check and allocate in Python), and libsodium
wins X25519, where `cryptography` builds two key objects per exchange.
`_sodium`'s HMAC is RFC 2104 written out over hashlib.blake2s, and `_pyca`'s
is OpenSSL's one-shot HMAC through `hmac.digest`; the Python version wins
because it skips OpenSSL's per-call context set-up. Re-run the benchmark
when either library is upgraded; the measurement, not this list, decides.

Importing this module raises ImportError when PyNaCl or `cryptography` is
missing, which is what sends the facade to `_pure` (MicroPython, or a bare
CPython).
"""

import cryptography  # noqa: F401  (ImportError here selects _pure)
import nacl.bindings  # noqa: F401  (likewise)

from ._pyca import aead_cipher, aead_open, aead_seal
from ._sodium import (
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

NAME = "cpython"

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
