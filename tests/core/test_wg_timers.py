"""The whitepaper's timers (§6), stepped by hand: rekey, reject, retransmit, keepalives, zeroing.

Each test starts a session at t = 0 (a initiates, b responds) unless it says
otherwise, then moves the clock with `p.advance` / `p.run_until`, which fire
every deadline on the way, and checks when things were sent.
"""

from meshlet.wg.constants import REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES
from meshlet.wg.events import HandshakeCompleted, HandshakeFailed, KeysZeroed
from meshlet_testing.pair import A_IP4, B_IP4, ipv4_packet, node_key, wg_pair

_INIT = 1
_DATA = 4


def _session(**kw):
    p = wg_pair(**kw)
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"start"), 0)
    p.pump()
    p.b.received_packets()
    _drain(p.a)
    _drain(p.b)
    return p


def _drain(dev):
    out = []
    while True:
        e = dev.next_event()
        if e is None:
            return out
        out.append(e)


def _keypairs(dev, seed):
    return dev._peers[node_key(seed).public()].keypairs


def _a_to_b(p, t, payload=b"data"):
    p.clock.now_ms = t
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, payload), t)
    p.pump()


def _b_to_a(p, t, payload=b"data"):
    p.clock.now_ms = t
    p.b.send_packet(ipv4_packet(B_IP4, A_IP4, payload), t)
    p.pump()


def test_deadlines_right_after_the_handshake():
    p = _session()
    # b received data: it owes a keepalive in 10 s. a sent data: it expects to hear back
    # within 15 s + jitter. Both erase keys 540 s after the session was derived.
    assert p.b.next_deadline() == 10_000
    assert 15_000 <= p.a.next_deadline() < 15_334


def test_passive_keepalive_after_10_s_of_silence():
    p = _session()
    p.advance(10_000)
    assert p.times_of("b", _DATA, 32) == [10_000]
    # The keepalive told a that b is alive: only the zeroing deadline is left.
    assert p.a.next_deadline() == 540_000
    p.advance(60_000)
    assert p.times_of("b", _DATA, 32) == [10_000]  # nothing more without new data


def test_no_keepalive_when_data_went_back():
    p = _session()
    _b_to_a(p, 3_000, b"reply")
    p.advance(20_000)
    assert p.times_of("b", _DATA, 32) == []
    assert p.times_of("a", _DATA, 32) == [13_000]  # now a owes one for b's reply


def test_dead_peer_starts_a_new_handshake_after_15_s():
    p = _session()
    p.lose = lambda name, data: name == "b"  # b goes silent, its keepalive at 10 s is lost
    _a_to_b(p, 1_000)  # the timer armed by the data at t = 0 is already running: not re-armed
    p.advance(19_000)
    t = p.times_of("a", _INIT)
    assert len(t) == 2 and 15_000 <= t[1] < 15_334, t


def test_retransmit_every_5_s_with_jitter_then_give_up():
    p = wg_pair()
    p.lose = lambda name, data: True
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"never"), 0)
    p.run_until(200_000)
    t = p.times_of("a", _INIT)
    # The first and 19 retries (wireguard-go gives up once attempts exceed 18).
    assert len(t) == 20, t
    gaps = [t[i + 1] - t[i] for i in range(len(t) - 1)]
    assert all(5_000 <= g < 5_334 for g in gaps), gaps
    assert len(set(gaps)) > 5  # jittered, not a fixed period
    ev = _drain(p.a)
    assert [type(e) for e in ev] == [HandshakeFailed]
    assert p.a.stats.dropped == {"handshake_failed": 1}  # the staged packet
    assert p.a.stats.handshakes_initiated == 20
    # It gave up one retransmit period after the last initiation, and scheduled key
    # zeroing 540 s after that; nothing else is pending.
    gave_up = p.a.next_deadline() - 540_000
    assert t[-1] + 5_000 <= gave_up < t[-1] + 5_334


def test_new_packet_after_giving_up_starts_afresh():
    p = wg_pair()
    p.lose = lambda name, data: True
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"never"), 0)
    p.run_until(120_000)
    p.lose = None
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"again"), 120_000)
    p.pump()
    assert p.b.received_packets() == [ipv4_packet(A_IP4, B_IP4, b"again")]


def test_at_most_one_initiation_per_rekey_timeout():
    p = wg_pair()
    p.lose = lambda name, data: True
    for t in range(0, 5_000, 100):
        p.clock.now_ms = t
        p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"burst"), t)
        p.pump()
    assert p.times_of("a", _INIT) == [0]


def test_rekey_after_time_rotates_previous_current_next():
    p = _session()
    a_old = _keypairs(p.a, 2).current
    b_old = _keypairs(p.b, 1).current
    assert a_old.is_initiator and not b_old.is_initiator
    _a_to_b(p, 120_000)  # not yet: "older than" Rekey-After-Time
    assert p.a.stats.handshakes_initiated == 1
    # One packet under the old key is held back to arrive after the rotation.
    p.lose = lambda name, data: name == "a" and data[0] == _DATA and len(p.sent_by("a", _INIT)) == 1
    p.clock.now_ms = 120_001
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"late"), 120_001)
    late = p.a.transmits()
    assert [d[2][0] for d in late] == [_DATA, _INIT]  # the data goes out under the old key first
    p.lose = None
    p.b.receive_datagram(late[1][2], p.a_addr, 120_001)  # the initiation only
    kb = _keypairs(p.b, 1)
    assert kb.current is b_old and kb.next is not None and kb.previous is None
    p.pump()  # response, then a's keepalive under the new key confirms it at b
    ka = _keypairs(p.a, 2)
    assert ka.previous is a_old and ka.current is not a_old and ka.next is None
    assert kb.previous is b_old and kb.current.local_index == ka.current.remote_index and kb.next is None
    p.b.receive_datagram(late[0][2], p.a_addr, 120_002)  # the old key is still accepted
    assert p.b.received_packets()[-1] == ipv4_packet(A_IP4, B_IP4, b"late")
    assert [type(e) for e in _drain(p.a)] == [HandshakeCompleted]


def test_responder_never_rekeys_on_time_but_rejects_after_180_s():
    p = _session()
    _b_to_a(p, 150_000)  # past Rekey-After-Time, but b did not initiate this session
    assert p.b.stats.handshakes_initiated == 0
    _b_to_a(p, 180_000, b"too old")  # Reject-After-Time: staged, and a handshake starts
    assert p.b.stats.handshakes_initiated == 1
    assert p.a.received_packets()[-1] == ipv4_packet(B_IP4, A_IP4, b"too old")
    assert p.a.stats.handshakes_completed == 2


def test_initiator_renews_on_receive_at_165_s():
    p = _session()
    _b_to_a(p, 165_000)
    assert p.a.stats.handshakes_initiated == 1  # "older than" 165 s, not yet
    _b_to_a(p, 165_001)
    assert p.a.stats.handshakes_initiated == 2
    _b_to_a(p, 165_002)
    assert p.a.stats.handshakes_initiated == 2


def test_rekey_after_messages_and_reject_after_messages():
    p = _session()
    _keypairs(p.a, 2).current.send_counter = REKEY_AFTER_MESSAGES + 1
    _a_to_b(p, 6_000, b"rekey")  # sent under the old key, then a new handshake
    assert p.a.stats.handshakes_initiated == 2
    assert p.b.received_packets() == [ipv4_packet(A_IP4, B_IP4, b"rekey")]
    _keypairs(p.a, 2).current.send_counter = REJECT_AFTER_MESSAGES
    _a_to_b(p, 12_000, b"reject")  # this key may not send at all: staged, new handshake
    assert p.a.stats.handshakes_initiated == 3
    assert p.b.received_packets() == [ipv4_packet(A_IP4, B_IP4, b"reject")]
    assert p.b.stats.dropped == {}


def test_packets_under_an_expired_keypair_are_dropped():
    p = _session()
    p.lose = lambda name, data: name == "a"
    _a_to_b(p, 1_000, b"delayed")
    held = p.sent_by("a", _DATA)[-1]
    p.lose = None
    p.b.receive_datagram(held, p.a_addr, 180_001)
    assert p.b.stats.dropped == {"expired": 1}


def test_persistent_keepalive_starts_the_handshake_and_repeats():
    p = wg_pair(keepalive_s=25)
    assert p.a.next_deadline() == 0  # due at once, as wg(8) sends one when it is configured
    p.run_until(60_000)
    assert p.times_of("a", _INIT) == [0]
    assert p.times_of("a", _DATA, 32) == [0, 25_000, 50_000]


def test_keys_are_zeroed_after_540_s_without_a_new_session():
    p = _session()
    p.run_until(539_999)
    assert _keypairs(p.a, 2).current is not None
    p.run_until(540_000)
    assert _keypairs(p.a, 2).all() == [] and _keypairs(p.b, 1).all() == []
    assert [type(e) for e in _drain(p.a)] == [KeysZeroed]
    assert p.a.next_deadline() is None
    _a_to_b(p, 600_000, b"new session")
    assert p.b.received_packets()[-1] == ipv4_packet(A_IP4, B_IP4, b"new session")
    assert p.a.stats.handshakes_completed == 2


def test_simultaneous_initiations_converge():
    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"from a"), 0)
    p.b.send_packet(ipv4_packet(B_IP4, A_IP4, b"from b"), 0)
    p.pump()
    # Each side answered the other and abandoned its own initiation, so both
    # responses found no handshake in flight.
    assert p.a.stats.dropped == {"unknown_receiver": 1} and p.b.stats.dropped == {"unknown_receiver": 1}
    p.advance(6_000)  # the earlier retransmit wins
    assert p.b.received_packets() == [ipv4_packet(A_IP4, B_IP4, b"from a")]
    assert p.a.received_packets() == [ipv4_packet(B_IP4, A_IP4, b"from b")]
