"""The pure-Python reference crypto backend: every primitive, nothing imported.

MicroPython ships SHA-256 and AES, none of what WireGuard, Noise, disco and
DERP need, so this module builds each primitive from its specification using
only `struct` and integers. It is the backend tests/core runs on MicroPython
and the last resort on a board without the native crypto module.

Theory of operation:

* 32-bit word arithmetic (ChaCha20, Salsa20, BLAKE2s) is done on Python ints
  masked with `& _M32`. The round functions walk a table of word indices
  instead of calling a quarter-round helper, because a function call costs
  more than the four additions it would wrap, on both runtimes.
* Field arithmetic (X25519 mod 2^255 - 19, Poly1305 mod 2^130 - 5) uses big
  ints; CPython and MicroPython's mpz both do this far faster than limbs in
  Python code could.
* XOR of data with keystream is one big-int XOR per message, again because a
  per-byte Python loop is the slowest thing either runtime can do.

Not constant-time: the ladder branches on key bits and big-int operations take
data-dependent time. Tag comparison alone is done in constant time, since a
timing leak there lets a network attacker forge tags byte by byte.

Sizes in bytes: keys 32, AEAD nonce 12, XAEAD and secretbox nonces 24, tags 16.
Sealed layouts:

    aead_seal, xaead_seal     ciphertext || tag(16)      (RFC 8439 §2.8)
    secretbox_seal            tag(16) || ciphertext      (NaCl crypto_secretbox_easy)
"""

import struct

from .._compat import TYPE_CHECKING, const
from ..errors import CryptoError, LocalProtocolError

if TYPE_CHECKING:
    _Buf = bytes | bytearray | memoryview

NAME = "pure"

# --- specification constants ---------------------------------------------

_M32 = const(0xFFFFFFFF)
_KEY_LEN = const(32)
_TAG_LEN = const(16)
_NONCE_LEN = const(12)
_XNONCE_LEN = const(24)
_P25519 = const(0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED)  # 2^255 - 19
_A24 = const(121665)  # (486662 - 2) / 4, RFC 7748 §5
_P1305 = const(0x3FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFB)  # 2^130 - 5
_R_CLAMP = const(0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF)  # RFC 8439 §2.5.1
_M128 = const(0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF)
_HMAC_BLOCK = const(64)  # BLAKE2s block size, the B of RFC 2104

# "expand 32-byte k": the four constant words of ChaCha20 and Salsa20.
_SIGMA0 = const(0x61707865)
_SIGMA1 = const(0x3320646E)
_SIGMA2 = const(0x79622D32)
_SIGMA3 = const(0x6B206574)

_BASE_POINT = b"\x09" + bytes(31)  # u = 9, RFC 7748 §4.1

# Quarter-round word indices, four per quarter round: a column round then a
# diagonal round (RFC 8439 §2.3), a column round then a row round (the Salsa20
# specification §3-§6), and BLAKE2s's column then diagonal G steps (RFC 7693 §3.2).
_CHACHA_QR = bytes((0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                    0, 5, 10, 15, 1, 6, 11, 12, 2, 7, 8, 13, 3, 4, 9, 14))  # fmt: skip
_SALSA_QR = bytes((0, 4, 8, 12, 5, 9, 13, 1, 10, 14, 2, 6, 15, 3, 7, 11,
                   0, 1, 2, 3, 5, 6, 7, 4, 10, 11, 8, 9, 15, 12, 13, 14))  # fmt: skip
_BLAKE2S_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
               0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)  # fmt: skip
# RFC 7693 §2.7: the message word schedule, ten rows of sixteen.
_BLAKE2S_SIGMA = bytes((
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3,
    11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4,
    7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8,
    9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13,
    2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9,
    12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11,
    13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10,
    6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5,
    10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0,
))  # fmt: skip


# --- helpers ---------------------------------------------------------------


def _fixed(b: "_Buf", n: int) -> bytes:
    """Returns `b` as bytes, or raises LocalProtocolError if it is not `n` long."""
    if len(b) != n:
        raise LocalProtocolError("bad_length", "expected %d bytes, got %d" % (n, len(b)))
    return bytes(b)


def _xor(data: bytes, stream: bytes) -> bytes:
    """data XOR stream[:len(data)], as one big-int operation."""
    n = len(data)
    x = int.from_bytes(data, "little") ^ int.from_bytes(stream[:n], "little")
    return x.to_bytes(n, "little")


def _tags_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two 16-byte tags (XOR-accumulate)."""
    acc = 0
    for i in range(_TAG_LEN):
        acc |= a[i] ^ b[i]
    return acc == 0


# --- X25519, RFC 7748 -----------------------------------------------------


def _decode_scalar(k: bytes) -> int:
    """RFC 7748 §5 decodeScalar25519: clear the cofactor bits, set bit 254."""
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return int.from_bytes(b, "little")


def _decode_u(u: bytes) -> int:
    """RFC 7748 §5 decodeUCoordinate: mask bit 255; non-canonical values MUST be
    accepted and are reduced mod p."""
    b = bytearray(u)
    b[31] &= 127
    return int.from_bytes(b, "little") % _P25519


def _ladder(k: int, u: int) -> int:
    """The Montgomery ladder of RFC 7748 §5, returning x2 / z2 mod p.

    The conditional swap is a branch, not the spec's masked cswap: this backend
    makes no constant-time claim (see the module docstring).
    """
    p = _P25519
    x2, z2, x3, z3 = 1, 0, u, 1
    swap = 0
    for t in range(254, -1, -1):
        bit = (k >> t) & 1
        if swap ^ bit:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swap = bit
        a = x2 + z2
        b = x2 - z2
        aa = a * a % p
        bb = b * b % p
        e = aa - bb
        da = (x3 - z3) * a % p
        cb = (x3 + z3) * b % p
        s = da + cb
        d = da - cb
        x3 = s * s % p
        z3 = u * (d * d % p) % p
        x2 = aa * bb % p
        z2 = e * (aa + _A24 * e) % p
    if swap:
        x2, z2 = x3, z3
    return x2 * pow(z2, p - 2, p) % p


def x25519(private: "_Buf", public: "_Buf") -> bytes:
    """X25519(private, public) per RFC 7748 §5.

    Raises:
        LocalProtocolError("bad_length"): either input is not 32 bytes.
        CryptoError("low_order_point"): the result is all zeros, which RFC 7748
            §6.1 says a protocol MAY reject; WireGuard and Noise must.
    """
    k = _decode_scalar(_fixed(private, _KEY_LEN))
    u = _decode_u(_fixed(public, _KEY_LEN))
    out = _ladder(k, u)
    if out == 0:
        raise CryptoError("low_order_point")
    return out.to_bytes(32, "little")


def x25519_base(private: "_Buf") -> bytes:
    """The public key of `private`: X25519 with the base point u = 9."""
    return x25519(private, _BASE_POINT)


# --- ChaCha20 and HChaCha20, RFC 8439 §2.3 and draft-irtf-cfrg-xchacha §2.2 ---


def _chacha_rounds(x: "list[int]") -> None:
    """The 20 ChaCha rounds (ten column/diagonal pairs) on `x`, in place."""
    qr = _CHACHA_QR
    for _ in range(10):
        for i in range(0, 32, 4):
            a = qr[i]
            b = qr[i + 1]
            c = qr[i + 2]
            d = qr[i + 3]
            xa = x[a]
            xb = x[b]
            xc = x[c]
            xd = x[d]
            xa = (xa + xb) & _M32
            xd ^= xa
            xd = ((xd << 16) & _M32) | (xd >> 16)
            xc = (xc + xd) & _M32
            xb ^= xc
            xb = ((xb << 12) & _M32) | (xb >> 20)
            xa = (xa + xb) & _M32
            xd ^= xa
            xd = ((xd << 8) & _M32) | (xd >> 24)
            xc = (xc + xd) & _M32
            xb ^= xc
            xb = ((xb << 7) & _M32) | (xb >> 25)
            x[a] = xa
            x[b] = xb
            x[c] = xc
            x[d] = xd


def _chacha_state(key: bytes, words: "tuple[int, ...]") -> "list[int]":
    """Constants, the eight key words, then the four counter/nonce `words`."""
    state = [_SIGMA0, _SIGMA1, _SIGMA2, _SIGMA3]
    state.extend(struct.unpack("<8I", key))
    state.extend(words)
    return state


def _chacha20_stream(key: bytes, nonce: bytes, n: int) -> bytes:
    """`n` bytes of ChaCha20 keystream from block counter 0 (RFC 8439 §2.4)."""
    nonce_words = struct.unpack("<3I", nonce)
    out = bytearray()
    for counter in range((n + 63) // 64):
        init = _chacha_state(key, (counter,) + nonce_words)
        x = list(init)
        _chacha_rounds(x)
        for i in range(16):
            x[i] = (x[i] + init[i]) & _M32
        out.extend(struct.pack("<16I", *x))
    return bytes(out[:n])


def _hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2): the rounds without the final
    addition, keeping words 0-3 and 12-15 as a 32-byte subkey."""
    x = _chacha_state(key, struct.unpack("<4I", nonce16))
    _chacha_rounds(x)
    return struct.pack("<8I", x[0], x[1], x[2], x[3], x[12], x[13], x[14], x[15])


# --- Salsa20, HSalsa20 and XSalsa20 (Bernstein, "Extending the Salsa20 nonce") ---


def _salsa_rounds(x: "list[int]") -> None:
    """The 20 Salsa20 rounds (ten column/row pairs) on `x`, in place."""
    qr = _SALSA_QR
    for _ in range(10):
        for i in range(0, 32, 4):
            a = qr[i]
            b = qr[i + 1]
            c = qr[i + 2]
            d = qr[i + 3]
            xa = x[a]
            xb = x[b]
            xc = x[c]
            xd = x[d]
            t = (xa + xd) & _M32
            xb ^= ((t << 7) & _M32) | (t >> 25)
            t = (xb + xa) & _M32
            xc ^= ((t << 9) & _M32) | (t >> 23)
            t = (xc + xb) & _M32
            xd ^= ((t << 13) & _M32) | (t >> 19)
            t = (xd + xc) & _M32
            xa ^= ((t << 18) & _M32) | (t >> 14)
            x[a] = xa
            x[b] = xb
            x[c] = xc
            x[d] = xd


def _salsa_state(key: bytes, w6: int, w7: int, w8: int, w9: int) -> "list[int]":
    """Salsa20's layout: constants on the diagonal, the key in words 1-4 and
    11-14, the nonce and counter (or HSalsa20's input) in words 6-9."""
    k = struct.unpack("<8I", key)
    return [_SIGMA0, k[0], k[1], k[2], k[3], _SIGMA1, w6, w7,
            w8, w9, _SIGMA2, k[4], k[5], k[6], k[7], _SIGMA3]  # fmt: skip


def _hsalsa20(key: bytes, in16: bytes) -> bytes:
    """HSalsa20: the rounds without the final addition, keeping the diagonal
    and words 6-9. libsodium's crypto_core_hsalsa20."""
    w = struct.unpack("<4I", in16)
    x = _salsa_state(key, w[0], w[1], w[2], w[3])
    _salsa_rounds(x)
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


def _xsalsa20_stream(key: bytes, nonce24: bytes, n: int) -> bytes:
    """`n` bytes of XSalsa20 keystream: HSalsa20 subkey from nonce[0:16], then
    Salsa20 with nonce[16:24] and a 64-bit block counter from 0."""
    subkey = _hsalsa20(key, nonce24[:16])
    n0, n1 = struct.unpack("<2I", nonce24[16:])
    out = bytearray()
    for counter in range((n + 63) // 64):
        init = _salsa_state(subkey, n0, n1, counter & _M32, counter >> 32)
        x = list(init)
        _salsa_rounds(x)
        for i in range(16):
            x[i] = (x[i] + init[i]) & _M32
        out.extend(struct.pack("<16I", *x))
    return bytes(out[:n])


# --- Poly1305, RFC 8439 §2.5 ----------------------------------------------


def _poly1305(otk: bytes, msg: bytes) -> bytes:
    """Poly1305 of `msg` under the one-time key `otk` (r || s)."""
    r = int.from_bytes(otk[:16], "little") & _R_CLAMP
    s = int.from_bytes(otk[16:32], "little")
    acc = 0
    for i in range(0, len(msg), 16):
        block = msg[i : i + 16]
        n = int.from_bytes(block, "little") | (1 << (8 * len(block)))
        acc = (acc + n) * r % _P1305
    return ((acc + s) & _M128).to_bytes(16, "little")


def _pad16(b: bytes) -> bytes:
    return b + bytes(-len(b) % 16)


def _aead_tag(otk: bytes, ad: bytes, ct: bytes) -> bytes:
    """RFC 8439 §2.8: Poly1305 over ad, pad, ciphertext, pad, and both lengths."""
    mac_data = _pad16(ad) + _pad16(ct) + struct.pack("<QQ", len(ad), len(ct))
    return _poly1305(otk, mac_data)


# --- ChaCha20-Poly1305, RFC 8439 §2.8 ------------------------------------------


def aead_seal(key: "_Buf", nonce12: "_Buf", plaintext: "_Buf", ad: "_Buf") -> bytes:
    """ChaCha20-Poly1305 encryption; returns ciphertext || tag.

    Block 0 of the keystream gives the Poly1305 key (RFC 8439 §2.6) and the
    plaintext is encrypted from block 1, so one stream of 64 + len bytes
    serves both.
    """
    k = _fixed(key, _KEY_LEN)
    stream = _chacha20_stream(k, _fixed(nonce12, _NONCE_LEN), 64 + len(plaintext))
    ct = _xor(bytes(plaintext), stream[64:])
    return ct + _aead_tag(stream[:32], bytes(ad), ct)


def aead_open(key: "_Buf", nonce12: "_Buf", ciphertext_and_tag: "_Buf", ad: "_Buf") -> bytes:
    """ChaCha20-Poly1305 decryption; the tag is checked before anything is
    decrypted.

    Raises:
        LocalProtocolError("bad_length"): key or nonce of the wrong size.
        CryptoError("bad_tag"): the input is shorter than a tag or does not verify.
    """
    k = _fixed(key, _KEY_LEN)
    n = _fixed(nonce12, _NONCE_LEN)
    data = bytes(ciphertext_and_tag)
    if len(data) < _TAG_LEN:
        raise CryptoError("bad_tag", "shorter than a tag")
    ct = data[:-_TAG_LEN]
    stream = _chacha20_stream(k, n, 64 + len(ct))
    if not _tags_equal(_aead_tag(stream[:32], bytes(ad), ct), data[-_TAG_LEN:]):
        raise CryptoError("bad_tag")
    return _xor(ct, stream[64:])


# --- XChaCha20-Poly1305, draft-irtf-cfrg-xchacha-03 §2.3 ---------------------------



class AeadCipher:
    """ChaCha20-Poly1305 bound to one key; here it only remembers the key."""

    __slots__ = ("_key",)

    def __init__(self, key: "_Buf") -> None:
        if len(key) != 32:
            raise LocalProtocolError("bad_length", "AEAD key of %d bytes" % len(key))
        self._key = bytes(key)

    def seal(self, nonce12: "_Buf", plaintext: "_Buf", ad: "_Buf") -> bytes:
        return aead_seal(self._key, nonce12, plaintext, ad)

    def open(self, nonce12: "_Buf", ciphertext_and_tag: "_Buf", ad: "_Buf") -> bytes:
        return aead_open(self._key, nonce12, ciphertext_and_tag, ad)


aead_cipher = AeadCipher


def _xchacha_subkey(key: "_Buf", nonce24: "_Buf") -> "tuple[bytes, bytes]":
    """HChaCha20 subkey from nonce[0:16]; the inner nonce is 4 zero bytes ||
    nonce[16:24]."""
    n = _fixed(nonce24, _XNONCE_LEN)
    return _hchacha20(_fixed(key, _KEY_LEN), n[:16]), bytes(4) + n[16:]


def xaead_seal(key: "_Buf", nonce24: "_Buf", plaintext: "_Buf", ad: "_Buf") -> bytes:
    """XChaCha20-Poly1305 encryption; returns ciphertext || tag."""
    subkey, nonce12 = _xchacha_subkey(key, nonce24)
    return aead_seal(subkey, nonce12, plaintext, ad)


def xaead_open(key: "_Buf", nonce24: "_Buf", ciphertext_and_tag: "_Buf", ad: "_Buf") -> bytes:
    """XChaCha20-Poly1305 decryption; raises CryptoError("bad_tag") on forgery."""
    subkey, nonce12 = _xchacha_subkey(key, nonce24)
    return aead_open(subkey, nonce12, ciphertext_and_tag, ad)


# --- BLAKE2s, RFC 7693 ------------------------------------------------------


def _blake2s_compress(h: "list[int]", block: bytes, t: int, last: bool) -> None:
    """The compression function F of RFC 7693 §3.2, updating `h` in place.

    `t` is the byte offset counter, counting the block just compressed.
    """
    m = struct.unpack("<16I", block)
    v = h + list(_BLAKE2S_IV)
    v[12] ^= t & _M32
    v[13] ^= t >> 32
    if last:
        v[14] ^= _M32
    qr = _CHACHA_QR  # BLAKE2s's G steps touch the same words as ChaCha's
    sigma = _BLAKE2S_SIGMA
    for r in range(0, 160, 16):
        for i in range(0, 32, 4):
            a = qr[i]
            b = qr[i + 1]
            c = qr[i + 2]
            d = qr[i + 3]
            j = r + (i >> 1)
            va = v[a]
            vb = v[b]
            vc = v[c]
            vd = v[d]
            # G (RFC 7693 §3.1), rotation distances 16, 12, 8, 7.
            va = (va + vb + m[sigma[j]]) & _M32
            vd ^= va
            vd = (vd >> 16) | ((vd << 16) & _M32)
            vc = (vc + vd) & _M32
            vb ^= vc
            vb = (vb >> 12) | ((vb << 20) & _M32)
            va = (va + vb + m[sigma[j + 1]]) & _M32
            vd ^= va
            vd = (vd >> 8) | ((vd << 24) & _M32)
            vc = (vc + vd) & _M32
            vb ^= vc
            vb = (vb >> 7) | ((vb << 25) & _M32)
            v[a] = va
            v[b] = vb
            v[c] = vc
            v[d] = vd
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


def blake2s(data: "_Buf", key: "_Buf" = b"", digest_size: int = 32) -> bytes:
    """BLAKE2s (RFC 7693), optionally keyed, with a 1-32 byte digest.

    A key is hashed as a first block of its own, zero-padded (§3.3). Every
    block but the last is compressed as soon as the next is known to exist;
    the last, zero-padded, carries the final flag and the true byte count.

    Raises:
        LocalProtocolError("bad_length"): key longer than 32 bytes, or digest
            size outside 1..32.
    """
    if not 1 <= digest_size <= 32 or len(key) > 32:
        raise LocalProtocolError("bad_length", "blake2s key <= 32, digest 1..32")
    h = list(_BLAKE2S_IV)
    h[0] ^= 0x01010000 ^ (len(key) << 8) ^ digest_size  # parameter block, §2.5
    buf = _pad64(bytes(key)) + bytes(data) if key else bytes(data)
    n = len(buf)
    last = ((n - 1) // 64) * 64 if n else 0
    for off in range(0, last, 64):
        _blake2s_compress(h, buf[off : off + 64], off + 64, False)
    _blake2s_compress(h, _pad64(buf[last:]), n, True)
    return struct.pack("<8I", *h)[:digest_size]


def _pad64(b: bytes) -> bytes:
    return b + bytes(64 - len(b))


def hmac_blake2s(key: "_Buf", data: "_Buf") -> bytes:
    """HMAC (RFC 2104) over BLAKE2s-256 with a 64-byte block, as Noise's HMAC-HASH
    and WireGuard's HKDF use it: keys longer than a block are hashed first."""
    k = bytes(key)
    if len(k) > _HMAC_BLOCK:
        k = blake2s(k)
    kx = int.from_bytes(_pad64(k), "little")
    ipad = (kx ^ int.from_bytes(b"\x36" * 64, "little")).to_bytes(64, "little")
    opad = (kx ^ int.from_bytes(b"\x5c" * 64, "little")).to_bytes(64, "little")
    return blake2s(opad + blake2s(ipad + bytes(data)))


# --- NaCl box and secretbox (XSalsa20-Poly1305) ------------------------------


def box_beforenm(their_public: "_Buf", my_private: "_Buf") -> bytes:
    """libsodium crypto_box_beforenm: HSalsa20(X25519(my_private, their_public),
    16 zero bytes), the shared key of a NaCl box.

    Raises CryptoError("low_order_point") where libsodium returns -1.
    """
    return _hsalsa20(x25519(my_private, their_public), bytes(16))


def secretbox_seal(key: "_Buf", nonce24: "_Buf", plaintext: "_Buf") -> bytes:
    """NaCl crypto_secretbox_easy: returns tag(16) || ciphertext.

    The first 32 bytes of the XSalsa20 stream are the Poly1305 key; the
    plaintext is encrypted with the stream from byte 32 on, and the tag covers
    the ciphertext alone.
    """
    k = _fixed(key, _KEY_LEN)
    stream = _xsalsa20_stream(k, _fixed(nonce24, _XNONCE_LEN), 32 + len(plaintext))
    ct = _xor(bytes(plaintext), stream[32:])
    return _poly1305(stream[:32], ct) + ct


def secretbox_open(key: "_Buf", nonce24: "_Buf", tag_and_ct: "_Buf") -> bytes:
    """NaCl crypto_secretbox_open_easy.

    Raises:
        LocalProtocolError("bad_length"): key or nonce of the wrong size.
        CryptoError("bad_tag"): the input is shorter than a tag or does not verify.
    """
    k = _fixed(key, _KEY_LEN)
    n = _fixed(nonce24, _XNONCE_LEN)
    data = bytes(tag_and_ct)
    if len(data) < _TAG_LEN:
        raise CryptoError("bad_tag", "shorter than a tag")
    ct = data[_TAG_LEN:]
    stream = _xsalsa20_stream(k, n, 32 + len(ct))
    if not _tags_equal(_poly1305(stream[:32], ct), data[:_TAG_LEN]):
        raise CryptoError("bad_tag")
    return _xor(ct, stream[32:])
