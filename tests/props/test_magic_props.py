"""Properties of the per-peer path state (meshlet.magic.endpoint) and betterAddr.

Whatever the network does (pongs with any txid, CallMeMaybe lists of any
addresses, pings from any source, in any order and at any time), the state
machine never raises and keeps its promises: the best path is a candidate,
a trusted path is the only one a packet goes on, DERP carries it otherwise,
and the state stays bounded.
"""

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet.magic.betteraddr import better_addr
from meshlet.magic.endpoint import (
    ACTION_PING,
    MAX_PING_LEARNED,
    PING_TIMEOUT_MS,
    Endpoint,
)
from meshlet_testing.rand import FakeRandom

ips = st.one_of(
    st.binary(min_size=4, max_size=4),
    st.binary(min_size=16, max_size=16),
    st.sampled_from([bytes([10, 0, 0, 2]), bytes([127, 0, 0, 1]), bytes([203, 0, 113, 7])]),
)
addrs = st.tuples(ips, st.integers(min_value=1, max_value=0xFFFF))
latencies = st.integers(min_value=0, max_value=10_000)

events = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 10_000)),
    st.tuples(st.just("tick"), st.integers(0, 10_000)),
    st.tuples(st.just("pong_known"), st.integers(0, 10_000), st.integers(0, 20)),
    st.tuples(st.just("pong_any"), st.integers(0, 10_000), st.binary(max_size=16)),
    st.tuples(st.just("cmm"), st.integers(0, 10_000), st.lists(addrs, max_size=5)),
    st.tuples(st.just("ping_from"), st.integers(0, 10_000), addrs, st.binary(min_size=12, max_size=12)),
    st.tuples(st.just("netmap"), st.integers(0, 10_000), st.lists(addrs, max_size=4)),
    st.tuples(st.just("send_error"), st.integers(0, 10_000), addrs),
    st.tuples(st.just("reset"), st.integers(0, 10_000)),
    st.tuples(st.just("net_changed"), st.integers(0, 10_000)),
    st.tuples(st.just("cli_ping"), st.integers(0, 10_000)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=60), st.lists(addrs, max_size=4))
def test_any_event_sequence_keeps_the_promises(seq: "list[tuple[Any, ...]]", netmap: "list[tuple[bytes, int]]") -> None:
    ep = Endpoint(FakeRandom(7))
    ep.set_netmap_endpoints(netmap)
    now = 0
    sent_txids: "list[bytes]" = []
    for ev in seq:
        now += ev[1]
        kind = ev[0]
        actions = []
        if kind == "send":
            plan = ep.send(now)
            actions = plan.actions
            trusted = ep.best is not None and now <= ep.trust_until_ms
            assert plan.derp != trusted
            assert plan.udp == ep.best
            assert ep.next_deadline_ms() is not None
        elif kind == "tick":
            actions = ep.tick(now)
        elif kind == "pong_known" and sent_txids:
            ep.pong(sent_txids[ev[2] % len(sent_txids)], now)
        elif kind == "pong_any":
            assert ep.pong(ev[2], now) is None or len(ev[2]) == 12
        elif kind == "cmm":
            actions = ep.call_me_maybe(ev[2], now)
        elif kind == "ping_from":
            if ep.ping_received(ev[2], ev[3], now):
                actions = ep.ping_back(ev[2], now)
        elif kind == "netmap":
            ep.set_netmap_endpoints(ev[2])
        elif kind == "send_error":
            ep.send_error(ev[2])
        elif kind == "reset":
            ep.reset()
        elif kind == "net_changed":
            ep.network_changed()
        elif kind == "cli_ping":
            actions = ep.cli_ping(now)
        for a in actions:
            if a.kind == ACTION_PING:
                assert a.addr == ep.best or a.addr in ep.candidates
                sent_txids.append(a.txid)
        # The promises.
        assert ep.best is None or ep.best in ep.candidates
        if ep.best is None:
            assert ep.cur_addr(now) is None
        if kind == "tick":
            assert all(now - sent <= PING_TIMEOUT_MS for _, sent in ep.pings.values())
        learned = [c for c in ep.candidates.values() if c.sources == 4]
        assert len(learned) <= MAX_PING_LEARNED
        for c in ep.candidates.values():
            assert len(c.latencies_ms) <= 8


@given(addrs, latencies, addrs, latencies)
def test_better_addr_never_prefers_both_ways(a: "tuple[bytes, int]", la: int, b: "tuple[bytes, int]", lb: int) -> None:
    assert not (better_addr(a, la, b, lb) and better_addr(b, lb, a, la))
    assert not better_addr(a, la, a, lb)
    assert better_addr(a, la, None, 0)
