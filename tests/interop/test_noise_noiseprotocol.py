"""meshlet's Noise IK against an independent implementation: the PyPI package noiseprotocol 0.3.1.

Both roles, TS2021's prologue, then transport both ways. noiseprotocol uses the
spec's little-endian nonces, so transport is compared with meshlet's
CipherState in little-endian mode; TS2021's big-endian records agree with it
on the first record of each direction (n = 0) and differ from the second on,
as shared/protocol/control.md §5.4 and §13 predict.
"""

import warnings

import pytest
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseInvalidMessage

from meshlet import crypto, noise
from meshlet.control import base
from meshlet.errors import CryptoError
from meshlet.key import MachinePrivate
from meshlet_testing.rand import FakeRandom
from meshlet_testing.vectors import cases, unhex

pytestmark = pytest.mark.interop

NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"Tailscale Control Protocol v130"
_random = FakeRandom(2021)  # reproducible keys; noiseprotocol makes its own ephemerals
MESSAGES = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"", b"x" * 1000, bytes(range(256))]


def _their_side(initiator: bool, s: bytes, rs: "bytes | None", e: "bytes | None" = None) -> NoiseConnection:
    conn = NoiseConnection.from_name(NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, s)
    if rs is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, rs)
    if e is None:
        conn.start_handshake()
    else:
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, e)
        with warnings.catch_warnings():  # "OK for testing, but should NEVER happen in production"
            warnings.simplefilter("ignore")
            conn.start_handshake()
    return conn


def _exchange(
    ours_send: noise.CipherState, ours_recv: noise.CipherState, theirs: NoiseConnection
) -> None:
    for msg in MESSAGES:
        assert theirs.decrypt(ours_send.encrypt_with_ad(b"", msg)) == msg
        assert ours_recv.decrypt_with_ad(b"", theirs.encrypt(msg)) == msg


def test_meshlet_initiator_noiseprotocol_responder() -> None:
    s_i, e_i, s_r = _random(32), _random(32), _random(32)
    ours = noise.HandshakeState(True, s_i, e_i, crypto.x25519_base(s_r), PROLOGUE)
    theirs = _their_side(False, s_r, None)
    assert theirs.read_message(ours.write_message(b"hello")) == b"hello"
    assert ours.read_message(bytes(theirs.write_message(b"world"))) == b"world"
    assert theirs.handshake_finished
    assert ours.get_handshake_hash() == theirs.get_handshake_hash()
    c1, c2 = ours.split()
    _exchange(c1, c2, theirs)


def test_noiseprotocol_initiator_meshlet_responder() -> None:
    s_i, s_r, e_r = _random(32), _random(32), _random(32)
    theirs = _their_side(True, s_i, crypto.x25519_base(s_r))
    ours = noise.HandshakeState(False, s_r, e_r, None, PROLOGUE)
    assert ours.read_message(bytes(theirs.write_message(b""))) == b""
    assert ours.rs == crypto.x25519_base(s_i)
    assert theirs.read_message(ours.write_message(b"")) == b""
    assert ours.get_handshake_hash() == theirs.get_handshake_hash()
    c1, c2 = ours.split()
    _exchange(c2, c1, theirs)


def test_ts2021_client_against_noiseprotocol_server() -> None:
    """TS2021's own client handshake with noiseprotocol as the control server.

    Record #0 of each direction crosses over; record #1 does not, because
    TS2021's nonce counter is big-endian and noiseprotocol's little-endian.
    """
    machine, machine_eph, control = (MachinePrivate(_random(32)) for _ in range(3))
    hs = base.ClientHandshake(machine, control.public(), machine_eph, 130)
    init = hs.initiation()
    assert init[:5] == b"\x00\x82\x01\x00\x60"
    theirs = _their_side(False, control.raw_private(), None)
    assert theirs.read_message(init[5:]) == b""
    response = bytes(theirs.write_message(b""))
    conn = hs.receive_response(b"\x02\x00\x30" + response)
    assert conn is not None
    assert conn.handshake_hash == theirs.get_handshake_hash()

    preface = MESSAGES[0]
    rec0 = conn.send(preface)
    assert rec0[:3] == b"\x04\x00\x28"
    assert theirs.decrypt(rec0[3:]) == preface  # n = 0: the byte orders agree
    rec1 = conn.send(preface)
    with pytest.raises(NoiseInvalidMessage):  # n = 1: 00..01 versus 01..00
        theirs.decrypt(rec1[3:])

    down0 = theirs.encrypt(b"settings")
    conn.receive_data(b"\x04\x00" + bytes((len(down0),)) + down0)
    assert conn.read() == b"settings"
    down1 = theirs.encrypt(b"settings")
    with pytest.raises(CryptoError):
        conn.receive_data(b"\x04\x00" + bytes((len(down1),)) + down1)
    assert conn.is_dead()


def test_little_endian_mode_matches_noiseprotocol_throughout() -> None:
    """The same handshake with meshlet's CipherStates in spec (little-endian) mode agrees past n = 0."""
    machine, machine_eph, control = (_random(32) for _ in range(3))
    ours = noise.HandshakeState(True, machine, machine_eph, crypto.x25519_base(control), PROLOGUE, "little")
    theirs = _their_side(False, control, None)
    theirs.read_message(ours.write_message(b""))
    ours.read_message(bytes(theirs.write_message(b"")))
    c1, c2 = ours.split()
    for i in range(3):
        assert theirs.decrypt(c1.encrypt_with_ad(b"", b"up %d" % i)) == b"up %d" % i
        # noiseprotocol's responder sends under k2, so its bytes must equal ours exactly.
        assert theirs.encrypt(b"down") == c2.encrypt_with_ad(b"", b"down")


def test_fixed_ephemerals_reproduce_the_ts2021_vector() -> None:
    """noiseprotocol, given the sheet's keys, writes the same initiation and response bytes."""
    v = cases("ts2021")[0]
    ini = _their_side(
        True,
        unhex(v["machine_static_priv"]),
        unhex(v["control_static_pub"]),
        unhex(v["machine_ephemeral_priv"]),
    )
    resp = _their_side(False, unhex(v["control_static_priv"]), None, unhex(v["control_ephemeral_priv"]))
    m0 = bytes(ini.write_message(b""))
    assert m0 == unhex(v["initiation"])[5:]
    resp.read_message(m0)
    m1 = bytes(resp.write_message(b""))
    assert m1 == unhex(v["response"])[3:]
    ini.read_message(m1)
    assert ini.get_handshake_hash() == unhex(v["handshake_hash"])
    # Record #0 is byte for byte TS2021's; record #1 is not (little- versus big-endian n = 1).
    records = v["client_records"]
    assert ini.encrypt(records[0]["plaintext"].encode()) == unhex(records[0]["bytes"])[3:]
    assert ini.encrypt(records[1]["plaintext"].encode()) != unhex(records[1]["bytes"])[3:]
