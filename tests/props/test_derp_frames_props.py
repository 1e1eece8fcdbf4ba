"""Properties of the DERP frame layer: round trips, garbage, and a stream cut anywhere."""

from hypothesis import given
from hypothesis import strategies as st

from meshlet.derp import frames, login
from meshlet.errors import RemoteProtocolError
from meshlet.key import NodePrivate, NodePublic
from meshlet_testing.garbage import mutations, parses_or_rejects

_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_CLIENT = NodePrivate(b"\x05" * 32)
_SERVER = NodePrivate(b"\x06" * 32)

keys = st.binary(min_size=32, max_size=32).map(NodePublic)
packets = st.binary(max_size=300)
ips = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
ports = st.integers(min_value=0, max_value=0xFFFF)
u32s = st.integers(min_value=0, max_value=0xFFFFFFFF)
nonces = st.binary(min_size=24, max_size=24)
int64s = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
hex_keys = st.binary(min_size=32, max_size=32).map(lambda b: b.hex())


def _compact(ip: bytes) -> bytes:
    return ip[12:] if len(ip) == 16 and ip[:12] == _V4_MAPPED else ip


def _payload(frame: bytes, want_type: int) -> bytes:
    frame_type, payload = frames.decode_frame(frame)
    assert frame_type == want_type
    return payload


@given(keys, packets)
def test_packet_frames_round_trip(key: NodePublic, packet: bytes) -> None:
    p = _payload(frames.build_send_packet(key, packet), frames.FRAME_SEND_PACKET)
    assert frames.parse_send_packet(p) == (key, packet)
    p = _payload(frames.build_recv_packet(key, packet), frames.FRAME_RECV_PACKET)
    assert frames.parse_recv_packet(p) == (key, packet)
    p = _payload(frames.build_forward_packet(key, NodePublic(bytes(32)), packet), frames.FRAME_FORWARD_PACKET)
    assert frames.parse_forward_packet(p) == (key, NodePublic(bytes(32)), packet)


@given(keys, st.integers(min_value=0, max_value=255), ips, ports, st.integers(min_value=0, max_value=255))
def test_peer_frames_round_trip(key: NodePublic, reason: int, ip: bytes, port: int, flags: int) -> None:
    p = _payload(login.build_server_key(key), frames.FRAME_SERVER_KEY)
    assert login.parse_server_key(p) == key
    p = _payload(frames.build_peer_gone(key, reason), frames.FRAME_PEER_GONE)
    assert frames.parse_peer_gone(p) == (key, reason)
    p = _payload(frames.build_peer_present(key, ip, port, flags), frames.FRAME_PEER_PRESENT)
    got = frames.parse_peer_present(p)
    assert (got.key, got.ip, got.port, got.flags) == (key, _compact(ip), port, flags)
    p = _payload(frames.build_close_peer(key), frames.FRAME_CLOSE_PEER)
    assert frames.parse_close_peer(p) == key


@given(st.booleans(), st.binary(min_size=8, max_size=8), u32s, u32s, st.text(max_size=50))
def test_small_frames_round_trip(preferred: bool, data: bytes, a: int, b: int, text: str) -> None:
    assert frames.parse_note_preferred(_payload(frames.build_note_preferred(preferred), 0x07)) is preferred
    assert frames.parse_ping(_payload(frames.build_ping(data), frames.FRAME_PING)) == data
    assert frames.parse_pong(_payload(frames.build_pong(data), frames.FRAME_PONG)) == data
    assert frames.parse_restarting(_payload(frames.build_restarting(a, b), frames.FRAME_RESTARTING)) == (a, b)
    assert frames.parse_health(_payload(frames.build_health(text), frames.FRAME_HEALTH)) == text
    frames.parse_keep_alive(_payload(frames.build_keep_alive(), frames.FRAME_KEEP_ALIVE))
    frames.parse_watch_conns(_payload(frames.build_watch_conns(), frames.FRAME_WATCH_CONNS))


client_infos = st.fixed_dictionaries(
    {},
    optional={
        "meshKey": hex_keys,
        "version": int64s,
        "CanAckPings": st.booleans(),
        "IsProber": st.booleans(),
    },
)
server_infos = st.fixed_dictionaries(
    {}, optional={"version": int64s, "TokenBucketBytesPerSecond": int64s, "TokenBucketBytesBurst": int64s}
)


@given(client_infos, nonces)
def test_client_info_round_trip(info: "dict[str, object]", nonce: bytes) -> None:
    frame = login.build_client_info(_CLIENT, _SERVER.public(), nonce, info)
    client, got = login.parse_client_info(_payload(frame, frames.FRAME_CLIENT_INFO), _SERVER)
    assert client == _CLIENT.public()
    want: "dict[str, object]" = {"meshKey": "", "version": 0, "CanAckPings": False, "IsProber": False}
    want.update(info)
    if want["meshKey"] == "00" * 32:
        want["meshKey"] = ""  # Go omits a zero mesh key
    assert got == want


@given(server_infos, nonces)
def test_server_info_round_trip(info: "dict[str, object]", nonce: bytes) -> None:
    frame = login.build_server_info(_SERVER, _CLIENT.public(), nonce, info)
    got = login.parse_server_info(_payload(frame, frames.FRAME_SERVER_INFO), _CLIENT, _SERVER.public())
    want: "dict[str, object]" = {"version": 0, "TokenBucketBytesPerSecond": 0, "TokenBucketBytesBurst": 0}
    want.update(info)
    assert got == want


_PARSERS = [
    login.parse_server_key,
    frames.parse_send_packet,
    frames.parse_recv_packet,
    frames.parse_forward_packet,
    frames.parse_keep_alive,
    frames.parse_note_preferred,
    frames.parse_peer_gone,
    frames.parse_peer_present,
    frames.parse_watch_conns,
    frames.parse_close_peer,
    frames.parse_ping,
    frames.parse_pong,
    frames.parse_health,
    frames.parse_restarting,
    frames.decode_frame,
    frames.parse_header,
    lambda p: login.parse_client_info(p, _SERVER),
    lambda p: login.parse_server_info(p, _CLIENT, _SERVER.public()),
]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_reject(data: bytes) -> None:
    for parse in _PARSERS:
        parses_or_rejects(parse, data)


@given(st.binary(max_size=200), nonces)
def test_arbitrary_sealed_json_parses_or_rejects(plaintext: bytes, nonce: bytes) -> None:
    from meshlet import crypto

    sealed = crypto.box_seal(_CLIENT.raw_private(), _SERVER.public().raw, nonce, plaintext)
    parses_or_rejects(lambda p: login.parse_client_info(p, _SERVER), _CLIENT.public().raw + nonce + sealed)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
)


@given(json_values, nonces)
def test_arbitrary_json_values_parse_or_reject(value: object, nonce: bytes) -> None:
    import json

    from meshlet import crypto

    for doc in (value, {"version": value}, {"MESHKEY": value}, {"CanAckPings": value}):
        plaintext = json.dumps(doc).encode()
        sealed = crypto.box_seal(_SERVER.raw_private(), _CLIENT.public().raw, nonce, plaintext)
        parses_or_rejects(lambda p: login.parse_server_info(p, _CLIENT, _SERVER.public()), nonce + sealed)
        sealed = crypto.box_seal(_CLIENT.raw_private(), _SERVER.public().raw, nonce, plaintext)
        payload = _CLIENT.public().raw + nonce + sealed
        parses_or_rejects(lambda p: login.parse_client_info(p, _SERVER), payload)


@given(keys, packets, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_frames_parse_or_reject(key: NodePublic, packet: bytes, pos: int, value: int) -> None:
    for frame in (
        frames.build_forward_packet(key, key, packet),
        frames.build_peer_present(key, bytes(4), 1, 1),
        login.build_client_info(_CLIENT, _SERVER.public(), bytes(24), {"version": 2, "CanAckPings": True}),
    ):
        data = mutations(frame, pos, value)
        for parse in _PARSERS:
            parses_or_rejects(parse, data)
            parses_or_rejects(parse, data[5:])


# --- the stream reader ---

_MAX = 64
stream_frames = st.lists(
    st.tuples(st.integers(min_value=0, max_value=255), st.binary(max_size=_MAX)), max_size=12
)


def _cut(data: bytes, cuts: "list[int]") -> "list[bytes]":
    points = sorted(set(c % (len(data) + 1) for c in cuts))
    chunks = []
    prev = 0
    for p in points + [len(data)]:
        chunks.append(data[prev:p])
        prev = p
    return chunks


@given(stream_frames, st.lists(st.integers(min_value=0), max_size=30))
def test_reader_random_splits_yield_the_same_frames(fs: "list[tuple[int, bytes]]", cuts: "list[int]") -> None:
    data = b"".join(frames.encode_frame(t, p) for t, p in fs)
    reader = frames.FrameReader(max_frame_len=_MAX)
    got = []
    fed = 0
    for chunk in _cut(data, cuts):
        reader.feed(chunk)
        fed = len(chunk) or fed  # feeding b"" changes nothing
        # The bound the module promises: one partial frame plus the chunk just fed.
        assert len(reader._buf) <= frames.FRAME_HEADER_LEN + _MAX + fed
        while (f := reader.next_frame()) is not None:
            got.append(f)
    assert got == fs
    assert reader.buffered() == 0
    reader.feed_eof()


@given(
    st.binary(max_size=400),
    st.lists(st.integers(min_value=0), max_size=20),
    st.integers(min_value=0, max_value=100),
)
def test_reader_on_garbage_yields_frames_or_remote_errors(data: bytes, cuts: "list[int]", limit: int) -> None:
    reader = frames.FrameReader(max_frame_len=limit)
    fed = 0
    try:
        for chunk in _cut(data, cuts):
            reader.feed(chunk)
            fed = len(chunk) or fed
            assert len(reader._buf) <= frames.FRAME_HEADER_LEN + limit + fed
            while (f := reader.next_frame()) is not None:
                assert len(f[1]) <= limit
        reader.feed_eof()
    except RemoteProtocolError as e:
        assert e.reason in ("frame_too_large", "truncated")
