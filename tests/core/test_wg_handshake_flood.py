"""Handshake floods: the 20 ms rule, and no Diffie-Hellman for unproven sources under load."""

from meshlet import crypto
from meshlet.wg import handshake as H
from meshlet.wg.cookie import CookieGenerator
from meshlet.wg.messages import INITIATION_MAC1_OFFSET
from meshlet.wg.tai64n import tai64n
from meshlet_testing.pair import A_ADDR, UNIX_MS, node_key, wg_pair
from meshlet_testing.rand import FakeRandom


def _initiation(stamp_ms, seed):
    ka, kb = node_key(1), node_key(2)
    hs = H.Handshake(ka, kb.public())
    msg = H.create_initiation(ka, hs, seed, tai64n(stamp_ms), H.new_ephemeral(FakeRandom(seed)))
    return CookieGenerator(kb.public()).add_macs(msg.to_bytes(), INITIATION_MAC1_OFFSET, 0)


def test_initiations_closer_than_20_ms_are_a_flood():
    p = wg_pair()
    b = p.b
    b.receive_datagram(_initiation(UNIX_MS + 1_000, 1), A_ADDR, 100)
    b.receive_datagram(_initiation(UNIX_MS + 2_000, 2), A_ADDR, 120)  # newer stamp, 20 ms later
    assert b.stats.dropped == {"flood": 1}
    b.receive_datagram(_initiation(UNIX_MS + 3_000, 3), A_ADDR, 121)
    assert b.stats.dropped == {"flood": 1}
    assert len(b.transmits()) == 2  # two responses, none for the flood


def test_under_load_unproven_initiations_cost_no_diffie_hellman():
    p = wg_pair(b_kwargs={"under_load_handshakes_per_s": 0})
    msgs = [_initiation(UNIX_MS + i * 100, 10 + i) for i in range(20)]
    calls = [0]
    real = crypto.x25519

    def counting(*args):
        calls[0] += 1
        return real(*args)

    crypto.x25519 = counting
    try:
        for i, m in enumerate(msgs):
            p.b.receive_datagram(m, (b"\xcb\x00\x71" + bytes((i,)), 1000 + i), i)  # spoofed sources
    finally:
        crypto.x25519 = real
    assert calls[0] == 0
    assert p.b.stats.dropped == {"under_load": 20} and p.b.stats.cookie_replies_sent == 20
    sent = p.b.transmits()
    assert all(peer is None and len(d) == 64 for peer, _, d in sent)  # cookie replies only
    assert p.b.stats.handshakes_completed == 0


def test_garbage_with_a_bad_mac1_gets_nothing_even_under_load():
    p = wg_pair(b_kwargs={"under_load_handshakes_per_s": 0})
    junk = bytearray(_initiation(UNIX_MS, 1))
    junk[120] ^= 0xFF
    for i in range(10):
        p.b.receive_datagram(bytes(junk), A_ADDR, i)
    assert p.b.stats.dropped == {"bad_mac1": 10} and p.b.transmits() == []
