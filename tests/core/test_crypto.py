"""The crypto facade against the published vectors, on whichever backend loaded.

Runs under pytest (CPython backend once it exists) and under MicroPython via
tools/mprun (always the pure backend there). The vectors live in
tests/vectors/crypto.json and wireguard_kdf.json, each naming its source.
"""

from meshlet import crypto
from meshlet._compat import TYPE_CHECKING
from meshlet.errors import CryptoError, LocalProtocolError
from meshlet_testing.raises import raises
from meshlet_testing.vectors import cases, unhex

if TYPE_CHECKING:
    from typing import Callable

    _Fn = Callable[..., bytes]

_P = 2**255 - 19

# u-coordinates whose X25519 result is all zeros for every clamped scalar:
# 0, 1 and p - 1 (orders 1, 4, 2), two points of order 8, and the
# non-canonical encodings p and p + 1 of 0 and 1 (RFC 7748 §5 reduces mod p).
_LOW_ORDER_U = (
    bytes(32),
    b"\x01" + bytes(31),
    (_P - 1).to_bytes(32, "little"),
    _P.to_bytes(32, "little"),
    (_P + 1).to_bytes(32, "little"),
    unhex("e0 eb 7a 7c 3b 41 b8 ae 16 56 e3 fa f1 9f c4 6a da 09 8d eb 9c 32 b1 fd 86 62 05 16 5f 49 b8 00"),
    unhex("5f 9c 95 bc a3 50 8c 24 b1 d0 b1 55 9c 83 ef 5b 04 44 5c c4 58 1c 8e 86 d8 22 4e dd d0 9f 11 57"),
)

_KEY = bytes(range(32))
_NONCE12 = bytes(range(12))
_NONCE24 = bytes(range(24))


def _kind(kind: str) -> "list[dict[str, str]]":
    got = [v for v in cases("crypto") if v["kind"] == kind]
    assert got, kind
    return got


def _flip(b: bytes, i: int) -> bytes:
    out = bytearray(b)
    out[i] ^= 0x01
    return bytes(out)


# --- X25519 ------------------------------------------------------------------


def test_x25519_rfc7748_vectors() -> None:
    for v in _kind("x25519"):
        assert crypto.x25519(unhex(v["scalar"]), unhex(v["u"])) == unhex(v["out"]), v["source"]


def test_x25519_base_rfc7748_vectors() -> None:
    for v in _kind("x25519_base"):
        assert crypto.x25519_base(unhex(v["private"])) == unhex(v["public"]), v["comment"]


def test_x25519_accepts_bytearray_and_memoryview() -> None:
    v = _kind("x25519")[0]
    k, u, out = unhex(v["scalar"]), unhex(v["u"]), unhex(v["out"])
    got = crypto.x25519(bytearray(k), memoryview(u))
    assert type(got) is bytes and got == out
    assert crypto.x25519_base(memoryview(k)) == crypto.x25519_base(k)


def test_x25519_low_order_point() -> None:
    for u in _LOW_ORDER_U:
        raises(CryptoError, "low_order_point", crypto.x25519, _KEY, u)


def test_x25519_bad_length() -> None:
    raises(LocalProtocolError, "bad_length", crypto.x25519, bytes(31), _KEY)
    raises(LocalProtocolError, "bad_length", crypto.x25519, _KEY, bytes(33))
    raises(LocalProtocolError, "bad_length", crypto.x25519_base, b"")


# --- ChaCha20-Poly1305 and XChaCha20-Poly1305 ----------------------------------


def _check_aead_vectors(kind: str, seal: "_Fn", open_: "_Fn") -> None:
    for v in _kind(kind):
        key, nonce, ad = unhex(v["key"]), unhex(v["nonce"]), unhex(v["ad"])
        pt, sealed = unhex(v["plaintext"]), unhex(v["sealed"])
        assert seal(key, nonce, pt, ad) == sealed, v["source"]
        assert open_(key, nonce, sealed, ad) == pt, v["source"]
        got = open_(bytearray(key), memoryview(nonce), memoryview(sealed), bytearray(ad))
        assert type(got) is bytes and got == pt


def _check_aead_tamper(kind: str, open_: "_Fn") -> None:
    v = _kind(kind)[0]
    key, nonce, ad, sealed = unhex(v["key"]), unhex(v["nonce"]), unhex(v["ad"]), unhex(v["sealed"])
    for i in (0, len(sealed) // 2, len(sealed) - 17, len(sealed) - 16, len(sealed) - 1):
        raises(CryptoError, "bad_tag", open_, key, nonce, _flip(sealed, i), ad)
    raises(CryptoError, "bad_tag", open_, key, nonce, sealed, _flip(ad, 0))
    raises(CryptoError, "bad_tag", open_, key, nonce, sealed, ad + b"\x00")
    raises(CryptoError, "bad_tag", open_, key, _flip(nonce, len(nonce) - 1), sealed, ad)
    raises(CryptoError, "bad_tag", open_, _flip(key, 31), nonce, sealed, ad)
    raises(CryptoError, "bad_tag", open_, key, nonce, sealed[:-1], ad)
    raises(CryptoError, "bad_tag", open_, key, nonce, sealed[:15], ad)
    raises(CryptoError, "bad_tag", open_, key, nonce, b"", ad)


def _check_aead_roundtrip(nonce: bytes, seal: "_Fn", open_: "_Fn") -> None:
    for n in (0, 1, 15, 16, 17, 63, 64, 65, 129):
        pt = bytes(range(n))
        ad = bytes(n % 20)
        sealed = seal(_KEY, nonce, pt, ad)
        assert len(sealed) == n + crypto.TAG_LEN
        assert open_(_KEY, nonce, sealed, ad) == pt


def test_aead_rfc8439_vector() -> None:
    _check_aead_vectors("aead", crypto.aead_seal, crypto.aead_open)


def test_aead_tamper_is_bad_tag() -> None:
    _check_aead_tamper("aead", crypto.aead_open)


def test_aead_roundtrip_lengths() -> None:
    _check_aead_roundtrip(_NONCE12, crypto.aead_seal, crypto.aead_open)


def test_aead_bad_length() -> None:
    raises(LocalProtocolError, "bad_length", crypto.aead_seal, bytes(31), _NONCE12, b"", b"")
    raises(LocalProtocolError, "bad_length", crypto.aead_seal, _KEY, bytes(8), b"", b"")
    raises(LocalProtocolError, "bad_length", crypto.aead_open, _KEY, _NONCE24, bytes(16), b"")
    raises(LocalProtocolError, "bad_length", crypto.aead_open, bytes(33), _NONCE12, bytes(16), b"")


def test_xaead_draft_xchacha_vector() -> None:
    _check_aead_vectors("xaead", crypto.xaead_seal, crypto.xaead_open)


def test_xaead_tamper_is_bad_tag() -> None:
    _check_aead_tamper("xaead", crypto.xaead_open)


def test_xaead_roundtrip_lengths() -> None:
    _check_aead_roundtrip(_NONCE24, crypto.xaead_seal, crypto.xaead_open)


def test_xaead_bad_length() -> None:
    raises(LocalProtocolError, "bad_length", crypto.xaead_seal, _KEY, _NONCE12, b"", b"")
    raises(LocalProtocolError, "bad_length", crypto.xaead_seal, bytes(16), _NONCE24, b"", b"")
    raises(LocalProtocolError, "bad_length", crypto.xaead_open, _KEY, bytes(23), bytes(16), b"")


# --- BLAKE2s, HMAC-BLAKE2s, HKDF ------------------------------------------------


def test_blake2s_vectors() -> None:
    for v in _kind("blake2s"):
        data, key, size = unhex(v["data"]), unhex(v["key"]), int(v["digest_size"])
        assert crypto.blake2s(data, key, size) == unhex(v["hash"]), v.get("comment", v["source"])


def test_blake2s_defaults_and_buffers() -> None:
    v = _kind("blake2s")[0]  # RFC 7693 Appendix B, unkeyed, 32 bytes
    assert crypto.blake2s(unhex(v["data"])) == unhex(v["hash"])
    assert crypto.blake2s(memoryview(unhex(v["data"]))) == unhex(v["hash"])
    keyed = crypto.blake2s(b"x", _KEY, 16)
    assert crypto.blake2s(bytearray(b"x"), key=memoryview(_KEY), digest_size=16) == keyed


def test_blake2s_bad_length() -> None:
    raises(LocalProtocolError, "bad_length", crypto.blake2s, b"", bytes(33))
    raises(LocalProtocolError, "bad_length", crypto.blake2s, b"", b"", 0)
    raises(LocalProtocolError, "bad_length", crypto.blake2s, b"", b"", 33)


def test_hmac_blake2s_vectors() -> None:
    for v in _kind("hmac_blake2s"):
        assert crypto.hmac_blake2s(unhex(v["key"]), unhex(v["data"])) == unhex(v["mac"]), v["comment"]


def test_hkdf_blake2s_wireguard_vectors() -> None:
    vectors = cases("wireguard_kdf")
    assert vectors
    for v in vectors:
        key, ikm = unhex(v["key"]), unhex(v["input"])
        t1, t2, t3 = unhex(v["t1"]), unhex(v["t2"]), unhex(v["t3"])
        assert crypto.hkdf_blake2s(key, ikm, 3) == [t1, t2, t3], v["comment"]
        assert crypto.hkdf_blake2s(key, ikm, 2) == [t1, t2]
        assert crypto.hkdf_blake2s(key, ikm, 1) == [t1]


# --- NaCl box and secretbox ----------------------------------------------------


def test_box_beforenm_and_box_vectors() -> None:
    for v in _kind("box"):
        my_priv, their_pub = unhex(v["my_private"]), unhex(v["their_public"])
        peer_priv, my_pub = unhex(v["peer_private"]), unhex(v["my_public"])
        nonce, pt, sealed = unhex(v["nonce"]), unhex(v["plaintext"]), unhex(v["sealed"])
        shared = unhex(v["shared_key"])
        assert crypto.box_beforenm(their_pub, my_priv) == shared
        assert crypto.box_beforenm(my_pub, peer_priv) == shared  # both ends agree
        assert crypto.box_seal(my_priv, their_pub, nonce, pt) == sealed, v["comment"]
        assert crypto.box_open(peer_priv, my_pub, nonce, sealed) == pt
        assert crypto.secretbox_open(shared, nonce, sealed) == pt


def test_box_low_order_point() -> None:
    raises(CryptoError, "low_order_point", crypto.box_beforenm, bytes(32), _KEY)
    raises(CryptoError, "low_order_point", crypto.box_seal, _KEY, _LOW_ORDER_U[5], _NONCE24, b"hi")


def test_secretbox_vectors() -> None:
    for v in _kind("secretbox"):
        key, nonce, pt, sealed = unhex(v["key"]), unhex(v["nonce"]), unhex(v["plaintext"]), unhex(v["sealed"])
        assert crypto.secretbox_seal(key, nonce, pt) == sealed, v["comment"]
        assert crypto.secretbox_open(key, nonce, sealed) == pt
        got = crypto.secretbox_open(bytearray(key), memoryview(nonce), memoryview(sealed))
        assert type(got) is bytes and got == pt


def test_secretbox_tamper_is_bad_tag() -> None:
    v = _kind("secretbox")[1]
    key, nonce, sealed = unhex(v["key"]), unhex(v["nonce"]), unhex(v["sealed"])
    for i in (0, 15, 16, len(sealed) - 1):
        raises(CryptoError, "bad_tag", crypto.secretbox_open, key, nonce, _flip(sealed, i))
    raises(CryptoError, "bad_tag", crypto.secretbox_open, key, _flip(nonce, 23), sealed)
    raises(CryptoError, "bad_tag", crypto.secretbox_open, key, nonce, sealed[:-1])
    raises(CryptoError, "bad_tag", crypto.secretbox_open, key, nonce, sealed[:15])
    raises(CryptoError, "bad_tag", crypto.box_open, _KEY, crypto.x25519_base(_KEY), nonce, sealed)


def test_secretbox_roundtrip_lengths() -> None:
    for n in (0, 1, 31, 32, 33, 64, 100):
        pt = bytes(range(n))
        sealed = crypto.secretbox_seal(_KEY, _NONCE24, pt)
        assert len(sealed) == n + crypto.TAG_LEN
        assert crypto.secretbox_open(_KEY, _NONCE24, sealed) == pt


def test_secretbox_bad_length() -> None:
    raises(LocalProtocolError, "bad_length", crypto.secretbox_seal, bytes(31), _NONCE24, b"")
    raises(LocalProtocolError, "bad_length", crypto.secretbox_seal, _KEY, _NONCE12, b"")
    raises(LocalProtocolError, "bad_length", crypto.secretbox_open, _KEY, bytes(25), bytes(16))


def test_aead_cipher_binds_a_key_for_many_packets():
    key = bytes(range(32))
    cipher = crypto.aead_cipher(key)
    for counter in range(3):
        nonce = bytes(4) + counter.to_bytes(8, "little")
        sealed = cipher.seal(nonce, b"packet", b"")
        assert sealed == crypto.aead_seal(key, nonce, b"packet", b"")
        assert cipher.open(nonce, sealed, b"") == b"packet"
    try:
        cipher.open(bytes(12), b"\x00" * 22, b"")
    except CryptoError as e:
        assert e.reason == "bad_tag"
    else:
        raise AssertionError("forged packet opened")
