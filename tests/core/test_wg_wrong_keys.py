"""Misconfigured peers fail cleanly: a wrong preshared key or a wrong peer key is counted, never raised."""

from meshlet_testing.pair import A_IP4, B_IP4, ipv4_packet, wg_pair


def _types(dev):
    out = []
    while True:
        e = dev.next_event()
        if e is None:
            return out
        out.append(type(e))


def test_preshared_key_mismatch_fails_on_the_initiator():
    p = wg_pair(psk_a=b"\x01" * 32, psk_b=b"\x02" * 32)
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    # b cannot tell (the psk enters only in its response); a finds the response's tag bad.
    assert p.a.stats.dropped == {"bad_tag": 1}
    assert p.b.stats.dropped == {}
    assert p.a.stats.handshakes_completed == 0 and p.b.stats.handshakes_completed == 0
    p.run_until(12_000)  # every retry fails the same way (giving up: test_wg_timers.py)
    assert p.a.stats.dropped == {"bad_tag": 3}
    assert p.b.stats.dropped == {} and p.b.received_packets() == []
    assert _types(p.a) == [] and _types(p.b) == []


def test_psk_on_one_side_only_also_fails():
    p = wg_pair(psk_a=b"\x01" * 32)
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    assert p.a.stats.dropped == {"bad_tag": 1}


def test_wrong_peer_key_is_dropped_by_mac1():
    p = wg_pair(b_key=3)  # a thinks b's key is node key 3
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    assert p.b.stats.dropped == {"bad_mac1": 1}
    assert p.b.transmits() == [] and p.a.stats.dropped == {}


def test_unknown_initiator_is_dropped_silently():
    p = wg_pair()
    p.b.remove_peer(p.a.public_key)
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    assert p.b.stats.dropped == {"unknown_peer": 1}
    assert len(p.sent) == 1  # the initiation, and no answer
