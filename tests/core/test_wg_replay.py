"""Replay attacks: transport counters (RFC 6479 window) and handshake initiations (timestamps)."""

from meshlet.wg.replay import WINDOW_SIZE, ReplayFilter
from meshlet_testing.pair import A_IP4, B_IP4, ipv4_packet, wg_pair


def test_window_accepts_each_counter_once():
    f = ReplayFilter()
    assert f.accept(0) and not f.accept(0)
    assert f.accept(1) and f.accept(5) and f.accept(3)  # reordering inside the window is fine
    assert not f.accept(3) and not f.accept(5)
    assert f.accept(2) and f.accept(4)


def test_window_edge_is_8128_behind_the_highest():
    f = ReplayFilter()
    assert f.accept(20_000)
    assert f.accept(20_000 - WINDOW_SIZE)  # exactly at the edge: still inside
    assert not f.accept(20_000 - WINDOW_SIZE - 1)  # one further: too old
    assert not f.accept(0)


def test_jumping_far_ahead_forgets_the_old_window():
    f = ReplayFilter()
    for n in range(100):
        assert f.accept(n)
    assert f.accept(1_000_000)
    assert not f.accept(99)  # now far too old
    assert f.accept(1_000_000 - 1) and not f.accept(1_000_000 - 1)


def test_counters_at_the_limit_are_refused():
    f = ReplayFilter()
    assert not f.accept(100, 100)
    assert f.accept(99, 100)
    assert not f.accept((1 << 64) - (1 << 13) - 1)  # REJECT_AFTER_MESSAGES itself


def test_long_in_order_run_then_reset():
    f = ReplayFilter()
    for n in range(3 * WINDOW_SIZE):
        assert f.accept(n)
    f.reset()
    assert f.accept(0)


def _session():
    p = wg_pair(seed=3)
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"first"), 0)
    p.pump()
    p.b.received_packets()
    return p


def test_replayed_transport_packet_is_dropped():
    p = _session()
    data = p.sent_by("a", 4)[-1]
    p.b.receive_datagram(data, p.a_addr, 1)
    p.b.receive_datagram(data, p.a_addr, 2)
    assert p.b.received_packets() == []
    assert p.b.stats.dropped == {"replay": 2}


def test_old_packet_delivered_late_still_counts_once():
    p = _session()
    p.lose = lambda name, data: name == "a"  # hold a's packets back
    for i in range(5):
        p.a.send_packet(ipv4_packet(A_IP4, B_IP4, bytes((i,))), 10)
    p.pump()
    held = p.sent_by("a", 4)[-5:]
    for data in reversed(held):  # delivered in reverse order: all inside the window
        p.b.receive_datagram(data, p.a_addr, 20)
    assert len(p.b.received_packets()) == 5
    for data in held:
        p.b.receive_datagram(data, p.a_addr, 30)
    assert p.b.stats.dropped == {"replay": 5}


def test_replayed_initiation_does_not_reset_the_session():
    p = _session()
    initiation = p.sent_by("a", 1)[0]
    completed = p.b.stats.handshakes_completed
    p.b.receive_datagram(initiation, p.a_addr, 60_000)
    assert p.b.stats.dropped == {"stale_timestamp": 1}
    assert p.b.transmits() == []  # no response to a replay
    assert p.b.stats.handshakes_completed == completed
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"still fine"), 60_001)
    p.pump()
    assert p.b.received_packets()[0].endswith(b"still fine")
