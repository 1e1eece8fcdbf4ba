"""Properties of the STUN codec: round trips, and garbage never escapes as anything but ProtocolError."""

from hypothesis import given
from hypothesis import strategies as st

from meshlet import stun
from meshlet_testing.garbage import mutations, parses_or_rejects

txids = st.binary(min_size=12, max_size=12)
ips = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
ports = st.integers(min_value=0, max_value=0xFFFF)


@given(txids)
def test_request_round_trip(txid: bytes) -> None:
    req = stun.parse_binding_request(stun.build_binding_request(txid))
    assert req.txid == txid and req.is_tailscale()


@given(txids, ips, ports)
def test_response_round_trip(txid: bytes, ip: bytes, port: int) -> None:
    out = stun.build_binding_response(stun.BindingRequest(txid), ip, port)
    resp = stun.parse_binding_response(out)
    want_ip = ip[12:] if ip[:12] == b"\x00" * 10 + b"\xff\xff" else ip
    assert (resp.txid, resp.ip, resp.port) == (txid, want_ip, port)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_reject(data: bytes) -> None:
    parses_or_rejects(stun.parse_binding_request, data)
    parses_or_rejects(stun.parse_binding_response, data)


@given(txids, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_requests_parse_or_reject(txid: bytes, pos: int, value: int) -> None:
    data = mutations(stun.build_binding_request(txid), pos, value)
    parses_or_rejects(stun.parse_binding_request, data)
    parses_or_rejects(stun.parse_binding_response, data)


@given(txids, ips, ports, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_responses_parse_or_reject(txid: bytes, ip: bytes, port: int, pos: int, value: int) -> None:
    data = mutations(stun.build_binding_response(stun.BindingRequest(txid), ip, port), pos, value)
    parses_or_rejects(stun.parse_binding_response, data)
