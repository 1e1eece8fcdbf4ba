"""Noise_IKpsk2 as WireGuard does it: constants, KDF vectors, and a transcript from independent code.

tests/vectors/wg_handshake.json was computed with noiseprotocol, hashlib and
`cryptography` only (tests/props/test_wg_props.py rebuilds it), so matching
it byte for byte checks the construction, identifier mixing, psk placement,
nonces and mac1 against an implementation that is not ours.
"""

from meshlet import crypto
from meshlet.errors import CryptoError, LocalProtocolError, RemoteProtocolError
from meshlet.key import NodePrivate, clamp
from meshlet.wg import handshake as H
from meshlet.wg.cookie import CookieGenerator
from meshlet.wg.messages import INITIATION_MAC1_OFFSET, RESPONSE_MAC1_OFFSET, MessageInitiation
from meshlet.wg.session import Keypair
from meshlet_testing.raises import raises
from meshlet_testing.vectors import cases, unhex

_V = cases("wg_handshake")[0]
_KI = NodePrivate(unhex(_V["initiator_static_private"]))
_KR = NodePrivate(unhex(_V["responder_static_private"]))
_PSK = unhex(_V["preshared_key"])
_TS = unhex(_V["timestamp"])


class _Peer:
    def __init__(self, hs):
        self.handshake = hs


def _finder(peer, key):
    return lambda k: peer if k == key else None


def test_initial_chain_key_and_hash():
    # wireguard.md §1: Ci = HASH(CONSTRUCTION), Hi = HASH(Ci || IDENTIFIER).
    assert len(H.CONSTRUCTION) == 37 and len(H.IDENTIFIER) == 34
    assert crypto.blake2s(H.CONSTRUCTION) == H.INITIAL_CHAIN_KEY
    assert crypto.blake2s(H.INITIAL_CHAIN_KEY + H.IDENTIFIER) == H.INITIAL_HASH


def test_kdf_vectors():
    for v in cases("wireguard_kdf"):
        key, data = unhex(v["key"]), unhex(v["input"])
        t1, t2, t3 = crypto.hkdf_blake2s(key, data, 3)
        assert (t1, t2, t3) == (unhex(v["t1"]), unhex(v["t2"]), unhex(v["t3"])), v["comment"]
        assert H.mix_key(key, data) == t1


def _initiate():
    hs = H.Handshake(_KI, _KR.public(), _PSK)
    msg = H.create_initiation(_KI, hs, _V["initiator_index"], _TS, unhex(_V["initiator_ephemeral_private"]))
    wire = CookieGenerator(_KR.public()).add_macs(msg.to_bytes(), INITIATION_MAC1_OFFSET, 0)
    return hs, wire


def test_transcript_matches_the_independent_computation():
    hs_i, initiation = _initiate()
    assert initiation == unhex(_V["initiation"])
    peer = _Peer(H.Handshake(_KR, _KI.public(), _PSK))
    got = H.consume_initiation(_KR, MessageInitiation.parse(initiation), _finder(peer, _KI.public()), 0)
    assert got is peer and peer.handshake.last_timestamp == _TS
    resp = H.create_response(peer.handshake, _V["responder_index"], unhex(_V["responder_ephemeral_private"]))
    response = CookieGenerator(_KI.public()).add_macs(resp.to_bytes(), RESPONSE_MAC1_OFFSET, 0)
    assert response == unhex(_V["response"])
    H.consume_response(_KI, hs_i, resp)
    i_send, i_recv, i_init = H.derive_keys(hs_i)
    r_send, r_recv, r_init = H.derive_keys(peer.handshake)
    assert (i_send, i_recv, i_init, r_init) == (r_recv, r_send, True, False)
    # Transport both ways, byte for byte.
    kp_i = Keypair(i_send, i_recv, True, _V["initiator_index"], _V["responder_index"], 0, None)
    kp_r = Keypair(r_send, r_recv, False, _V["responder_index"], _V["initiator_index"], 0, None)
    assert kp_i.encrypt(unhex(_V["packet"]), 1420) == unhex(_V["transport_to_responder"])
    assert kp_r.encrypt(b"", 1420) == unhex(_V["keepalive_to_initiator"])
    assert kp_r.decrypt(unhex(_V["transport_to_responder"]), 0)[:36] == unhex(_V["packet"])


def test_derive_keys_zeroes_the_handshake():
    hs, _ = _initiate()
    assert hs.state == H.STATE_INITIATION_CREATED
    raises(LocalProtocolError, "bad_state", H.derive_keys, hs)
    raises(LocalProtocolError, "bad_state", H.create_response, hs, 1, bytes(32))
    hs.clear()
    assert hs.state == H.STATE_ZEROED and hs.chain_key == b"" and hs.local_ephemeral == b""


def test_unknown_initiator_is_rejected():
    _, initiation = _initiate()
    msg = MessageInitiation.parse(initiation)
    raises(RemoteProtocolError, "unknown_peer", H.consume_initiation, _KR, msg, lambda k: None, 0)


def test_initiation_for_someone_else_fails_authentication():
    _, initiation = _initiate()
    msg = MessageInitiation.parse(initiation)
    peer = _Peer(H.Handshake(_KI, _KI.public()))  # the initiator itself is not the responder
    raises(CryptoError, "bad_tag", H.consume_initiation, _KI, msg, _finder(peer, _KI.public()), 0)


def test_replayed_initiation_is_stale_and_changes_nothing():
    _, initiation = _initiate()
    msg = MessageInitiation.parse(initiation)
    peer = _Peer(H.Handshake(_KR, _KI.public(), _PSK))
    H.consume_initiation(_KR, msg, _finder(peer, _KI.public()), 0)
    H.create_response(peer.handshake, 9, clamp(bytes(range(32))))
    state = (peer.handshake.state, peer.handshake.chain_key, peer.handshake.hash)
    find = _finder(peer, _KI.public())
    raises(RemoteProtocolError, "stale_timestamp", H.consume_initiation, _KR, msg, find, 10_000)
    assert (peer.handshake.state, peer.handshake.chain_key, peer.handshake.hash) == state


def test_preshared_key_mismatch_fails_on_the_response():
    hs_i = H.Handshake(_KI, _KR.public(), _PSK)
    msg = H.create_initiation(_KI, hs_i, 1, _TS, clamp(bytes(32)))
    peer = _Peer(H.Handshake(_KR, _KI.public(), bytes(32)))  # no psk on this side
    H.consume_initiation(_KR, msg, _finder(peer, _KI.public()), 0)  # the psk enters only in the response
    resp = H.create_response(peer.handshake, 2, clamp(bytes(range(32))))
    before = (hs_i.state, hs_i.chain_key)
    raises(CryptoError, "bad_tag", H.consume_response, _KI, hs_i, resp)
    assert (hs_i.state, hs_i.chain_key) == before  # a bad response does not spoil the handshake


def test_response_without_initiation_is_unexpected():
    hs_i, _ = _initiate()
    hs_i.clear()
    from meshlet.wg.messages import MessageResponse

    resp = MessageResponse(1, 2, bytes(32), bytes(16))
    raises(RemoteProtocolError, "unexpected_response", H.consume_response, _KI, hs_i, resp)


def test_low_order_ephemeral_is_refused():
    _, initiation = _initiate()
    msg = MessageInitiation.parse(initiation)
    msg.ephemeral = bytes(32)  # the all-zero point: DH yields zero
    peer = _Peer(H.Handshake(_KR, _KI.public(), _PSK))
    raises(CryptoError, "low_order_point", H.consume_initiation, _KR, msg, _finder(peer, _KI.public()), 0)


def test_preshared_key_must_be_32_bytes():
    raises(LocalProtocolError, "bad_length", H.Handshake, _KI, _KR.public(), b"short")
