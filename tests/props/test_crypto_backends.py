"""The crypto backends against each other, and the facade's error contract.

`meshlet.crypto` promises the same answers and the same typed errors from
every backend (its module docstring states the contract). Here hypothesis
draws the inputs and checks that:

* `_sodium` (PyNaCl) and `_pyca` (`cryptography`) agree on every primitive,
  and `_pure` does too when it imports (fewer examples: it is slow);
* where both backends run the same library code (XChaCha20-Poly1305 and
  the NaCl box are `_sodium`'s in both), an independent construction checks
  it instead: XChaCha20 from `cryptography`'s ChaCha20 (HChaCha20 derived by
  undoing the block function's feed-forward), the box key and the secretbox
  layout from PyNaCl's high-level `Box` and `SecretBox`, HMAC from `hmac.new`;
* forgeries raise CryptoError("bad_tag"), wrong key and nonce sizes raise
  LocalProtocolError("bad_length"), and the small-order points of RFC 7748
  raise CryptoError("low_order_point");
* bytearray and memoryview are accepted wherever bytes are, and outputs are
  bytes;
* on CPython the facade picked `_cpython`.
"""

import hashlib
import hmac
import importlib
import struct
import sys
from types import ModuleType
from typing import Any, Callable

import nacl.public
import nacl.secret
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

import meshlet.crypto
from meshlet.crypto import _cpython, _pyca, _sodium
from meshlet.errors import CryptoError, LocalProtocolError



def _optional(name: str) -> "ModuleType | None":
    """A backend that may be absent (or mid-edit); its own tests cover it when present."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_pure = _optional("meshlet.crypto._pure")

NATIVE = [_sodium, _pyca]
ALL = NATIVE + ([_pure] if _pure is not None else [])
_ids = lambda m: m.NAME  # noqa: E731

keys = st.binary(min_size=32, max_size=32)
nonces12 = st.binary(min_size=12, max_size=12)
nonces24 = st.binary(min_size=24, max_size=24)
messages = st.binary(max_size=1500)
ads = st.binary(max_size=64)
bad_key_lens = st.integers(0, 64).filter(lambda n: n != 32)

# RFC 7748 §7 / libsodium's blocklist: u-coordinates whose X25519 with any
# clamped scalar is zero: 0, 1, the two points of order 8, p - 1, and the
# non-canonical p and p + 1; each also with bit 255 set, which §5 masks off.
_P = 2**255 - 19
_SMALL_ORDER_U = [
    0,
    1,
    0x00B8495F16056286FDB1329CEB8D09DA6AC49FF1FAE35616AEB8413B7C7AEBE0,
    0x57119FD0DD4E22D8868E1C58C45C44045BEF839C55B1D0B1248C50A3BC959C5F,
    _P - 1,
    _P,
    _P + 1,
]
LOW_ORDER_POINTS = [(u | top).to_bytes(32, "little") for u in _SMALL_ORDER_U for top in (0, 1 << 255)]



def _secretbox_seal(b: Any, key: bytes, nonce: bytes, msg: bytes, ad: bytes) -> bytes:
    return b.secretbox_seal(key, nonce, msg)  # type: ignore[no-any-return]


def _secretbox_open(b: Any, key: bytes, nonce: bytes, sealed: bytes, ad: bytes) -> bytes:
    return b.secretbox_open(key, nonce, sealed)  # type: ignore[no-any-return]


# The three symmetric constructions, called alike: (nonce length, seal, open),
# each taking (backend, key, nonce, data, ad); secretbox ignores the ad.
SEALS: "dict[str, tuple[int, Callable[..., bytes], Callable[..., bytes]]]" = {
    "aead": (12, lambda b, *a: b.aead_seal(*a), lambda b, *a: b.aead_open(*a)),
    "xaead": (24, lambda b, *a: b.xaead_seal(*a), lambda b, *a: b.xaead_open(*a)),
    "secretbox": (24, _secretbox_seal, _secretbox_open),
}


def _reason(exc_info: Any) -> str:
    return str(exc_info.value.reason)


def _hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2) from a plain ChaCha20 block.

    A ChaCha20 block is rounds(state) + state; HChaCha20 is rounds(state)'s
    words 0-3 and 12-15. `cryptography`'s 16-byte ChaCha20 nonce fills state
    words 12-15 exactly, so subtracting the known words undoes the addition.
    """
    block = Cipher(algorithms.ChaCha20(key, nonce16), None).encryptor().update(bytes(64))
    out = struct.unpack("<16I", block)
    state = struct.unpack("<4I", b"expand 32-byte k") + struct.unpack("<4I", nonce16)
    words = [(o - s) & 0xFFFFFFFF for o, s in zip(out[:4] + out[12:], state)]
    return struct.pack("<8I", *words)


def _xaead_reference(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    subkey = _hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(bytes(4) + nonce24[16:], plaintext, ad)


# --- agreement ----------------------------------------------------------------


@given(private=keys, public=keys)
def test_x25519_agrees(private: bytes, public: bytes) -> None:
    try:
        expected = _sodium.x25519(private, public)
    except CryptoError as e:  # only for the blocklisted points; a random draw never hits one
        assert e.reason == "low_order_point"
        with pytest.raises(CryptoError):
            _pyca.x25519(private, public)
        return
    assert _pyca.x25519(private, public) == expected


@given(a=keys, b=keys)
def test_x25519_diffie_hellman_across_backends(a: bytes, b: bytes) -> None:
    assert _sodium.x25519(a, _pyca.x25519_base(b)) == _pyca.x25519(b, _sodium.x25519_base(a))


@given(private=keys)
def test_x25519_base_agrees(private: bytes) -> None:
    base_point = b"\x09" + bytes(31)  # u = 9, RFC 7748 §4.1
    assert _pyca.x25519_base(private) == _sodium.x25519_base(private) == _sodium.x25519(private, base_point)


@given(key=keys, nonce=nonces12, msg=messages, ad=ads)
def test_aead_agrees_and_opens_across(key: bytes, nonce: bytes, msg: bytes, ad: bytes) -> None:
    sealed = _sodium.aead_seal(key, nonce, msg, ad)
    assert _pyca.aead_seal(key, nonce, msg, ad) == sealed
    assert len(sealed) == len(msg) + 16
    assert _pyca.aead_open(key, nonce, sealed, ad) == msg
    assert _sodium.aead_open(key, nonce, sealed, ad) == msg


@given(key=keys, nonce=nonces24, msg=messages, ad=ads)
def test_xaead_matches_chacha20_construction(key: bytes, nonce: bytes, msg: bytes, ad: bytes) -> None:
    sealed = _xaead_reference(key, nonce, msg, ad)
    assert _sodium.xaead_seal(key, nonce, msg, ad) == sealed
    assert _pyca.xaead_seal(key, nonce, msg, ad) == sealed
    assert _pyca.xaead_open(key, nonce, sealed, ad) == msg


@given(key=keys, nonce=nonces24, msg=messages)
def test_secretbox_layout_is_crypto_secretbox_easy(key: bytes, nonce: bytes, msg: bytes) -> None:
    expected = nacl.secret.SecretBox(key).encrypt(msg, nonce).ciphertext  # tag || ciphertext
    assert _sodium.secretbox_seal(key, nonce, msg) == expected
    assert _pyca.secretbox_seal(key, nonce, msg) == expected
    assert _pyca.secretbox_open(key, nonce, expected) == msg


@given(a=keys, b=keys)
def test_box_beforenm_is_nacl_box_shared_key(a: bytes, b: bytes) -> None:
    pub_b = _sodium.x25519_base(b)
    expected = nacl.public.Box(nacl.public.PrivateKey(a), nacl.public.PublicKey(pub_b)).shared_key()
    assert _sodium.box_beforenm(pub_b, a) == expected
    assert _pyca.box_beforenm(pub_b, a) == expected
    assert _pyca.box_beforenm(_pyca.x25519_base(a), b) == expected  # both ends derive the same key


@given(data=st.binary(max_size=300), key=st.binary(max_size=32), size=st.integers(1, 32))
def test_blake2s_agrees(data: bytes, key: bytes, size: int) -> None:
    expected = hashlib.blake2s(data, key=key, digest_size=size).digest()
    assert _sodium.blake2s(data, key, size) == expected
    assert _pyca.blake2s(data, key=key, digest_size=size) == expected


@given(key=st.integers(0, 200).flatmap(lambda n: st.binary(min_size=n, max_size=n)), data=st.binary(max_size=300))
def test_hmac_blake2s_agrees_with_stdlib_hmac(key: bytes, data: bytes) -> None:
    # Key lengths are drawn evenly so that keys longer than the 64-byte block,
    # which RFC 2104 hashes first, are as common as short ones.
    expected = hmac.new(key, data, hashlib.blake2s).digest()
    assert _sodium.hmac_blake2s(key, data) == expected
    assert _pyca.hmac_blake2s(key, data) == expected


@pytest.mark.skipif(_pure is None, reason="meshlet.crypto._pure does not import")
@settings(max_examples=20, deadline=None)
@given(key=keys, peer=keys, n12=nonces12, n24=nonces24, msg=st.binary(max_size=300), ad=ads)
def test_pure_agrees_with_sodium(
    key: bytes, peer: bytes, n12: bytes, n24: bytes, msg: bytes, ad: bytes
) -> None:
    pure: Any = _pure
    peer = _sodium.x25519_base(peer)  # a random draw may be a low-order point; a public key is not
    assert pure.x25519(key, peer) == _sodium.x25519(key, peer)
    assert pure.x25519_base(key) == _sodium.x25519_base(key)
    assert pure.box_beforenm(peer, key) == _sodium.box_beforenm(peer, key)
    assert pure.aead_seal(key, n12, msg, ad) == _sodium.aead_seal(key, n12, msg, ad)
    assert pure.xaead_seal(key, n24, msg, ad) == _sodium.xaead_seal(key, n24, msg, ad)
    assert pure.secretbox_seal(key, n24, msg) == _sodium.secretbox_seal(key, n24, msg)
    assert pure.blake2s(msg, ad[:32], 1 + len(ad) % 32) == _sodium.blake2s(msg, ad[:32], 1 + len(ad) % 32)
    assert pure.hmac_blake2s(ad, msg) == _sodium.hmac_blake2s(ad, msg)


# --- forgeries --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL, ids=_ids)
@pytest.mark.parametrize("kind", sorted(SEALS))
@settings(deadline=None)
@given(key=keys, msg=st.binary(max_size=200), ad=ads, where=st.integers(0), bit=st.integers(0, 7),
       data=st.data())
def test_flipped_bit_is_bad_tag(
    backend: ModuleType, kind: str, key: bytes, msg: bytes, ad: bytes, where: int, bit: int, data: Any
) -> None:
    nonce_len, seal, open_ = SEALS[kind]
    nonce = data.draw(st.binary(min_size=nonce_len, max_size=nonce_len))
    sealed = bytearray(seal(backend, key, nonce, msg, ad))
    sealed[where % len(sealed)] ^= 1 << bit
    with pytest.raises(CryptoError) as e:
        open_(backend, key, nonce, sealed, ad)
    assert _reason(e) == "bad_tag"


@pytest.mark.parametrize("backend", ALL, ids=_ids)
@pytest.mark.parametrize("kind", ["aead", "xaead"])
@given(key=keys, msg=st.binary(max_size=100), ad=ads, data=st.data())
def test_other_ad_is_bad_tag(
    backend: ModuleType, kind: str, key: bytes, msg: bytes, ad: bytes, data: Any
) -> None:
    nonce_len, seal, open_ = SEALS[kind]
    nonce = data.draw(st.binary(min_size=nonce_len, max_size=nonce_len))
    other = data.draw(ads.filter(lambda x: x != ad))
    with pytest.raises(CryptoError) as e:
        open_(backend, key, nonce, seal(backend, key, nonce, msg, ad), other)
    assert _reason(e) == "bad_tag"


@pytest.mark.parametrize("backend", ALL, ids=_ids)
@pytest.mark.parametrize("kind", sorted(SEALS))
@pytest.mark.parametrize("length", [0, 1, 15])
def test_shorter_than_a_tag_is_bad_tag(backend: ModuleType, kind: str, length: int) -> None:
    nonce_len, _, open_ = SEALS[kind]
    with pytest.raises(CryptoError) as e:
        open_(backend, bytes(32), bytes(nonce_len), bytes(length), b"")
    assert _reason(e) == "bad_tag"


# --- caller mistakes ------------------------------------------------------------------


def _length_calls(backend: ModuleType, k: bytes, n12: bytes, n24: bytes) -> "list[Callable[[], object]]":
    """Every keyed call, with whichever of key / nonce the caller passed."""
    return [
        lambda: backend.aead_seal(k, n12, b"m", b""),
        lambda: backend.aead_open(k, n12, bytes(32), b""),
        lambda: backend.xaead_seal(k, n24, b"m", b""),
        lambda: backend.xaead_open(k, n24, bytes(32), b""),
        lambda: backend.secretbox_seal(k, n24, b"m"),
        lambda: backend.secretbox_open(k, n24, bytes(32)),
    ]


def _assert_bad_length(call: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError) as e:
        call()
    assert _reason(e) == "bad_length"


@pytest.mark.parametrize("backend", ALL, ids=_ids)
@given(n=bad_key_lens)
def test_wrong_key_length(backend: ModuleType, n: int) -> None:
    for call in _length_calls(backend, bytes(n), bytes(12), bytes(24)):
        _assert_bad_length(call)
    _assert_bad_length(lambda: backend.x25519(bytes(n), LOW_ORDER_POINTS[4]))
    _assert_bad_length(lambda: backend.x25519(bytes(32), bytes(n)))
    _assert_bad_length(lambda: backend.x25519_base(bytes(n)))
    _assert_bad_length(lambda: backend.box_beforenm(bytes(n), bytes(32)))
    _assert_bad_length(lambda: backend.box_beforenm(bytes(32), bytes(n)))


@pytest.mark.parametrize("backend", ALL, ids=_ids)
@given(n=st.integers(0, 40))
def test_wrong_nonce_length(backend: ModuleType, n: int) -> None:
    calls = _length_calls(backend, bytes(32), bytes(n), bytes(n))
    wrong = [c for c, ok in zip(calls, [12, 12, 24, 24, 24, 24]) if n != ok]
    for call in wrong:
        _assert_bad_length(call)


@pytest.mark.parametrize("backend", ALL, ids=_ids)
def test_blake2s_sizes(backend: ModuleType) -> None:
    _assert_bad_length(lambda: backend.blake2s(b"", b"", 0))
    _assert_bad_length(lambda: backend.blake2s(b"", b"", 33))
    _assert_bad_length(lambda: backend.blake2s(b"", bytes(33), 32))
    assert len(backend.blake2s(b"", bytes(32), 16)) == 16


# --- low-order points -------------------------------------------------------------


@pytest.mark.parametrize("backend", ALL, ids=_ids)
@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:6] + ".." + p.hex()[-2:])
@settings(max_examples=10, deadline=None)
@given(private=keys)
def test_low_order_point(backend: ModuleType, point: bytes, private: bytes) -> None:
    with pytest.raises(CryptoError) as e:
        backend.x25519(private, point)
    assert _reason(e) == "low_order_point"
    with pytest.raises(CryptoError) as e:
        backend.box_beforenm(point, private)
    assert _reason(e) == "low_order_point"


# --- buffer types ---------------------------------------------------------------------

buffers = st.sampled_from([bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b))])


@pytest.mark.parametrize("backend", ALL, ids=_ids)
@settings(deadline=None)
@given(wrap=buffers, key=keys, n12=nonces12, n24=nonces24, msg=st.binary(max_size=100), ad=ads)
def test_buffer_inputs(
    backend: ModuleType, wrap: Any, key: bytes, n12: bytes, n24: bytes, msg: bytes, ad: bytes
) -> None:
    w = wrap
    peer = _sodium.x25519_base(n24[:8] + key[8:])
    results = {
        "x25519": (backend.x25519(w(key), w(peer)), _sodium.x25519(key, peer)),
        "x25519_base": (backend.x25519_base(w(key)), _sodium.x25519_base(key)),
        "box_beforenm": (backend.box_beforenm(w(peer), w(key)), _sodium.box_beforenm(peer, key)),
        "blake2s": (backend.blake2s(w(msg), w(ad[:32]), 32), _sodium.blake2s(msg, ad[:32], 32)),
        "hmac": (backend.hmac_blake2s(w(key), w(msg)), _sodium.hmac_blake2s(key, msg)),
    }
    for kind, (nonce_len, seal, open_) in SEALS.items():
        n = n12 if nonce_len == 12 else n24
        sealed = seal(backend, w(key), w(n), w(msg), w(ad))
        results[kind + "_seal"] = (sealed, seal(_sodium, key, n, msg, ad))
        results[kind + "_open"] = (open_(backend, w(key), w(n), w(sealed), w(ad)), msg)
    for name, (got, expected) in results.items():
        assert type(got) is bytes, name
        assert got == expected, name


# --- the facade ---------------------------------------------------------------------------

FACADE = [
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


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="CPython picks _cpython")
def test_facade_uses_cpython_backend() -> None:
    assert meshlet.crypto.NAME == "cpython"
    assert _cpython.NAME == "cpython"
    assert (_sodium.NAME, _pyca.NAME) == ("sodium", "pyca")


@pytest.mark.parametrize("name", FACADE)
def test_cpython_composes_the_two_backends(name: str) -> None:
    chosen = getattr(_cpython, name)
    assert chosen is getattr(meshlet.crypto, name)
    assert chosen in (getattr(_sodium, name), getattr(_pyca, name))


@pytest.mark.parametrize("backend", ALL, ids=_ids)
def test_every_backend_exports_the_facade(backend: ModuleType) -> None:
    assert isinstance(backend.NAME, str)
    for name in FACADE:
        assert callable(getattr(backend, name)), name
