"""Two Devices in memory: handshakes both ways, data both ways, routing, roaming, configuration."""

from meshlet.errors import LocalProtocolError
from meshlet.wg.device import PeerConfig
from meshlet.wg.events import HandshakeCompleted, PeerEndpointChanged
from meshlet_testing.pair import (
    A_ADDR,
    A_IP4,
    A_IP6,
    B_IP4,
    B_IP6,
    UNIX_MS,
    ipv4_packet,
    ipv6_packet,
    node_key,
    wg_pair,
)


def _events(dev):
    out = []
    while True:
        e = dev.next_event()
        if e is None:
            return out
        out.append(e)


def test_a_initiates_and_data_flows_both_ways():
    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"ping"), 0)
    assert p.a.stats.handshakes_initiated == 1
    p.pump()
    assert [len(d) for _, _, d, _ in p.sent] == [148, 92, 64]  # initiation, response, the staged packet
    assert p.b.received_packets() == [ipv4_packet(A_IP4, B_IP4, b"ping")]
    p.b.send_packet(ipv6_packet(B_IP6, A_IP6, b"pong"), 1)
    p.pump()
    assert p.a.received_packets() == [ipv6_packet(B_IP6, A_IP6, b"pong")]
    assert p.a.stats.dropped == {} and p.b.stats.dropped == {}
    assert (p.a.stats.handshakes_completed, p.b.stats.handshakes_completed) == (1, 1)
    sa, sb = p.a.stats, p.b.stats
    assert (sa.tx_packets, sa.rx_packets, sb.tx_packets, sb.rx_packets) == (1, 1, 1, 1)
    ea, eb = _events(p.a), _events(p.b)
    assert [type(e) for e in ea] == [HandshakeCompleted]
    assert [type(e) for e in eb] == [HandshakeCompleted]
    assert ea[0].peer == node_key(2).public() and eb[0].peer == node_key(1).public()


def test_b_initiates():
    p = wg_pair()
    p.b.send_packet(ipv4_packet(B_IP4, A_IP4, b"from b"), 0)
    p.pump()
    assert p.a.received_packets() == [ipv4_packet(B_IP4, A_IP4, b"from b")]
    assert p.a.peers()[0].last_handshake_unix_ms == UNIX_MS
    assert p.sent_by("b", 1) and not p.sent_by("a", 1)


def test_responder_without_a_keypair_stages_until_confirmed():
    p = wg_pair()
    p.lose = lambda name, data: name == "a" and data[0] == 4  # a's first transport packet is lost
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"lost"), 0)
    p.pump()
    p.lose = None
    # b has only a "next" keypair: it may not send yet (whitepaper §5.4.6), so it stages
    # and, having just sent a response, does not start a handshake of its own.
    p.b.send_packet(ipv4_packet(B_IP4, A_IP4, b"waiting"), 5)
    assert p.b.transmits() == []
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"confirm"), 6)
    p.pump()
    assert p.a.received_packets() == [ipv4_packet(B_IP4, A_IP4, b"waiting")]
    assert p.b.received_packets() == [ipv4_packet(A_IP4, B_IP4, b"confirm")]


def test_responder_learns_the_endpoint_from_the_initiation():
    p = wg_pair(endpoints=False)
    assert p.b.peers()[0].endpoint is None
    p.b.send_packet(ipv4_packet(B_IP4, A_IP4, b"nowhere"), 0)  # b cannot start: no endpoint
    assert p.b.stats.dropped == {"no_endpoint": 1} and p.b.transmits() == []
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"hello"), 1)
    p.pump()
    assert p.b.peers()[0].endpoint == A_ADDR
    assert [type(e) for e in _events(p.b)] == [PeerEndpointChanged, HandshakeCompleted]
    # b's staged packet went out once the session was confirmed.
    assert p.a.received_packets() == [ipv4_packet(B_IP4, A_IP4, b"nowhere")]


def test_roaming_follows_authenticated_packets_only():
    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"1"), 0)
    p.pump()
    _events(p.b)
    new_addr = (b"\xc6\x33\x64\x07", 40000)  # 198.51.100.7: a moved behind a NAT
    p.a_addr = new_addr
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"2"), 10)
    p.pump()
    ev = _events(p.b)
    assert len(ev) == 1 and isinstance(ev[0], PeerEndpointChanged) and ev[0].addr == new_addr
    p.b.send_packet(ipv4_packet(B_IP4, A_IP4, b"reply"), 20)
    assert p.b.transmits()[0][1] == new_addr
    # Garbage from yet another address moves nothing.
    p.b.receive_datagram(p.sent_by("a", 4)[-1][:40] + bytes(8), (b"\x01\x01\x01\x01", 1), 30)
    assert p.b.peers()[0].endpoint == new_addr


def test_source_outside_allowed_ips_is_dropped():
    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"ok"), 0)
    p.pump()
    p.b.received_packets()
    # a tunnels a packet claiming another source; a routes by destination only.
    p.a.send_packet(ipv4_packet(b"\x0a\x00\x00\x63", B_IP4, b"spoofed"), 1)
    p.a.send_packet(ipv6_packet(b"\xfd" + bytes(15), B_IP6, b"spoofed6"), 2)
    p.pump()
    assert p.b.received_packets() == []
    assert p.b.stats.dropped == {"not_allowed": 2}


def test_destination_without_a_peer_is_no_route():
    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, b"\x08\x08\x08\x08"), 0)
    p.a.send_packet(ipv6_packet(A_IP6, b"\x20\x01" + bytes(14)), 0)
    p.a.send_packet(b"", 0)
    p.a.send_packet(b"\x45" + bytes(10), 0)
    p.a.send_packet(b"\x70" + bytes(40), 0)
    assert p.a.stats.dropped == {"no_route": 2, "bad_ip_version": 2, "short": 1}
    assert p.a.transmits() == [] and p.a.stats.handshakes_initiated == 0


def test_staged_queue_is_bounded_oldest_dropped():
    p = wg_pair(max_staged_packets=3)
    p.lose = lambda name, data: True
    for i in range(5):
        p.a.send_packet(ipv4_packet(A_IP4, B_IP4, bytes((i,))), i)
    p.pump()
    assert p.a.stats.dropped == {"staged_overflow": 2}
    p.lose = None
    p.advance(6_000)  # the retransmitted initiation gets through
    assert [pkt[-1] for pkt in p.b.received_packets()] == [2, 3, 4]


def test_bad_datagrams_are_counted_not_raised():
    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    init, resp, data = p.sent_by("a", 1)[0], p.sent_by("b", 2)[0], p.sent_by("a", 4)[0]
    b = p.b
    b.received_packets()
    b.receive_datagram(b"", A_ADDR, 1)
    b.receive_datagram(b"\x09\x00\x00\x00" + bytes(40), A_ADDR, 1)
    b.receive_datagram(init[:100], A_ADDR, 1)
    b.receive_datagram(init[:-1] + b"\xff", A_ADDR, 1)  # mac2 changed: not checked when not under load
    b.receive_datagram(init[:20] + b"\xff" + init[21:], A_ADDR, 1)  # mac1 now wrong
    b.receive_datagram(resp, A_ADDR, 1)  # b's own response reflected: mac1 is for a's key
    b.receive_datagram(data[:4] + b"\xde\xad\xbe\xef" + data[8:], A_ADDR, 1)
    b.receive_datagram(data[:-1] + bytes((data[-1] ^ 1,)), A_ADDR, 1)
    b.receive_datagram(data[:31], A_ADDR, 1)
    assert b.stats.dropped == {
        "short": 3,
        "bad_type": 1,
        "stale_timestamp": 1,
        "bad_mac1": 2,
        "unknown_receiver": 1,
        "bad_tag": 1,
    }, b.stats.dropped
    assert b.transmits() == [] and b.received_packets() == []


def test_set_peer_updates_in_place_and_keeps_the_session():
    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    kb = node_key(2).public()
    new_route = (b"\xc0\xa8\x01\x00", 24)
    p.a.set_peer(PeerConfig(kb, [(B_IP4, 32), new_route], None, None, 0))
    status = p.a.peers()[0]
    assert status.allowed_ips == [(B_IP4, 32), new_route]
    assert status.endpoint == p.b_addr  # no endpoint given: the known one stays
    p.a.send_packet(ipv4_packet(A_IP4, b"\xc0\xa8\x01\x05", b"routed"), 1)
    p.pump()
    assert p.a.stats.handshakes_initiated == 1  # same session
    assert p.b.received_packets()[-1] == ipv4_packet(A_IP4, b"\xc0\xa8\x01\x05", b"routed")
    assert p.b.stats.dropped == {}


def test_remove_peer_forgets_everything():
    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    p.b.remove_peer(node_key(1).public())
    assert p.b.peers() == [] and p.b.next_deadline() is None
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"y"), 1)
    p.pump()
    assert p.b.stats.dropped == {"unknown_receiver": 1}
    p.b.remove_peer(node_key(1).public())  # twice is fine


def test_configuration_mistakes_raise():
    p = wg_pair()
    for cfg in (
        lambda: PeerConfig(node_key(1).public(), [(A_IP4, 32)]),  # the interface's own key
        lambda: PeerConfig(node_key(3).public(), [(A_IP4, 33)]),
        lambda: PeerConfig(node_key(3).public(), [], None, b"short"),
    ):
        try:
            p.a.set_peer(cfg())
        except LocalProtocolError:
            pass
        else:
            raise AssertionError("accepted a bad configuration")
    assert len(p.a.peers()) == 1


def test_status_counts_bytes_and_shows_configuration():
    p = wg_pair(psk_a=bytes(32), psk_b=bytes(32), keepalive_s=25)
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    a = p.a.peers()[0]
    assert a.public_key == node_key(2).public() and a.preshared_key_set and a.persistent_keepalive_s == 25
    assert a.allowed_ips == [(B_IP4, 32), (B_IP6, 128)]
    assert a.tx_bytes == p.a.stats.tx_bytes == sum(len(d) for d in p.sent_by("a"))
    assert a.rx_bytes == p.a.stats.rx_bytes == sum(len(d) for d in p.sent_by("b"))
    assert a.last_handshake_unix_ms == UNIX_MS


def test_wall_clock_set_back_still_gives_newer_timestamps():
    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    p.a.set_wall_clock(UNIX_MS - 3_600_000, 10_000)  # NTP stepped the clock back an hour
    p.clock.now_ms = 130_000
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"rekeyed"), 130_000)  # Rekey-After-Time
    p.pump()
    assert p.b.stats.dropped == {} and p.b.stats.handshakes_completed == 2


def test_a_restarted_node_is_accepted_by_wall_clock():
    from meshlet.wg.device import Device
    from meshlet_testing.rand import FakeRandom

    p = wg_pair()
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"before"), 0)
    p.pump()
    # a restarts 30 s later: new monotonic clock at 0, a new index space, no memory of its last stamp.
    a2 = Device(node_key(1), FakeRandom(77), UNIX_MS + 30_000, 0)
    a2.set_peer(PeerConfig(node_key(2).public(), [(B_IP4, 32)], p.b_addr))
    p.a = a2
    p.clock.now_ms = 30_000
    a2.send_packet(ipv4_packet(A_IP4, B_IP4, b"after"), 0)
    p.pump()
    assert p.b.received_packets()[-1] == ipv4_packet(A_IP4, B_IP4, b"after")
    assert p.b.stats.dropped == {}
