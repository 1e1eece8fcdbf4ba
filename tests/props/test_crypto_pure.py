"""The pure-Python backend agrees with independent implementations on random input.

References: PyNaCl (libsodium) for X25519, XChaCha20-Poly1305, box and
secretbox; `cryptography` (OpenSSL) for X25519 and ChaCha20-Poly1305; the
stdlib's hashlib.blake2s and hmac for BLAKE2s. The backend is imported
directly, so these test the pure code even where the facade picked another
backend. Example counts are modest because the pure code is slow.
"""

import hashlib
import hmac
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings as sodium
from nacl.exceptions import CryptoError as NaclCryptoError

from meshlet.crypto import _pure
from meshlet.errors import CryptoError, LocalProtocolError

key32 = st.binary(min_size=32, max_size=32)
nonce12 = st.binary(min_size=12, max_size=12)
nonce24 = st.binary(min_size=24, max_size=24)
message = st.binary(max_size=300)
assoc = st.binary(max_size=64)
anylen = st.binary(max_size=40)

slow = settings(max_examples=25, deadline=None)
fast = settings(max_examples=60, deadline=None)


@slow
@given(key32, key32)
def test_x25519_matches_libsodium_and_openssl(private: bytes, public: bytes) -> None:
    try:
        want = sodium.crypto_scalarmult(private, public)
    except NaclCryptoError:  # libsodium refuses an all-zero result, as we do
        try:
            _pure.x25519(private, public)
        except CryptoError as e:
            assert e.reason == "low_order_point"
            return
        raise AssertionError("pure x25519 accepted a low-order point")
    assert _pure.x25519(private, public) == want
    theirs = X25519PublicKey.from_public_bytes(public)
    assert X25519PrivateKey.from_private_bytes(private).exchange(theirs) == want


@slow
@given(key32)
def test_x25519_base_matches_libsodium(private: bytes) -> None:
    assert _pure.x25519_base(private) == sodium.crypto_scalarmult_base(private)


@fast
@given(key32, nonce12, message, assoc)
def test_aead_matches_openssl(key: bytes, nonce: bytes, pt: bytes, ad: bytes) -> None:
    sealed = ChaCha20Poly1305(key).encrypt(nonce, pt, ad)
    assert _pure.aead_seal(key, nonce, pt, ad) == sealed
    assert _pure.aead_open(key, nonce, sealed, ad) == pt


@fast
@given(key32, nonce24, message, assoc)
def test_xaead_matches_libsodium(key: bytes, nonce: bytes, pt: bytes, ad: bytes) -> None:
    sealed = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(pt, ad, nonce, key)
    assert _pure.xaead_seal(key, nonce, pt, ad) == sealed
    assert _pure.xaead_open(key, nonce, sealed, ad) == pt


@fast
@given(st.binary(max_size=300), st.binary(max_size=32), st.integers(min_value=1, max_value=32))
def test_blake2s_matches_hashlib(data: bytes, key: bytes, size: int) -> None:
    assert _pure.blake2s(data, key, size) == hashlib.blake2s(data, key=key, digest_size=size).digest()
    assert _pure.blake2s(data) == hashlib.blake2s(data).digest()


@fast
@given(st.binary(max_size=150), st.binary(max_size=200))
def test_hmac_blake2s_matches_stdlib(key: bytes, data: bytes) -> None:
    assert _pure.hmac_blake2s(key, data) == hmac.new(key, data, hashlib.blake2s).digest()


@fast
@given(key32, nonce24, message)
def test_secretbox_matches_libsodium(key: bytes, nonce: bytes, pt: bytes) -> None:
    sealed = sodium.crypto_secretbox_easy(pt, nonce, key)
    assert _pure.secretbox_seal(key, nonce, pt) == sealed
    assert _pure.secretbox_open(key, nonce, sealed) == pt


@slow
@given(key32, key32)
def test_box_beforenm_matches_libsodium(my_private: bytes, their_private: bytes) -> None:
    their_public = sodium.crypto_scalarmult_base(their_private)
    want = sodium.crypto_box_beforenm(their_public, my_private)
    assert _pure.box_beforenm(their_public, my_private) == want


@fast
@given(key32, nonce12, message, assoc, st.data())
def test_aead_rejects_any_flipped_bit(
    key: bytes, nonce: bytes, pt: bytes, ad: bytes, data: st.DataObject
) -> None:
    sealed = bytearray(ChaCha20Poly1305(key).encrypt(nonce, pt, ad))
    bit = data.draw(st.integers(min_value=0, max_value=8 * len(sealed) - 1))
    sealed[bit >> 3] ^= 1 << (bit & 7)
    try:
        _pure.aead_open(key, nonce, sealed, ad)
    except CryptoError as e:
        assert e.reason == "bad_tag"
    else:
        raise AssertionError("forgery accepted")


def _only_protocol_errors(fn: "Callable[..., bytes]", *args: bytes) -> None:
    """Calls fn(*args); anything but success, CryptoError or LocalProtocolError fails."""
    try:
        fn(*args)
    except (CryptoError, LocalProtocolError):
        pass


@fast
@given(st.one_of(key32, anylen), st.one_of(nonce12, nonce24, anylen), st.binary(max_size=100), assoc)
def test_open_of_random_bytes_raises_only_protocol_errors(
    key: bytes, nonce: bytes, data: bytes, ad: bytes
) -> None:
    for fn in (_pure.aead_open, _pure.xaead_open):
        try:
            fn(key, nonce, data, ad)
        except (CryptoError, LocalProtocolError):
            continue
        raise AssertionError("random bytes opened")
    try:
        _pure.secretbox_open(key, nonce, data)
    except (CryptoError, LocalProtocolError):
        return
    raise AssertionError("random bytes opened")


@slow
@given(anylen, anylen)
def test_x25519_of_any_input_raises_only_protocol_errors(private: bytes, public: bytes) -> None:
    _only_protocol_errors(_pure.x25519, private, public)
    _only_protocol_errors(_pure.box_beforenm, public, private)


@fast
@given(anylen, anylen, st.integers(min_value=-2, max_value=40))
def test_blake2s_of_any_params_raises_only_bad_length(data: bytes, key: bytes, size: int) -> None:
    try:
        got = _pure.blake2s(data, key, size)
    except LocalProtocolError as e:
        assert e.reason == "bad_length"
        assert len(key) > 32 or not 1 <= size <= 32
    else:
        assert len(got) == size
