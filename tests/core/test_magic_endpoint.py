"""One peer's path state (meshlet.magic.endpoint), told like disco.md §6 tells it, on a fake clock.

The peer "pi-kitchen" is in the netmap with endpoints 10.0.0.2:41641 (its LAN
address) and 203.0.113.7:41641 (its NAT's public mapping).
"""

from meshlet.magic.betteraddr import better_addr, is_link_local_v6, is_loopback, is_private
from meshlet.magic.endpoint import (
    ACTION_CALL_ME_MAYBE,
    ACTION_PING,
    DISCO_PING_INTERVAL_MS,
    FROM_CALL_ME_MAYBE,
    FROM_NETMAP,
    FROM_PING,
    HEARTBEAT_INTERVAL_MS,
    MAX_PING_LEARNED,
    PING_BACK_INTERVAL_MS,
    PING_TIMEOUT_MS,
    SESSION_ACTIVE_TIMEOUT_MS,
    TRUST_UDP_ADDR_MS,
    UPGRADE_INTERVAL_MS,
    Endpoint,
)
from meshlet.wire import parse_addr
from meshlet_testing.clock import FakeClock
from meshlet_testing.rand import FakeRandom

LAN = parse_addr("10.0.0.2:41641")
PUBLIC = parse_addr("203.0.113.7:41641")
V6 = parse_addr("[2001:db8::7]:41641")


def kitchen(clock=None):
    ep = Endpoint(FakeRandom(1))
    ep.set_netmap_endpoints([LAN, PUBLIC])
    return ep


def pings(actions):
    return [a for a in actions if a.kind == ACTION_PING]


def cmm(actions):
    return [a for a in actions if a.kind == ACTION_CALL_ME_MAYBE]


def answer(ep, actions, addr, now_ms):
    """The peer answers our ping to `addr`."""
    for a in pings(actions):
        if a.addr == addr:
            return ep.pong(a.txid, now_ms)
    raise AssertionError("no ping to %r in %r" % (addr, actions))


def test_first_packet_goes_via_derp_and_starts_discovery_with_call_me_maybe():
    clock = FakeClock(1000)
    ep = kitchen()
    plan = ep.send(clock.now_ms)
    assert plan.derp and plan.udp is None
    assert sorted(a.addr for a in pings(plan.actions)) == sorted([LAN, PUBLIC])
    assert len(cmm(plan.actions)) == 1
    # Each ping has its own txid.
    assert len(set(a.txid for a in pings(plan.actions))) == 2


def test_a_pong_from_10_0_0_2_makes_it_the_best_path_and_6_5_s_without_a_pong_sends_via_derp_again():
    clock = FakeClock(1000)
    ep = kitchen()
    first = ep.send(clock.now_ms)
    res = answer(ep, first.actions, LAN, clock.advance(1))
    assert res.addr == LAN and res.is_best and res.latency_ms == 1
    plan = ep.send(clock.now_ms)
    assert plan.udp == LAN and not plan.derp and plan.actions == []
    assert ep.cur_addr(clock.now_ms) == LAN

    clock.advance(TRUST_UDP_ADDR_MS)  # exactly at the end of the window: still trusted
    assert not ep.send(clock.now_ms).derp
    clock.advance(1)
    plan = ep.send(clock.now_ms)
    assert plan.derp and plan.udp == LAN  # DERP, and the stale best too (it may still work)
    assert ep.cur_addr(clock.now_ms) is None
    assert sorted(a.addr for a in pings(plan.actions)) == sorted([LAN, PUBLIC])
    assert cmm(plan.actions)


def test_discovery_pings_each_candidate_at_most_every_5_s():
    clock = FakeClock(1000)
    ep = kitchen()
    assert len(pings(ep.send(clock.now_ms).actions)) == 2
    clock.advance(DISCO_PING_INTERVAL_MS - 1)
    plan = ep.send(clock.now_ms)
    assert plan.derp and plan.actions == []  # no pings, so no CallMeMaybe either
    clock.advance(1)
    assert len(pings(ep.send(clock.now_ms).actions)) == 2


def test_a_peer_without_candidates_gets_no_pings_and_no_call_me_maybe():
    ep = Endpoint(FakeRandom(2))
    plan = ep.send(0)
    assert plan.derp and plan.udp is None and plan.actions == []


def test_the_lan_path_beats_the_public_one_at_the_same_latency():
    clock = FakeClock(0)
    ep = kitchen()
    first = ep.send(clock.now_ms)
    clock.advance(3)
    assert answer(ep, first.actions, PUBLIC, clock.now_ms).is_best
    res = answer(ep, first.actions, LAN, clock.now_ms)
    assert res.is_best and ep.best == LAN  # +20 for the private address


def test_a_much_faster_public_path_beats_a_slow_lan_path():
    clock = FakeClock(0)
    ep = kitchen()
    first = ep.send(clock.now_ms)
    clock.advance(10)
    answer(ep, first.actions, PUBLIC, clock.now_ms)
    clock.advance(90)
    res = answer(ep, first.actions, LAN, clock.now_ms)  # 100 ms vs 10 ms: 90 points against 20
    assert not res.is_best and ep.best == PUBLIC


def test_pongs_after_the_ping_timeout_or_with_unknown_txids_are_ignored():
    clock = FakeClock(0)
    ep = kitchen()
    first = ep.send(clock.now_ms)
    assert ep.pong(b"\x00" * 12, clock.now_ms) is None
    clock.advance(PING_TIMEOUT_MS + 1)
    ep.tick(clock.now_ms)  # forgets the old pings
    assert answer_or_none(ep, first.actions, LAN, clock.now_ms) is None
    assert ep.best is None


def answer_or_none(ep, actions, addr, now_ms):
    for a in pings(actions):
        if a.addr == addr:
            return ep.pong(a.txid, now_ms)
    return None


def test_a_pong_answers_its_ping_only_once():
    ep = kitchen()
    first = ep.send(0)
    assert answer(ep, first.actions, LAN, 1) is not None
    assert answer(ep, first.actions, LAN, 2) is None


def test_heartbeats_every_3_s_keep_the_path_trusted_while_traffic_flows():
    clock = FakeClock(0)
    ep = kitchen()
    first = ep.send(clock.now_ms)
    answer(ep, first.actions, LAN, clock.advance(1))
    assert ep.next_deadline_ms() == HEARTBEAT_INTERVAL_MS
    for _ in range(5):
        clock.now_ms = ep.next_deadline_ms()
        ep.send(clock.now_ms)  # traffic keeps flowing
        actions = ep.tick(clock.now_ms)
        assert [a.addr for a in pings(actions)] == [LAN]  # good enough (1 ms): no full round
        answer(ep, actions, LAN, clock.advance(1))
        assert not ep.send(clock.now_ms).derp


def test_heartbeats_stop_after_45_s_without_traffic():
    clock = FakeClock(0)
    ep = kitchen()
    answer(ep, ep.send(0).actions, LAN, clock.advance(1))
    while ep.next_deadline_ms() is not None:
        clock.now_ms = ep.next_deadline_ms()
        for a in pings(ep.tick(clock.now_ms)):
            ep.pong(a.txid, clock.now_ms + 1)
        assert clock.now_ms <= SESSION_ACTIVE_TIMEOUT_MS + HEARTBEAT_INTERVAL_MS
    assert ep.tick(clock.advance(60_000)) == []  # idle: no wake-ups, nothing to do
    # The next packet starts them again.
    ep.send(clock.now_ms)
    assert ep.next_deadline_ms() == clock.now_ms + HEARTBEAT_INTERVAL_MS


def test_a_heartbeat_without_a_trusted_path_runs_a_full_discovery_round():
    clock = FakeClock(0)
    ep = kitchen()
    ep.send(0)
    clock.now_ms = ep.next_deadline_ms()
    actions = ep.tick(clock.now_ms)  # 3 s: the candidates were pinged 3 s ago, not yet again
    assert actions == []
    clock.now_ms = ep.next_deadline_ms()
    actions = ep.tick(clock.now_ms)  # 6 s: no send since 0 s, but that is still an active session
    assert sorted(a.addr for a in pings(actions)) == sorted([LAN, PUBLIC]) and cmm(actions)


def test_a_slow_best_path_is_re_probed_every_minute_a_fast_one_is_not():
    for latency, want_round in ((20, True), (5, False)):
        clock = FakeClock(0)
        ep = kitchen()
        answer(ep, ep.send(0).actions, PUBLIC, clock.advance(latency))
        rounds = 0
        while clock.now_ms < UPGRADE_INTERVAL_MS + 2 * HEARTBEAT_INTERVAL_MS:
            clock.now_ms = ep.next_deadline_ms()
            ep.send(clock.now_ms)
            actions = ep.tick(clock.now_ms)
            if len(pings(actions)) > 1:
                rounds += 1
            answer(ep, actions, PUBLIC, clock.now_ms + latency)
        assert rounds == (1 if want_round else 0), (latency, rounds)


def test_call_me_maybe_pings_everything_now_and_replaces_earlier_call_me_maybe_candidates():
    clock = FakeClock(0)
    ep = kitchen()
    ep.send(0)  # everything pinged just now
    a1, a2, a3 = parse_addr("198.51.100.1:1000"), parse_addr("198.51.100.2:2000"), parse_addr("198.51.100.3:3000")
    actions = ep.call_me_maybe([a1, a2], clock.advance(100))
    assert sorted(a.addr for a in pings(actions)) == sorted([LAN, PUBLIC, a1, a2])
    assert cmm(actions) == []  # no CallMeMaybe back
    actions = ep.call_me_maybe([a2, a3, LAN], clock.advance(100))
    assert set(ep.candidates) == {LAN, PUBLIC, a2, a3}  # a1 is gone, the netmap's stay
    assert ep.candidates[LAN].sources == FROM_NETMAP | FROM_CALL_ME_MAYBE
    assert len(pings(actions)) == 4
    ep.call_me_maybe([], clock.advance(100))
    assert set(ep.candidates) == {LAN, PUBLIC} and ep.candidates[LAN].sources == FROM_NETMAP


def test_call_me_maybe_ignores_ipv6_link_local_endpoints():
    ep = kitchen()
    ll = parse_addr("[fe80::1]:41641")
    ep.call_me_maybe([ll], 0)
    assert ll not in ep.candidates


def test_losing_the_best_path_from_a_new_netmap_or_call_me_maybe_clears_it():
    clock = FakeClock(0)
    ep = kitchen()
    answer(ep, ep.send(0).actions, LAN, clock.advance(1))
    ep.set_netmap_endpoints([PUBLIC])
    assert ep.best is None and LAN not in ep.candidates
    assert ep.send(clock.now_ms).derp


def test_a_pong_from_an_address_the_netmap_dropped_meanwhile_makes_no_path():
    ep = kitchen()
    actions = ep.send(0)
    ep.set_netmap_endpoints([PUBLIC])
    res = answer(ep, actions.actions, LAN, 1)
    assert res is not None and not res.is_best and ep.best is None


def test_a_udp_ping_from_an_unknown_address_adds_a_candidate_for_45_s():
    ep = kitchen()
    src = parse_addr("192.0.2.50:5555")
    assert ep.ping_received(src, b"t" * 12, 0)
    assert ep.candidates[src].sources == FROM_PING
    assert not ep.ping_received(src, b"t" * 12, 10)  # the same txid again: no second pong
    assert ep.ping_received(src, b"u" * 12, 20)
    assert src in [a.addr for a in pings(ep.send(30).actions)]
    ep.send(20 + SESSION_ACTIVE_TIMEOUT_MS + DISCO_PING_INTERVAL_MS)
    assert src not in ep.candidates


def test_a_ping_from_the_peers_public_address_is_pinged_back_until_a_path_is_trusted():
    # Our first ping to 203.0.113.7:41641 went out with the CallMeMaybe and the peer's NAT dropped
    # it (no mapping towards us yet). The peer answers the CallMeMaybe with a ping from that
    # address: its NAT is open to us now, so a ping back gets through at once, not 5 s later.
    clock = FakeClock(1000)
    ep = kitchen()
    ep.send(clock.now_ms)
    clock.advance(20)
    assert ep.ping_received(PUBLIC, b"T" * 12, clock.now_ms)
    back = ep.ping_back(PUBLIC, clock.now_ms)
    assert [a.addr for a in back] == [PUBLIC] and not cmm(back)
    clock.advance(PING_BACK_INTERVAL_MS - 1)
    assert ep.ping_received(PUBLIC, b"U" * 12, clock.now_ms)
    assert ep.ping_back(PUBLIC, clock.now_ms) == []  # at most once a second per address
    result = ep.pong(back[0].txid, clock.now_ms)
    assert result.addr == PUBLIC and result.is_best
    clock.advance(1)
    assert ep.ping_received(PUBLIC, b"V" * 12, clock.now_ms)
    assert ep.ping_back(PUBLIC, clock.now_ms) == []  # a trusted path needs no ping back


def test_ping_learned_candidates_are_capped():
    ep = Endpoint(FakeRandom(3))
    for i in range(3 * MAX_PING_LEARNED):
        ep.ping_received((bytes([192, 0, 2, i]), 1000 + i), bytes([i]) * 12, i)
    assert len(ep.candidates) <= MAX_PING_LEARNED


def test_a_send_error_to_the_best_path_falls_back_to_derp():
    clock = FakeClock(0)
    ep = kitchen()
    answer(ep, ep.send(0).actions, LAN, clock.advance(1))
    ep.send_error(PUBLIC)
    assert ep.best == LAN
    ep.send_error(LAN)
    assert ep.best is None and ep.send(clock.now_ms).derp


def test_a_new_disco_key_resets_everything_but_the_netmap_endpoints():
    clock = FakeClock(0)
    ep = kitchen()
    cm = parse_addr("198.51.100.9:9")
    answer(ep, ep.call_me_maybe([cm], 0), LAN, clock.advance(1))
    ep.send(clock.now_ms)
    ep.reset()
    assert ep.best is None and ep.pings == {} and set(ep.candidates) == {LAN, PUBLIC}
    assert ep.next_deadline_ms() is None
    plan = ep.send(clock.now_ms)
    assert plan.derp and len(pings(plan.actions)) == 2  # pinged again at once


def test_our_network_changed_so_every_path_is_in_doubt():
    clock = FakeClock(0)
    ep = kitchen()
    answer(ep, ep.send(0).actions, LAN, clock.advance(1))
    ep.network_changed()
    plan = ep.send(clock.advance(1))
    assert plan.derp and len(pings(plan.actions)) == 2


def test_cli_ping_pings_the_best_path_and_discovers_while_it_is_not_trusted():
    clock = FakeClock(0)
    ep = kitchen()
    actions = ep.cli_ping(0)
    assert sorted(a.addr for a in pings(actions)) == sorted([LAN, PUBLIC])
    answer(ep, actions, LAN, clock.advance(1))
    actions = ep.cli_ping(clock.advance(1))
    assert [a.addr for a in actions] == [LAN]


def test_path_does_not_count_as_traffic():
    ep = kitchen()
    plan = ep.path(0)
    assert plan.derp and plan.udp is None and plan.actions == []
    assert ep.next_deadline_ms() is None


# --- betterAddr (disco.md §6.4) ---------------------------------------------------------


def test_better_addr_against_no_path_and_the_same_path():
    assert better_addr(PUBLIC, 50, None, 0)
    assert not better_addr(None, 0, PUBLIC, 50)
    assert not better_addr(LAN, 1, LAN, 100)  # the same address: only a bigger MTU would do


def test_better_addr_by_latency_points():
    a, b = parse_addr("198.51.100.1:1"), parse_addr("198.51.100.2:1")
    assert better_addr(a, 190, b, 200)  # 5 points against 0
    assert not better_addr(a, 200, b, 190)
    assert not better_addr(a, 199, b, 200)  # 1 point against 0: hysteresis keeps b
    assert better_addr(a, 197, b, 200)  # 2 points


def test_better_addr_prefers_loopback_then_link_local_then_private_then_ipv6():
    lo = parse_addr("127.0.0.1:1")
    ll = parse_addr("[fe80::1]:1")
    ula = parse_addr("[fd00::1]:1")
    assert better_addr(lo, 10, LAN, 10)
    assert better_addr(ll, 10, LAN, 10)  # 30 + 10 against 20
    assert better_addr(ula, 10, LAN, 10)  # 20 + 10 against 20
    assert better_addr(V6, 10, PUBLIC, 10)  # 10 against 0
    assert better_addr(LAN, 10, V6, 10)
    assert not better_addr(PUBLIC, 8, LAN, 10)  # 20 points for speed against 20 for private: not strictly more
    assert better_addr(PUBLIC, 7, LAN, 10)  # 30 against 20


def test_address_kinds():
    assert is_loopback(bytes([127, 1, 2, 3])) and is_loopback(bytes(15) + b"\x01")
    assert is_link_local_v6(parse_addr("[fe80::1]:1")[0]) and not is_link_local_v6(LAN[0])
    for text in ("10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1"):
        assert is_private(parse_addr(text + ":1")[0]), text
    for text in ("172.32.0.1", "192.169.0.1", "8.8.8.8", "100.64.0.1"):
        assert not is_private(parse_addr(text + ":1")[0]), text
    assert is_private(parse_addr("[fc00::1]:1")[0]) and not is_private(V6[0])


def test_sources_constants_are_distinct_bits():
    assert FROM_NETMAP & FROM_CALL_ME_MAYBE == 0 and FROM_PING & (FROM_NETMAP | FROM_CALL_ME_MAYBE) == 0
