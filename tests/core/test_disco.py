"""Disco codec against the fact sheet's golden payloads, its sealed packet, and Tailscale's lax parsing."""

from meshlet import disco
from meshlet.errors import CryptoError, LocalProtocolError, RemoteProtocolError
from meshlet.key import DiscoPrivate, DiscoPublic, NodePublic
from meshlet.wire import parse_ip
from meshlet_testing.raises import raises
from meshlet_testing.vectors import load, unhex

_DOC = load("disco")
_SEALED = _DOC["sealed"]
_TXID = bytes(range(1, 13))


def _endpoints(v):
    return [(parse_ip(ip), port) for ip, port in v]


def _relay_endpoint(v):
    clients = (DiscoPublic(unhex(v["client_disco"][0])), DiscoPublic(unhex(v["client_disco"][1])))
    return disco.UDPRelayEndpoint(
        DiscoPublic(unhex(v["server_disco"])),
        clients,
        v["lamport_id"],
        v["vni"],
        v["bind_lifetime_ns"],
        v["steady_state_lifetime_ns"],
        _endpoints(v["endpoints"]),
    )


def _message(v):
    """The message object a vector describes."""
    kind = v["message"]
    if kind == "Ping":
        key = NodePublic(unhex(v["node_key"])) if v["node_key"] else None
        return disco.Ping(unhex(v["txid"]), key, v["padding"])
    if kind == "Pong":
        return disco.Pong(unhex(v["txid"]), parse_ip(v["ip"]), v["port"])
    if kind == "CallMeMaybe":
        return disco.CallMeMaybe(_endpoints(v["endpoints"]))
    if kind.startswith("BindUDPRelayEndpoint"):
        cls = getattr(disco, kind)
        return cls(v["vni"], v["generation"], DiscoPublic(unhex(v["remote_key"])), unhex(v["challenge"]))
    if kind == "CallMeMaybeVia":
        return disco.CallMeMaybeVia(_relay_endpoint(v))
    if kind == "AllocateUDPRelayEndpointRequest":
        clients = (DiscoPublic(unhex(v["client_disco"][0])), DiscoPublic(unhex(v["client_disco"][1])))
        return disco.AllocateUDPRelayEndpointRequest(clients, v["generation"])
    assert kind == "AllocateUDPRelayEndpointResponse", kind
    return disco.AllocateUDPRelayEndpointResponse(v["generation"], _relay_endpoint(v))


def _check_relay_endpoint(ep, v):
    assert ep.server_disco.raw == unhex(v["server_disco"])
    assert [k.raw for k in ep.client_disco] == [unhex(h) for h in v["client_disco"]]
    assert (ep.lamport_id, ep.vni) == (v["lamport_id"], v["vni"])
    assert (ep.bind_lifetime_ns, ep.steady_state_lifetime_ns) == (
        v["bind_lifetime_ns"],
        v["steady_state_lifetime_ns"],
    )
    assert ep.endpoints == _endpoints(v["endpoints"])


def _check(msg, v):
    """Asserts that a parsed message carries the vector's fields."""
    kind = v["message"]
    assert type(msg).__name__ == kind, (type(msg).__name__, kind)
    if kind == "Ping":
        assert msg.txid == unhex(v["txid"])
        want = unhex(v["node_key"]) if v["node_key"] else None
        assert (msg.node_key.raw if msg.node_key else None) == want
        assert msg.padding == v["padding"]
    elif kind == "Pong":
        assert (msg.txid, msg.ip, msg.port) == (unhex(v["txid"]), parse_ip(v["ip"]), v["port"])
    elif kind == "CallMeMaybe":
        assert msg.endpoints == _endpoints(v["endpoints"])
    elif kind.startswith("BindUDPRelayEndpoint"):
        assert (msg.vni, msg.generation) == (v["vni"], v["generation"])
        assert msg.remote_key.raw == unhex(v["remote_key"])
        assert msg.challenge == unhex(v["challenge"])
    elif kind == "CallMeMaybeVia":
        _check_relay_endpoint(msg.endpoint, v)
    elif kind == "AllocateUDPRelayEndpointRequest":
        assert [k.raw for k in msg.client_disco] == [unhex(h) for h in v["client_disco"]]
        assert msg.generation == v["generation"]
    else:
        assert msg.generation == v["generation"]
        _check_relay_endpoint(msg.endpoint, v)


def test_golden_payloads_build_byte_exact():
    for v in _DOC["messages"]:
        got = _message(v).to_bytes()
        assert got == unhex(v["bytes"]), (v["name"], got.hex())


def test_golden_payloads_parse_back():
    for v in _DOC["messages"]:
        _check(disco.parse(unhex(v["bytes"])), v)


def test_type_constants_match_the_classes():
    for v in _DOC["messages"]:
        msg = _message(v)
        assert msg.TYPE == unhex(v["bytes"])[0], v["name"]


def _keys():
    a = DiscoPrivate(unhex(_SEALED["a_private"]))
    b = DiscoPrivate(unhex(_SEALED["b_private"]))
    return a, b


def test_sealed_packet_keys_and_beforenm_match_the_sheet():
    a, b = _keys()
    assert a.public().raw == unhex(_SEALED["a_public"])
    assert b.public().raw == unhex(_SEALED["b_public"])
    shared = unhex(_SEALED["shared_key"])
    assert disco.beforenm(a, b.public()) == shared
    assert disco.beforenm(b, a.public()) == shared


def test_seal_is_byte_exact():
    a, _ = _keys()
    shared = unhex(_SEALED["shared_key"])
    nonce = unhex(_SEALED["nonce"])
    packet = unhex(_SEALED["packet"])
    assert len(packet) == 124  # a plain 1.90 ping on the wire (disco.md §3.1)
    assert disco.seal(shared, a.public(), nonce, unhex(_SEALED["inner"])) == packet
    ping = disco.Ping(_TXID, NodePublic(b"\x11" * 32))
    assert disco.seal(shared, a.public(), nonce, ping) == packet


def test_open_and_parse_header():
    packet = unhex(_SEALED["packet"])
    sender, sealed = disco.parse_header(packet)
    assert sender == DiscoPublic(unhex(_SEALED["a_public"]))
    assert sealed == packet[38:]
    shared = unhex(_SEALED["shared_key"])
    assert disco.open_payload(shared, packet) == unhex(_SEALED["inner"])
    msg = disco.open_message(shared, packet)
    assert isinstance(msg, disco.Ping)
    assert msg.txid == _TXID and msg.node_key == NodePublic(b"\x11" * 32) and msg.padding == 0


def test_open_rejects_tampering_and_wrong_keys():
    packet = unhex(_SEALED["packet"])
    shared = unhex(_SEALED["shared_key"])
    for at in (40, 62, 70, len(packet) - 1):  # nonce, tag, ciphertext
        bad = bytearray(packet)
        bad[at] ^= 0x01
        e = raises(RemoteProtocolError, "bad_tag", disco.open_message, shared, bytes(bad))
        assert isinstance(e, CryptoError)
    raises(RemoteProtocolError, "bad_tag", disco.open_message, bytes(32), packet)


def test_parse_header_rejects_short_and_foreign_packets():
    packet = unhex(_SEALED["packet"])
    raises(RemoteProtocolError, "short", disco.parse_header, packet[:77])
    raises(RemoteProtocolError, "bad_magic", disco.parse_header, b"TS\xf0\x9f\x92\xad" + packet[6:])
    raises(RemoteProtocolError, "short", disco.open_message, unhex(_SEALED["shared_key"]), disco.MAGIC)


def test_looks_like_disco_is_tailscales_wrapper_test():
    packet = unhex(_SEALED["packet"])
    assert disco.looks_like_disco(packet)
    assert disco.looks_like_disco(packet[:62])
    assert not disco.looks_like_disco(packet[:61])
    assert not disco.looks_like_disco(b"\x01\x00\x00\x00" + bytes(144))  # WireGuard initiation
    assert not disco.looks_like_disco(b"\x00\x01\x00\x14\x21\x12\xa4\x42" + bytes(60))  # STUN


def test_receivers_ignore_trailing_bytes():
    for v in _DOC["messages"]:
        if v["message"] in ("Pong", "AllocateUDPRelayEndpointRequest") or v["message"].startswith("Bind"):
            _check(disco.parse(unhex(v["bytes"]) + b"future"), v)


def test_ping_splits_key_and_padding_like_tailscale():
    head = b"\x01\x00" + _TXID
    key = bytes(range(32, 64))
    ping = disco.parse(head + key + bytes(5))
    assert ping.node_key == NodePublic(key) and ping.padding == 5
    ping = disco.parse(head + bytes(31))  # too short for a key: all padding
    assert ping.node_key is None and ping.padding == 31
    ping = disco.parse(head + bytes(40))  # a zero key is no key
    assert ping.node_key is None and ping.padding == 8
    assert disco.parse(b"\x01\x07" + _TXID).txid == _TXID  # version ignored


def test_call_me_maybe_with_odd_version_or_length_is_empty():
    v = [m for m in _DOC["messages"] if m["message"] == "CallMeMaybe"][1]
    good = unhex(v["bytes"])
    assert disco.parse(b"\x03\x01" + good[2:]).endpoints == []
    assert disco.parse(good + b"\x00").endpoints == []
    assert disco.parse(good[:-1]).endpoints == []


def test_short_bodies_are_rejected():
    by_name = {}
    for v in _DOC["messages"]:
        by_name[v["message"]] = unhex(v["bytes"])
    raises(RemoteProtocolError, "short", disco.parse, b"")
    raises(RemoteProtocolError, "short", disco.parse, b"\x01")
    raises(RemoteProtocolError, "short", disco.parse, b"\x01\x00" + _TXID[:11])
    raises(RemoteProtocolError, "short", disco.parse, by_name["Pong"][:-1])
    raises(RemoteProtocolError, "short", disco.parse, by_name["BindUDPRelayEndpoint"][:-1])
    raises(RemoteProtocolError, "short", disco.parse, by_name["AllocateUDPRelayEndpointRequest"][:-1])
    via = by_name["CallMeMaybeVia"]
    raises(RemoteProtocolError, "short", disco.parse, via[: 2 + 124])  # no endpoint at all
    raises(RemoteProtocolError, "bad_length", disco.parse, via[:-1])
    raises(RemoteProtocolError, "bad_length", disco.parse, via + b"x")  # no trailing bytes after endpoints
    raises(RemoteProtocolError, "short", disco.parse, b"\x09\x00\x00\x00\x00")


def test_unknown_types_and_relay_versions():
    raises(RemoteProtocolError, "unknown_type", disco.parse, b"\x00\x00")
    raises(RemoteProtocolError, "unknown_type", disco.parse, b"\x0a\x00" + bytes(100))
    raises(RemoteProtocolError, "unknown_type", disco.parse, b"\xff\x00")
    for v in _DOC["messages"]:
        data = unhex(v["bytes"])
        bumped = data[:1] + b"\x01" + data[2:]
        if data[0] >= disco.TYPE_CALL_ME_MAYBE_VIA:
            raises(RemoteProtocolError, "unknown_version", disco.parse, bumped)
        elif data[0] >= disco.TYPE_BIND_UDP_RELAY_ENDPOINT:
            _check(disco.parse(bumped), v)  # Tailscale ignores the bind messages' version


def test_pong_round_trips_the_derp_pseudo_address():
    pong = disco.Pong(_TXID, parse_ip("127.3.3.40"), 7)
    back = disco.parse(pong.to_bytes())
    assert (back.ip, back.port) == (parse_ip("127.3.3.40"), 7)
    assert pong.to_bytes()[14:30] == bytes(10) + b"\xff\xff\x7f\x03\x03\x28"


def test_builders_refuse_impossible_messages():
    raises(LocalProtocolError, "bad_length", disco.Ping(_TXID[:11]).to_bytes)
    raises(LocalProtocolError, "out_of_range", disco.Ping(_TXID, None, -1).to_bytes)
    raises(LocalProtocolError, "bad_ip", disco.Pong(_TXID, b"\x01\x02\x03", 1).to_bytes)
    raises(LocalProtocolError, "out_of_range", disco.Pong(_TXID, bytes(4), 65536).to_bytes)
    raises(LocalProtocolError, "bad_ip", disco.CallMeMaybe([(bytes(5), 1)]).to_bytes)
    k = DiscoPublic(bytes(32))
    raises(LocalProtocolError, "bad_length", disco.BindUDPRelayEndpoint(1, 2, k, bytes(31)).to_bytes)
    empty = disco.UDPRelayEndpoint(k, (k, k), 0, 0, 0, 0, [])
    raises(LocalProtocolError, "no_endpoints", disco.CallMeMaybeVia(empty).to_bytes)
    raises(LocalProtocolError, "bad_length", disco.seal, bytes(32), k, bytes(23), b"\x01\x00")


def test_geneve_header_vectors():
    for v in _DOC["geneve"]:
        h = disco.GeneveHeader(v["protocol"], v["vni"], v["control"])
        assert h.to_bytes() == unhex(v["bytes"]), v["name"]
        back = disco.parse_geneve(unhex(v["bytes"]) + b"TS")
        assert (back.protocol, back.vni, back.control) == (v["protocol"], v["vni"], v["control"])
        assert back.version == 0


def test_geneve_limits():
    raises(RemoteProtocolError, "short", disco.parse_geneve, bytes(7))
    raises(LocalProtocolError, "out_of_range", disco.GeneveHeader(disco.GENEVE_PROTOCOL_DISCO, 1 << 24).to_bytes)
    raises(LocalProtocolError, "out_of_range", disco.GeneveHeader(disco.GENEVE_PROTOCOL_DISCO, 1, False, 4).to_bytes)
    assert disco.parse_geneve(b"\xc0\x40\x12\x34\x00\x00\x01\xff").version == 3
