"""STUN codec against the fact sheet's vectors and Tailscale's own response tests."""

from meshlet import stun
from meshlet.errors import RemoteProtocolError
from meshlet.wire import parse_ip
from meshlet_testing.raises import raises
from meshlet_testing.vectors import load, unhex

_DOC = load("stun")


def test_request_is_tailscales_40_bytes():
    for v in _DOC["requests"]:
        got = stun.build_binding_request(unhex(v["txid"]))
        assert got == unhex(v["bytes"]), got.hex()
        assert len(got) == 40


def test_request_parses_back_as_tailscale():
    txid = bytes(range(1, 13))
    req = stun.parse_binding_request(stun.build_binding_request(txid))
    assert req.txid == txid
    assert req.is_tailscale()
    assert not req.classic


def test_responses_decode_to_the_expected_address():
    for v in _DOC["vectors"]:
        resp = stun.parse_binding_response(unhex(v["bytes"]))
        assert resp.txid == unhex(v["txid"]), v["name"]
        assert resp.ip == parse_ip(v["ip"]), v["name"]
        assert resp.port == v["port"], v["name"]


def test_response_is_byte_exact_where_the_sheet_says_so():
    for v in _DOC["vectors"]:
        if v["exact"]:
            req = stun.BindingRequest(unhex(v["txid"]))
            got = stun.build_binding_response(req, parse_ip(v["ip"]), v["port"])
            assert got == unhex(v["bytes"]), got.hex()


def test_ipv6_response_round_trip():
    req = stun.BindingRequest(bytes(12))
    ip = parse_ip("2001:db8::1")
    resp = stun.parse_binding_response(stun.build_binding_response(req, ip, 3478))
    assert (resp.ip, resp.port) == (ip, 3478)


def test_classic_rfc3489_request_gets_mapped_address():
    # RFC 3489 has no magic cookie: bytes 4..20 are all transaction ID.
    txid = bytes(range(100, 116))
    classic = b"\x00\x01\x00\x00" + txid
    req = stun.parse_binding_request(classic)
    assert req.classic and req.txid == txid and not req.is_tailscale()
    out = stun.build_binding_response(req, parse_ip("198.51.100.7"), 40000)
    assert out[4:20] == txid
    assert out[20:24] == b"\x00\x01\x00\x08"  # MAPPED-ADDRESS, 8 bytes
    assert out[24:32] == b"\x00\x01\x9c\x40" + parse_ip("198.51.100.7")


def test_trailing_bytes_beyond_the_header_length_are_ignored():
    v = _DOC["vectors"][1]
    resp = stun.parse_binding_response(unhex(v["bytes"]) + b"junk")
    assert resp.port == v["port"]


def test_bad_fingerprint_is_rejected():
    good = bytearray(stun.build_binding_request(bytes(12)))
    good[-1] ^= 1
    raises(RemoteProtocolError, "bad_fingerprint", stun.parse_binding_request, bytes(good))


def test_truncated_and_lying_lengths_are_rejected():
    good = stun.build_binding_request(bytes(12))
    raises(RemoteProtocolError, "short", stun.parse_binding_request, good[:19])
    raises(RemoteProtocolError, "bad_attribute", stun.parse_binding_request, good[:39])
    lying = bytearray(good)
    lying[23] = 0x40  # SOFTWARE claims 64 bytes
    raises(RemoteProtocolError, "bad_attribute", stun.parse_binding_request, bytes(lying))


def test_request_is_not_a_response():
    raises(RemoteProtocolError, "bad_type", stun.parse_binding_response, stun.build_binding_request(bytes(12)))
    resp = unhex(_DOC["vectors"][0]["bytes"])
    raises(RemoteProtocolError, "bad_type", stun.parse_binding_request, resp)


def test_response_without_an_address_is_rejected():
    bare = b"\x01\x01\x00\x00" + stun.MAGIC_COOKIE + bytes(12)
    raises(RemoteProtocolError, "no_address", stun.parse_binding_response, bare)


def test_is_stun_matches_tailscales_test():
    assert stun.is_stun(stun.build_binding_request(bytes(12)))
    assert not stun.is_stun(b"\x01\x00\x00\x00" + bytes(28))  # a WireGuard initiation's start
    assert not stun.is_stun(b"TS\xf0\x9f\x92\xac" + bytes(56))  # disco magic


def test_change_request_is_reported_so_a_one_socket_server_can_refuse_it():
    # RFC 3489 classic request with CHANGE-REQUEST "change IP" (flag 0x04).
    txid = bytes(range(16))
    asks_change = b"\x00\x01\x00\x08" + txid + b"\x00\x03\x00\x04\x00\x00\x00\x04"
    assert stun.parse_binding_request(asks_change).change_request
    no_change = b"\x00\x01\x00\x08" + txid + b"\x00\x03\x00\x04\x00\x00\x00\x00"
    assert not stun.parse_binding_request(no_change).change_request
    assert not stun.parse_binding_request(stun.build_binding_request(bytes(12))).change_request
