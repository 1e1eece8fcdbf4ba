"""Noise_IK_25519_ChaChaPoly_BLAKE2s against the cacophony vector, both roles, plus misuse."""

from meshlet import crypto, noise
from meshlet.errors import CryptoError, LocalProtocolError, RemoteProtocolError
from meshlet_testing.raises import raises
from meshlet_testing.vectors import cases, unhex

_V = cases("noise_cacophony_ik")[0]
_MSGS = _V["messages"]
_MAX_NONCE = 0xFFFFFFFFFFFFFFFF


def _payload(i):
    return unhex(_MSGS[i]["payload"])


def _ciphertext(i):
    return unhex(_MSGS[i]["ciphertext"])


def _initiator(byteorder="little"):
    return noise.HandshakeState(
        True,
        unhex(_V["init_static"]),
        unhex(_V["init_ephemeral"]),
        unhex(_V["init_remote_static"]),
        unhex(_V["init_prologue"]),
        byteorder,
    )


def _responder(byteorder="little"):
    s, e = unhex(_V["resp_static"]), unhex(_V["resp_ephemeral"])
    return noise.HandshakeState(False, s, e, None, unhex(_V["resp_prologue"]), byteorder)


def _handshake(byteorder="little"):
    """Both roles through messages 0 and 1, each side checked against the vector."""
    ini = _initiator(byteorder)
    resp = _responder(byteorder)
    m0 = ini.write_message(_payload(0))
    assert m0 == _ciphertext(0), m0.hex()
    assert resp.read_message(_ciphertext(0)) == _payload(0)
    m1 = resp.write_message(_payload(1))
    assert m1 == _ciphertext(1), m1.hex()
    assert ini.read_message(_ciphertext(1)) == _payload(1)
    assert ini.is_complete() and resp.is_complete()
    return ini, resp


def test_protocol_name_longer_than_hashlen_is_hashed():
    sym = noise.SymmetricState(noise.PROTOCOL_NAME_IK)
    assert len(noise.PROTOCOL_NAME_IK) == 33
    assert sym.h == crypto.blake2s(noise.PROTOCOL_NAME_IK) == sym.ck
    assert sym.h == unhex("bbea022b948cf3bc5857d70804229179e1116bc40cb8cc074835349c464bca36")


def test_short_protocol_name_is_zero_padded():
    sym = noise.SymmetricState(b"Noise_NN_25519_AESGCM_SHA256")
    assert sym.h == b"Noise_NN_25519_AESGCM_SHA256" + bytes(4)


def test_cacophony_handshake_both_roles():
    ini, resp = _handshake()
    # The responder learned the initiator's static key from message 0.
    assert resp.rs == crypto.x25519_base(unhex(_V["init_static"]))
    assert resp.re == ini.e_pub and ini.re == resp.e_pub


def test_handshake_hash_and_split_keys():
    ini, resp = _handshake()
    want = unhex(_V["derived"]["handshake_hash"])
    assert ini.get_handshake_hash() == want == resp.get_handshake_hash()
    i1, i2 = ini.split()
    r1, r2 = resp.split()
    assert i1.k == r1.k == unhex(_V["derived"]["k1"])
    assert i2.k == r2.k == unhex(_V["derived"]["k2"])
    assert i1.n == i2.n == 0


def test_transport_messages_2_to_5_little_endian():
    # control.md §13: 2 and 4 go initiator -> responder under c1 (n = 0, 1),
    # 3 and 5 the other way under c2.
    ini, resp = _handshake()
    i1, i2 = ini.split()
    r1, r2 = resp.split()
    for i in range(2, 6):
        send, recv = (i1, r1) if i % 2 == 0 else (r2, i2)
        assert send.n == (i - 2) // 2
        ct = send.encrypt_with_ad(b"", _payload(i))
        assert ct == _ciphertext(i), (i, ct.hex())
        assert recv.decrypt_with_ad(b"", ct) == _payload(i)


def test_big_endian_nonces_agree_at_zero_and_differ_from_one():
    ini, resp = _handshake("big")  # the handshake itself only ever uses n = 0
    i1, i2 = ini.split()
    r1, r2 = resp.split()
    assert i1.byteorder == "big"
    for i in range(2, 6):
        send, recv = (i1, r1) if i % 2 == 0 else (r2, i2)
        ct = send.encrypt_with_ad(b"", _payload(i))
        assert (ct == _ciphertext(i)) == (i < 4), i
        assert recv.decrypt_with_ad(b"", ct) == _payload(i)


def test_nonce_layout():
    key = bytes(range(32))
    for order in ("little", "big"):
        cs = noise.CipherState(key, order)
        cs.set_nonce(0x0102030405060708)
        got = cs.encrypt_with_ad(b"ad", b"x")
        nonce = bytes(4) + (0x0102030405060708).to_bytes(8, order)
        assert got == crypto.aead_seal(key, nonce, b"x", b"ad")
        assert cs.n == 0x0102030405060709


def test_cipher_without_key_is_identity():
    cs = noise.CipherState()
    assert not cs.has_key()
    assert cs.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cs.decrypt_with_ad(b"ad", b"plain") == b"plain"
    assert cs.n == 0


def test_failed_decrypt_leaves_the_nonce():
    key = bytes(range(32))
    sender = noise.CipherState(key)
    receiver = noise.CipherState(key)
    ct = bytearray(sender.encrypt_with_ad(b"", b"hello"))
    ct[0] ^= 1
    raises(CryptoError, "bad_tag", receiver.decrypt_with_ad, b"", bytes(ct))
    assert receiver.n == 0
    ct[0] ^= 1
    assert receiver.decrypt_with_ad(b"", bytes(ct)) == b"hello"


def test_nonce_2_to_the_64_minus_1_is_never_used():
    key = bytes(range(32))
    sender = noise.CipherState(key, "big")
    sender.set_nonce(_MAX_NONCE - 1)
    last = sender.encrypt_with_ad(b"", b"last")  # n = 2^64-2 is the final valid nonce
    assert sender.n == _MAX_NONCE
    raises(LocalProtocolError, "nonce_exhausted", sender.encrypt_with_ad, b"", b"more")
    receiver = noise.CipherState(key, "big")
    receiver.set_nonce(_MAX_NONCE - 1)
    assert receiver.decrypt_with_ad(b"", last) == b"last"
    raises(RemoteProtocolError, "nonce_exhausted", receiver.decrypt_with_ad, b"", last)


def test_calls_out_of_order():
    resp = _responder()
    raises(LocalProtocolError, "out_of_order", resp.write_message, b"")
    raises(LocalProtocolError, "out_of_order", resp.split)
    ini = _initiator()
    raises(LocalProtocolError, "out_of_order", ini.read_message, _ciphertext(1))
    ini, resp = _handshake()
    raises(LocalProtocolError, "out_of_order", ini.write_message, b"")
    raises(LocalProtocolError, "out_of_order", resp.read_message, _ciphertext(0))
    ini.split()
    raises(LocalProtocolError, "out_of_order", ini.symmetric.mix_hash, b"")


def test_ik_needs_rs_for_the_initiator_only():
    s = unhex(_V["init_static"])
    e = unhex(_V["init_ephemeral"])
    raises(LocalProtocolError, "bad_keys", noise.HandshakeState, True, s, e)
    raises(LocalProtocolError, "bad_keys", noise.HandshakeState, False, s, e, bytes(32))


def test_tampered_message_0_kills_the_handshake():
    bad = bytearray(_ciphertext(0))
    bad[40] ^= 0x80  # inside the encrypted static key
    resp = _responder()
    raises(CryptoError, "bad_tag", resp.read_message, bytes(bad))
    raises(LocalProtocolError, "out_of_order", resp.read_message, _ciphertext(0))
    raises(LocalProtocolError, "out_of_order", resp.write_message, b"")


def test_short_message_0():
    raises(RemoteProtocolError, "short", _responder().read_message, _ciphertext(0)[:60])
    # Long enough for e and s, but no room for the payload's tag.
    raises(CryptoError, "bad_tag", _responder().read_message, _ciphertext(0)[:85])


def test_low_order_ephemeral_is_rejected():
    # u = 0 is a low-order point: X25519 gives all zeros, which must not be keyed on.
    resp = _responder()
    raises(CryptoError, "low_order_point", resp.read_message, bytes(32) + _ciphertext(0)[32:])


def test_wrong_prologue_fails_at_the_first_tag():
    s, e = unhex(_V["resp_static"]), unhex(_V["resp_ephemeral"])
    resp = noise.HandshakeState(False, s, e, None, b"John Galt?")
    raises(CryptoError, "bad_tag", resp.read_message, _ciphertext(0))


def test_oversized_messages():
    raises(RemoteProtocolError, "too_large", _responder().read_message, bytes(65536))
    raises(LocalProtocolError, "too_large", _initiator().write_message, bytes(65535 - 96 + 1))
    assert len(_initiator().write_message(bytes(65535 - 96))) == 65535
