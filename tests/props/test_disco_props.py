"""Properties of the disco codec: every message round-trips, and garbage only ever raises ProtocolError."""

from hypothesis import given
from hypothesis import strategies as st
from nacl.public import Box, PrivateKey, PublicKey

from meshlet import disco
from meshlet.key import DiscoPrivate, DiscoPublic, NodePublic
from meshlet_testing.garbage import mutations, parses_or_rejects

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"

txids = st.binary(min_size=12, max_size=12)
raw_keys = st.binary(min_size=32, max_size=32)
disco_keys = raw_keys.map(DiscoPublic)
node_keys = raw_keys.filter(lambda b: b != bytes(32)).map(NodePublic)
ips = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
ports = st.integers(min_value=0, max_value=0xFFFF)
u32s = st.integers(min_value=0, max_value=0xFFFFFFFF)
u64s = st.integers(min_value=0, max_value=0xFFFFFFFFFFFFFFFF)
endpoint_lists = st.lists(st.tuples(ips, ports), max_size=6)


def _compact(ip: bytes) -> bytes:
    return ip[12:] if len(ip) == 16 and ip[:12] == _V4_MAPPED else ip


def _endpoints(eps: "list[tuple[bytes, int]]") -> "list[tuple[bytes, int]]":
    return [(_compact(ip), port) for ip, port in eps]


def _relay(ep: disco.UDPRelayEndpoint) -> tuple[object, ...]:
    return (
        ep.server_disco,
        tuple(ep.client_disco),
        ep.lamport_id,
        ep.vni,
        ep.bind_lifetime_ns,
        ep.steady_state_lifetime_ns,
        _endpoints(ep.endpoints),
    )


def _fields(m: object) -> tuple[object, ...]:
    """Everything a message says, addresses normalised the way the parser reports them."""
    if isinstance(m, disco.Ping):
        return (m.txid, m.node_key, m.padding)
    if isinstance(m, disco.Pong):
        return (m.txid, _compact(m.ip), m.port)
    if isinstance(m, disco.CallMeMaybe):
        return (_endpoints(m.endpoints),)
    if isinstance(m, disco._BindCommon):
        return (m.TYPE, m.vni, m.generation, m.remote_key, m.challenge)
    if isinstance(m, disco.CallMeMaybeVia):
        return _relay(m.endpoint)
    if isinstance(m, disco.AllocateUDPRelayEndpointRequest):
        return (tuple(m.client_disco), m.generation)
    assert isinstance(m, disco.AllocateUDPRelayEndpointResponse)
    return (m.generation,) + _relay(m.endpoint)


relay_endpoints = st.builds(
    disco.UDPRelayEndpoint,
    disco_keys,
    st.tuples(disco_keys, disco_keys),
    u64s,
    u32s,
    u64s,
    u64s,
    st.lists(st.tuples(ips, ports), min_size=1, max_size=4),
)
bind_classes = st.sampled_from(
    [disco.BindUDPRelayEndpoint, disco.BindUDPRelayEndpointChallenge, disco.BindUDPRelayEndpointAnswer]
)
messages = st.one_of(
    st.builds(disco.Ping, txids, st.none(), st.integers(min_value=0, max_value=31)),
    st.builds(disco.Ping, txids, node_keys, st.integers(min_value=0, max_value=1500)),
    st.builds(disco.Pong, txids, ips, ports),
    st.builds(disco.CallMeMaybe, endpoint_lists),
    st.builds(
        lambda cls, vni, gen, key, chal: cls(vni, gen, key, chal),
        bind_classes,
        u32s,
        u32s,
        disco_keys,
        st.binary(min_size=32, max_size=32),
    ),
    st.builds(disco.CallMeMaybeVia, relay_endpoints),
    st.builds(disco.AllocateUDPRelayEndpointRequest, st.tuples(disco_keys, disco_keys), u32s),
    st.builds(disco.AllocateUDPRelayEndpointResponse, u32s, relay_endpoints),
)


@given(messages)
def test_every_message_round_trips(m: "disco.Message") -> None:
    data = m.to_bytes()
    back = disco.parse(data)
    assert type(back) is type(m)
    assert _fields(back) == _fields(m)
    assert back.to_bytes() == data


@given(messages, st.binary(min_size=1, max_size=40))
def test_trailing_bytes_never_break_fixed_size_messages(m: "disco.Message", junk: bytes) -> None:
    if isinstance(m, (disco.Pong, disco._BindCommon, disco.AllocateUDPRelayEndpointRequest)):
        assert _fields(disco.parse(m.to_bytes() + junk)) == _fields(m)


@given(raw_keys, raw_keys, st.binary(min_size=24, max_size=24), messages)
def test_seal_open_round_trip_and_match_pynacl(
    a_raw: bytes, b_raw: bytes, nonce: bytes, m: "disco.Message"
) -> None:
    a, b = DiscoPrivate(a_raw), DiscoPrivate(b_raw)
    packet = disco.seal(disco.beforenm(a, b.public()), a.public(), nonce, m)
    assert disco.looks_like_disco(packet)
    sender, sealed = disco.parse_header(packet)
    assert sender == a.public()
    assert sealed == Box(PrivateKey(a_raw), PublicKey(b.public().raw)).encrypt(m.to_bytes(), nonce)
    back = disco.open_message(disco.beforenm(b, sender), packet)
    assert _fields(back) == _fields(m)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_reject(data: bytes) -> None:
    parses_or_rejects(disco.parse, data)
    parses_or_rejects(disco.parse_header, data)
    parses_or_rejects(disco.parse_geneve, data)
    parses_or_rejects(lambda d: disco.open_message(bytes(32), d), data)


octets = st.integers(min_value=0, max_value=255)


@given(octets, octets, st.binary(max_size=200))
def test_every_type_and_version_with_any_body(msg_type: int, version: int, body: bytes) -> None:
    parses_or_rejects(disco.parse, bytes((msg_type, version)) + body)


@given(messages, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_messages_parse_or_reject(m: "disco.Message", pos: int, value: int) -> None:
    parses_or_rejects(disco.parse, mutations(m.to_bytes(), pos, value))


@given(messages, st.integers(min_value=0, max_value=300))
def test_truncated_messages_parse_or_reject(m: "disco.Message", cut: int) -> None:
    parses_or_rejects(disco.parse, m.to_bytes()[:cut])


@given(
    st.sampled_from([disco.GENEVE_PROTOCOL_DISCO, disco.GENEVE_PROTOCOL_WIREGUARD, 0x6558]),
    st.integers(min_value=0, max_value=0xFFFFFF),
    st.booleans(),
    st.integers(min_value=0, max_value=3),
)
def test_geneve_round_trip(protocol: int, vni: int, control: bool, version: int) -> None:
    back = disco.parse_geneve(disco.GeneveHeader(protocol, vni, control, version).to_bytes())
    assert (back.protocol, back.vni, back.control, back.version) == (protocol, vni, control, version)
