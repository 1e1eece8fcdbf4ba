"""DERP frames against hand-assembled vectors, PyNaCl-sealed login boxes, and a byte stream fed every way."""

from meshlet import crypto
from meshlet.derp import frames, login
from meshlet.errors import CryptoError, LocalProtocolError, RemoteProtocolError
from meshlet.key import NodePrivate, NodePublic
from meshlet.wire import parse_ip
from meshlet_testing.raises import raises
from meshlet_testing.vectors import load, unhex

_DOC = load("derp")
_CI = _DOC["client_info"]
_SI = _DOC["server_info"]
_CLIENT = NodePrivate(unhex(_CI["client_private"]))
_SERVER = NodePrivate(unhex(_CI["server_private"]))


def _key(v, name="key"):
    return NodePublic(unhex(v[name]))


def _build(v):
    """Our builder's frame for a vector."""
    kind = v["frame"]
    if kind == "ServerKey":
        return login.build_server_key(_key(v))
    if kind == "NotePreferred":
        return frames.build_note_preferred(v["preferred"])
    if kind == "PeerGone":
        return frames.build_peer_gone(_key(v), v["reason"])
    if kind == "PeerPresent":
        return frames.build_peer_present(_key(v), parse_ip(v["ip"]), v["port"], v["flags"])
    if kind == "Restarting":
        return frames.build_restarting(v["reconnect_in_ms"], v["try_for_ms"])
    if kind == "KeepAlive":
        return frames.build_keep_alive()
    if kind == "WatchConns":
        return frames.build_watch_conns()
    if kind == "Ping":
        return frames.build_ping(unhex(v["data"]))
    if kind == "Pong":
        return frames.build_pong(unhex(v["data"]))
    if kind == "SendPacket":
        return frames.build_send_packet(_key(v), unhex(v["packet"]))
    if kind == "RecvPacket":
        return frames.build_recv_packet(_key(v), unhex(v["packet"]))
    if kind == "ForwardPacket":
        return frames.build_forward_packet(_key(v, "src"), _key(v), unhex(v["packet"]))
    if kind == "ClosePeer":
        return frames.build_close_peer(_key(v))
    assert kind == "Health", kind
    return frames.build_health(v["text"])


def _check(frame_type, payload, v):
    """Parses a payload with the vector's parser and compares every field."""
    kind = v["frame"]
    assert frame_type == getattr(frames, "FRAME_" + _snake(kind)), (kind, frame_type)
    if kind == "ServerKey":
        assert login.parse_server_key(payload) == _key(v)
    elif kind == "NotePreferred":
        assert frames.parse_note_preferred(payload) == v["preferred"]
    elif kind == "PeerGone":
        assert frames.parse_peer_gone(payload) == (_key(v), v["reason"])
    elif kind == "PeerPresent":
        p = frames.parse_peer_present(payload)
        ip = parse_ip(v["ip"]) if v["ip"] else None
        assert (p.key, p.ip, p.port, p.flags) == (_key(v), ip, v["port"], v["flags"])
    elif kind == "Restarting":
        assert frames.parse_restarting(payload) == (v["reconnect_in_ms"], v["try_for_ms"])
    elif kind == "KeepAlive":
        frames.parse_keep_alive(payload)
    elif kind == "WatchConns":
        frames.parse_watch_conns(payload)
    elif kind == "Ping":
        assert frames.parse_ping(payload) == unhex(v["data"])
    elif kind == "Pong":
        assert frames.parse_pong(payload) == unhex(v["data"])
    elif kind == "SendPacket":
        assert frames.parse_send_packet(payload) == (_key(v), unhex(v["packet"]))
    elif kind == "RecvPacket":
        assert frames.parse_recv_packet(payload) == (_key(v), unhex(v["packet"]))
    elif kind == "ForwardPacket":
        assert frames.parse_forward_packet(payload) == (_key(v, "src"), _key(v), unhex(v["packet"]))
    elif kind == "ClosePeer":
        assert frames.parse_close_peer(payload) == _key(v)
    else:
        assert frames.parse_health(payload) == v["text"]


def _snake(name):
    out = ""
    for i, c in enumerate(name):
        if "A" <= c <= "Z" and i:
            out += "_"
        out += c.upper()
    return out


def _stream():
    """Every vector frame back to back, and the (type, payload) list it holds."""
    data = b""
    want = []
    for v in _DOC["frames"]:
        b = unhex(v["bytes"])
        data += b
        want.append((b[0], b[5:]))
    return data, want


def _drain(reader):
    out = []
    while True:
        f = reader.next_frame()
        if f is None:
            return out
        out.append(f)


# --- vectors ---


def test_vectors_build_byte_exact():
    for v in _DOC["frames"]:
        if v["build"]:
            got = _build(v)
            assert got == unhex(v["bytes"]), (v["name"], got.hex())


def test_vectors_parse():
    for v in _DOC["frames"]:
        frame_type, payload = frames.decode_frame(unhex(v["bytes"]))
        _check(frame_type, payload, v)


def test_header_codec():
    assert frames.encode_header(frames.FRAME_SEND_PACKET, 0x01020304) == b"\x04\x01\x02\x03\x04"
    assert frames.parse_header(b"\x15\x00\x00\x00\x08rest") == (frames.FRAME_RESTARTING, 8)
    raises(RemoteProtocolError, "short", frames.parse_header, b"\x15\x00\x00\x00")
    assert frames.encode_frame(0xFF, b"xy") == b"\xff\x00\x00\x00\x02xy"


def test_decode_frame_wants_exactly_one_frame():
    data = unhex(_DOC["frames"][0]["bytes"])
    raises(RemoteProtocolError, "short", frames.decode_frame, data[:-1])
    raises(RemoteProtocolError, "trailing", frames.decode_frame, data + b"\x06")


# --- the login boxes ---


def test_client_info_is_byte_exact_with_tsnets_plaintext():
    assert _CLIENT.public().raw == unhex(_CI["client_public"])
    assert _SERVER.public().raw == unhex(_CI["server_public"])
    info = {"version": 2, "CanAckPings": True}
    frame = login.build_client_info(_CLIENT, _SERVER.public(), unhex(_CI["nonce"]), info)
    assert frame == unhex(_CI["bytes"]), frame.hex()
    sealed = frame[5 + 32 + 24 :]
    plaintext = crypto.box_open(_SERVER.raw_private(), _CLIENT.public().raw, unhex(_CI["nonce"]), sealed)
    assert plaintext == _CI["plaintext_text"].encode() == unhex(_CI["plaintext"])
    assert len(plaintext) == 32


def test_parse_client_info_fills_the_canonical_fields():
    frame_type, payload = frames.decode_frame(unhex(_CI["bytes"]))
    assert frame_type == frames.FRAME_CLIENT_INFO
    client, info = login.parse_client_info(payload, _SERVER)
    assert client == _CLIENT.public()
    assert info == {"meshKey": "", "version": 2, "CanAckPings": True, "IsProber": False}


def _client_info_payload(plaintext, nonce=bytes(24)):
    sealed = crypto.box_seal(_CLIENT.raw_private(), _SERVER.public().raw, nonce, plaintext)
    return _CLIENT.public().raw + nonce + sealed


def test_client_info_keys_are_case_insensitive_and_unknown_ones_ignored():
    mesh = "AB" * 32
    text = '{"MeshKey":"%s","Version":2,"canackpings":true,"ISPROBER":true,"Future":[1,{"x":null}]}' % mesh
    _, info = login.parse_client_info(_client_info_payload(text.encode()), _SERVER)
    assert info == {"meshKey": "ab" * 32, "version": 2, "CanAckPings": True, "IsProber": True}
    _, info = login.parse_client_info(_client_info_payload(b'{"version":null}'), _SERVER)
    assert info["version"] == 0


def test_client_info_bad_json_is_rejected():
    for text in (
        b"not json",
        b"",
        b"[1]",
        b"\xff\xfe",
        b'{"version":"2"}',
        b'{"version":2.5}',
        b'{"version":true}',
        b'{"CanAckPings":1}',
        b'{"meshKey":"zz"}',
        b'{"meshKey":"abcd"}',
        b'{"meshKey":"' + b"ab " * 16 + b"ab" * 8 + b'"}',  # 64 characters, 24 bytes
        b'{"version":99999999999999999999}',
    ):
        raises(RemoteProtocolError, "bad_json", login.parse_client_info, _client_info_payload(text), _SERVER)


def test_client_info_box_failures():
    payload = _client_info_payload(b'{"version":2}')
    bad = bytearray(payload)
    bad[-1] ^= 1
    e = raises(RemoteProtocolError, "bad_tag", login.parse_client_info, bytes(bad), _SERVER)
    assert isinstance(e, CryptoError)
    other = NodePrivate(bytes(range(32)))
    raises(RemoteProtocolError, "bad_tag", login.parse_client_info, payload, other)
    raises(RemoteProtocolError, "bad_tag", login.parse_client_info, payload[: 56 + 15], _SERVER)
    raises(RemoteProtocolError, "short", login.parse_client_info, payload[:55], _SERVER)
    raises(RemoteProtocolError, "frame_too_large", login.parse_client_info, bytes(login.MAX_CLIENT_INFO_LEN + 1), _SERVER)


def test_build_client_info_encodes_like_go():
    def plaintext(info):
        frame = login.build_client_info(_CLIENT, _SERVER.public(), bytes(24), info)
        return crypto.box_open(_SERVER.raw_private(), _CLIENT.public().raw, bytes(24), frame[61:])

    mesh = "0F" * 32
    got = plaintext({"IsProber": True, "CanAckPings": False, "version": 2, "meshKey": mesh})
    assert got == ('{"meshKey":"%s","version":2,"CanAckPings":false,"IsProber":true}' % mesh.lower()).encode()
    assert plaintext({}) == b'{"CanAckPings":false}'
    assert plaintext({"meshKey": "00" * 32, "version": 0}) == b'{"CanAckPings":false}'  # omitzero, omitempty
    raises(LocalProtocolError, "bad_info", plaintext, {"Version": 2})
    raises(LocalProtocolError, "bad_info", plaintext, {"version": "2"})
    raises(LocalProtocolError, "bad_info", plaintext, {"version": True})
    raises(LocalProtocolError, "bad_info", plaintext, {"CanAckPings": 1})
    raises(LocalProtocolError, "bad_info", plaintext, {"meshKey": "xy" * 32})


def test_server_info_round_trip():
    nonce = unhex(_SI["nonce"])
    frame = login.build_server_info(_SERVER, _CLIENT.public(), nonce, {"version": 2})
    assert frame == unhex(_SI["bytes"]), frame.hex()
    frame_type, payload = frames.decode_frame(frame)
    assert frame_type == frames.FRAME_SERVER_INFO
    info = login.parse_server_info(payload, _CLIENT, _SERVER.public())
    assert info == {"version": 2, "TokenBucketBytesPerSecond": 0, "TokenBucketBytesBurst": 0}
    limited = {"version": 2, "TokenBucketBytesPerSecond": 100000, "TokenBucketBytesBurst": 200000}
    payload = frames.decode_frame(login.build_server_info(_SERVER, _CLIENT.public(), nonce, limited))[1]
    assert login.parse_server_info(payload, _CLIENT, _SERVER.public()) == limited
    raises(RemoteProtocolError, "short", login.parse_server_info, nonce[:23], _CLIENT, _SERVER.public())
    raises(RemoteProtocolError, "bad_tag", login.parse_server_info, payload, _CLIENT, _CLIENT.public())


# --- the stream reader ---


def test_reader_byte_at_a_time():
    data, want = _stream()
    reader = frames.FrameReader()
    got = []
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
        got.extend(_drain(reader))
    assert got == want
    assert reader.buffered() == 0
    reader.feed_eof()


def test_reader_whole_stream_at_once_and_in_odd_chunks():
    data, want = _stream()
    reader = frames.FrameReader()
    reader.feed(data)
    assert _drain(reader) == want
    for step in (2, 3, 7, 41, 100):
        reader = frames.FrameReader()
        got = []
        for i in range(0, len(data), step):
            reader.feed(data[i : i + step])
            got.extend(_drain(reader))
        assert got == want, step


def test_reader_refuses_an_oversized_length_before_the_payload():
    reader = frames.FrameReader(max_frame_len=100)
    reader.feed(frames.encode_frame(frames.FRAME_PING, bytes(100)))
    assert reader.next_frame() == (frames.FRAME_PING, bytes(100))
    reader.feed(b"\x04\x00\x00")
    assert reader.next_frame() is None
    reader.feed(b"\x00\x65")  # 101: only the header has arrived
    raises(RemoteProtocolError, "frame_too_large", reader.next_frame)
    raises(RemoteProtocolError, "frame_too_large", reader.next_frame)  # the stream stays dead
    reader.feed(bytes(101))
    assert reader.buffered() == 0
    huge = frames.FrameReader()
    huge.feed(b"\x05\xff\xff\xff\xff")
    raises(RemoteProtocolError, "frame_too_large", huge.next_frame)


def test_reader_truncation():
    data = unhex(_DOC["frames"][0]["bytes"])
    reader = frames.FrameReader()
    reader.feed(data[:-1])
    assert reader.next_frame() is None
    assert reader.buffered() == len(data) - 1
    raises(RemoteProtocolError, "truncated", reader.feed_eof)
    reader.feed(data[-1:])
    assert reader.next_frame() == (data[0], data[5:])
    reader.feed_eof()
    reader.feed(b"\x06\x00")
    raises(RemoteProtocolError, "truncated", reader.feed_eof)


def test_reader_must_be_drained_before_more_is_fed():
    reader = frames.FrameReader(max_frame_len=10)
    reader.feed(frames.encode_frame(1, bytes(10)) + frames.encode_frame(2, bytes(10)))
    raises(LocalProtocolError, "not_drained", reader.feed, b"x")
    assert reader.next_frame() == (1, bytes(10))
    reader.feed(b"\x06\x00\x00\x00\x00")
    assert _drain(reader) == [(2, bytes(10)), (6, b"")]


def test_reader_yields_unknown_types_and_empty_frames():
    reader = frames.FrameReader()
    reader.feed(b"\x7f\x00\x00\x00\x00\x06\x00\x00\x00\x00\x99\x00\x00\x00\x01z")
    assert _drain(reader) == [(0x7F, b""), (6, b""), (0x99, b"z")]


# --- limits and strict lengths ---


class _Huge:
    def __len__(self):
        return frames.MAX_WRITE_FRAME_LEN + 1


def test_writer_limits():
    raises(LocalProtocolError, "frame_too_large", frames.encode_frame, 4, _Huge())
    key = NodePublic(bytes(32))
    big = bytes(frames.MAX_PACKET_SIZE)
    assert len(frames.build_send_packet(key, big)) == 5 + 32 + frames.MAX_PACKET_SIZE
    raises(LocalProtocolError, "packet_too_large", frames.build_send_packet, key, big + b"x")
    raises(LocalProtocolError, "packet_too_large", frames.build_recv_packet, key, big + b"x")
    raises(LocalProtocolError, "packet_too_large", frames.build_forward_packet, key, key, big + b"x")
    raises(LocalProtocolError, "bad_length", frames.build_ping, bytes(7))
    raises(LocalProtocolError, "bad_length", frames.build_pong, bytes(9))
    raises(LocalProtocolError, "out_of_range", frames.build_restarting, -1, 0)
    raises(LocalProtocolError, "bad_ip", frames.build_peer_present, key, bytes(5), 1, 1)


def test_server_side_packet_limits():
    key = bytes(32)
    big = bytes(frames.MAX_PACKET_SIZE)
    assert frames.parse_send_packet(key + big)[1] == big
    raises(RemoteProtocolError, "packet_too_large", frames.parse_send_packet, key + big + b"x")
    raises(RemoteProtocolError, "packet_too_large", frames.parse_forward_packet, key + key + big + b"x")
    raises(RemoteProtocolError, "short", frames.parse_send_packet, key[:31])
    raises(RemoteProtocolError, "short", frames.parse_recv_packet, key[:31])
    raises(RemoteProtocolError, "short", frames.parse_forward_packet, key + key[:31])
    assert frames.parse_recv_packet(key) == (NodePublic(key), b"")


def test_strict_and_lax_lengths():
    key = bytes(32)
    raises(RemoteProtocolError, "bad_length", frames.parse_note_preferred, b"")
    raises(RemoteProtocolError, "bad_length", frames.parse_note_preferred, b"\x01\x01")
    assert frames.parse_note_preferred(b"\x07") is True
    raises(RemoteProtocolError, "bad_length", frames.parse_watch_conns, b"\x00")
    raises(RemoteProtocolError, "bad_length", frames.parse_close_peer, key[:31])
    raises(RemoteProtocolError, "bad_length", frames.parse_close_peer, key + b"\x00")
    raises(RemoteProtocolError, "short", frames.parse_ping, bytes(7))
    assert frames.parse_ping(bytes(range(8)) + bytes(992)) == bytes(range(8))
    raises(RemoteProtocolError, "frame_too_large", frames.parse_ping, bytes(1001))
    raises(RemoteProtocolError, "short", frames.parse_pong, bytes(7))
    assert frames.parse_pong(bytes(range(9))) == bytes(range(8))
    raises(RemoteProtocolError, "short", frames.parse_restarting, bytes(7))
    assert frames.parse_restarting(bytes(9)) == (0, 0)
    raises(RemoteProtocolError, "short", frames.parse_peer_gone, key[:31])
    assert frames.parse_peer_gone(key + b"\x01\xff") == (NodePublic(key), 1)
    raises(RemoteProtocolError, "short", frames.parse_peer_present, key[:31])
    assert frames.parse_peer_present(key + bytes(17)).ip is None
    assert frames.parse_peer_present(key + bytes(60)).flags == 0


def test_server_key_checks():
    good = frames.MAGIC + bytes(range(32))
    assert login.parse_server_key(good + bytes(1024 - 40)) == NodePublic(bytes(range(32)))
    raises(RemoteProtocolError, "frame_too_large", login.parse_server_key, good + bytes(1024 - 39))
    raises(RemoteProtocolError, "short", login.parse_server_key, good[:39])
    raises(RemoteProtocolError, "short", login.parse_server_key, b"DERP")
    raises(RemoteProtocolError, "bad_magic", login.parse_server_key, b"DERP\xf0\x9f\x94\x92" + bytes(32))


def test_health_text():
    assert frames.parse_health(frames.build_health("dup \u00e9")[5:]) == "dup \u00e9"
    raises(RemoteProtocolError, "bad_utf8", frames.parse_health, b"\xff\xfe")
