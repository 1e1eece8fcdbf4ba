"""Properties of Noise IK: random keys always agree, garbage only ever raises ProtocolError."""

from typing import Literal

from hypothesis import given
from hypothesis import strategies as st

from meshlet import crypto, noise
from meshlet_testing.garbage import mutations, parses_or_rejects

keys = st.binary(min_size=32, max_size=32)
payloads = st.binary(max_size=300)
ByteOrder = Literal["little", "big"]
orders: "st.SearchStrategy[ByteOrder]" = st.sampled_from(["little", "big"])


def _pair(
    s_i: bytes, e_i: bytes, s_r: bytes, e_r: bytes, prologue: bytes, order: ByteOrder = "little"
) -> "tuple[noise.HandshakeState, noise.HandshakeState]":
    ini = noise.HandshakeState(True, s_i, e_i, crypto.x25519_base(s_r), prologue, order)
    resp = noise.HandshakeState(False, s_r, e_r, None, prologue, order)
    return ini, resp


@given(
    keys,
    keys,
    keys,
    keys,
    st.binary(max_size=64),
    payloads,
    payloads,
    orders,
    st.lists(st.tuples(st.booleans(), payloads), max_size=8),
)
def test_handshake_and_transport_round_trip(
    s_i: bytes,
    e_i: bytes,
    s_r: bytes,
    e_r: bytes,
    prologue: bytes,
    p0: bytes,
    p1: bytes,
    order: ByteOrder,
    traffic: "list[tuple[bool, bytes]]",
) -> None:
    ini, resp = _pair(s_i, e_i, s_r, e_r, prologue, order)
    m0 = ini.write_message(p0)
    assert len(m0) == 32 + 48 + len(p0) + 16
    assert resp.read_message(m0) == p0
    assert resp.rs == crypto.x25519_base(s_i)
    m1 = resp.write_message(p1)
    assert len(m1) == 32 + len(p1) + 16
    assert ini.read_message(m1) == p1
    assert ini.get_handshake_hash() == resp.get_handshake_hash()
    i1, i2 = ini.split()
    r1, r2 = resp.split()
    assert (i1.k, i2.k) == (r1.k, r2.k) and i1.k != i2.k
    for from_initiator, data in traffic:
        send, recv = (i1, r1) if from_initiator else (r2, i2)
        ad = bytes((len(data) & 0xFF,))
        assert recv.decrypt_with_ad(ad, send.encrypt_with_ad(ad, data)) == data


@given(keys, keys, keys, keys, payloads, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_message_0_parses_or_rejects(
    s_i: bytes, e_i: bytes, s_r: bytes, e_r: bytes, p0: bytes, pos: int, value: int
) -> None:
    ini, resp = _pair(s_i, e_i, s_r, e_r, b"")
    m0 = ini.write_message(p0)
    data = mutations(m0, pos, value)
    got = parses_or_rejects(resp.read_message, data)
    if data != m0:
        assert got is None  # any change to an IK message breaks a tag or a DH


@given(keys, keys, keys, keys, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_message_1_parses_or_rejects(
    s_i: bytes, e_i: bytes, s_r: bytes, e_r: bytes, pos: int, value: int
) -> None:
    ini, resp = _pair(s_i, e_i, s_r, e_r, b"")
    resp.read_message(ini.write_message(b""))
    m1 = resp.write_message(b"")
    data = mutations(m1, pos, value)
    got = parses_or_rejects(ini.read_message, data)
    assert (got is None) == (data != m1)


@given(keys, keys, st.binary(max_size=200))
def test_arbitrary_bytes_into_either_role(s_r: bytes, e_r: bytes, data: bytes) -> None:
    resp = noise.HandshakeState(False, s_r, e_r)
    assert parses_or_rejects(resp.read_message, data) is None
    ini = noise.HandshakeState(True, s_r, e_r, crypto.x25519_base(e_r))
    ini.write_message(b"")
    assert parses_or_rejects(ini.read_message, data) is None
