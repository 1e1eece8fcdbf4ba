"""The DERP client connection against a scripted server built from the frame and login codecs.

The "server" here is a few lines of test code: an HTTP 101, then frames made
by meshlet.derp.frames and meshlet.derp.login with the derp vectors' server
key. Every test drives the client with a hand-stepped clock.
"""

from meshlet import crypto
from meshlet.derp import frames, login
from meshlet.derp.client import (
    LOGIN_TIMEOUT_MS,
    READ_TIMEOUT_MS,
    ClientConn,
    HttpStatusError,
    build_upgrade_request,
    parse_status_line,
)
from meshlet.derp.events import (
    Connected,
    ConnectionClosed,
    ConnectionTimedOut,
    HealthChanged,
    KeepAliveReceived,
    PacketReceived,
    PeerGone,
    PeerPresent,
    PongReceived,
    ServerRestarting,
)
from meshlet.errors import CryptoError, LocalProtocolError, RemoteProtocolError
from meshlet.key import NodePrivate, NodePublic
from meshlet_testing.raises import raises
from meshlet_testing.rand import FakeRandom
from meshlet_testing.vectors import load, unhex

_CI = load("derp")["client_info"]
_CLIENT = NodePrivate(unhex(_CI["client_private"]))
_SERVER = NodePrivate(unhex(_CI["server_private"]))
_PEER = NodePublic(bytes(range(32)))
_OTHER = NodePublic(bytes(range(1, 33)))

_HTTP_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: DERP\r\n"
    b"Connection: Upgrade\r\n"
    b"Derp-Version: 2\r\n"
    b"Derp-Public-Key: " + _SERVER.public().raw.hex().encode() + b"\r\n"
    b"\r\n"
)


def _greeting():
    return _HTTP_101 + login.build_server_key(_SERVER.public())


def _server_info(info=None):
    return login.build_server_info(_SERVER, _CLIENT.public(), bytes(range(24)), info or {"version": 2})


def _frames(data):
    """The (type, payload) frames a client wrote."""
    reader = frames.FrameReader()
    reader.feed(data)
    out = []
    while True:
        f = reader.next_frame()
        if f is None:
            assert reader.buffered() == 0, "a partial frame in the client's output"
            return out
        out.append(f)


def _events(conn):
    out = []
    while True:
        ev = conn.next_event()
        if ev is None:
            return out
        out.append(ev)


def _conn(now_ms=0, **kwargs):
    conn = ClientConn(_CLIENT, FakeRandom(7), now_ms, **kwargs)
    conn.connect("derp.example.net")
    conn.data_to_send()
    return conn


def _logged_in(now_ms=0, info=None, **kwargs):
    conn = _conn(now_ms, **kwargs)
    conn.receive_data(_greeting() + _server_info(info), now_ms)
    conn.data_to_send()
    evs = _events(conn)
    assert len(evs) == 1 and type(evs[0]) is Connected, evs
    return conn


# --- the HTTP upgrade ---


def test_upgrade_request_is_tailscales():
    want = b"GET /derp HTTP/1.1\r\nHost: derp1.example.net\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
    assert build_upgrade_request("derp1.example.net") == want
    got = build_upgrade_request("10.0.0.1:3340", "1a")
    assert got == want.replace(b"derp1.example.net", b"10.0.0.1:3340")[:-2] + b"Ideal-Node: 1a\r\n\r\n"
    for bad in ("", "a b", "a\r\nX: y", "h\u00e9"):
        raises(LocalProtocolError, "bad_header", build_upgrade_request, bad)
    raises(LocalProtocolError, "bad_header", build_upgrade_request, "ok", "")


def test_connect_queues_the_request_once():
    conn = ClientConn(_CLIENT, FakeRandom(7), 0)
    assert conn.state() == "idle"
    assert conn.data_to_send() == b""
    raises(LocalProtocolError, "out_of_order", conn.receive_data, b"HTTP/1.1", 0)
    conn.connect("derp.example.net", "900a")
    assert conn.data_to_send() == build_upgrade_request("derp.example.net", "900a")
    assert conn.data_to_send() == b""
    assert conn.state() == "http"
    raises(LocalProtocolError, "out_of_order", conn.connect, "derp.example.net")


def test_status_line_parsing():
    assert parse_status_line(b"HTTP/1.1 101 Switching Protocols\r\nX: y") == (101, "Switching Protocols")
    assert parse_status_line(b"HTTP/1.0 404\n") == (404, "")
    assert parse_status_line(b"HTTP/1.1 500 \xff\xfe") == (500, repr(b"\xff\xfe"))
    for bad in (b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/2 101 x", b"HTTP/1.1 1O1 x", b"HTTP/1.1 1010 x", b""):
        raises(RemoteProtocolError, "bad_http", parse_status_line, bad)


def test_refused_upgrade_carries_the_status():
    conn = _conn()
    e = raises(
        RemoteProtocolError,
        "http_status",
        conn.receive_data,
        b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
        5,
    )
    assert isinstance(e, HttpStatusError)
    assert e.status == 426
    assert e.detail == "426 Upgrade Required"
    assert conn.state() == "failed"
    assert conn.next_deadline() is None
    raises(LocalProtocolError, "conn_dead", conn.receive_data, b"more", 6)


def test_http_response_cut_anywhere_and_with_bare_newlines():
    data = _greeting() + _server_info()
    for cut in range(1, len(_HTTP_101) + 3):
        conn = _conn()
        conn.receive_data(data[:cut], 0)
        conn.receive_data(data[cut:], 0)
        assert [type(e) for e in _events(conn)] == [Connected], cut
    bare = b"HTTP/1.1 101 Switching Protocols\nUpgrade: DERP\n\n"
    conn = _conn()
    conn.receive_data(bare + login.build_server_key(_SERVER.public()), 0)
    assert conn.state() == "server_info"


def test_bad_http_responses():
    raises(RemoteProtocolError, "bad_http", _conn().receive_data, b"SSH-2.0-OpenSSH_9.2\r\n\r\n", 0)
    conn = _conn(max_http_header_len=100)
    conn.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n" + b"X: y\r\n" * 10, 0)
    raises(RemoteProtocolError, "http_headers_too_large", conn.receive_data, b"X: y\r\n" * 2, 0)
    head = b"HTTP/1.1 101 Switching Protocols\r\n" + b"X: y\r\n" * 20 + b"\r\n"
    raises(
        RemoteProtocolError, "http_headers_too_large", _conn(max_http_header_len=100).receive_data, head, 0
    )
    conn = _conn()
    conn.receive_data(b"HTTP/1.1 101 Switching", 0)
    raises(RemoteProtocolError, "truncated", conn.receive_data, b"", 0)


# --- the login ---


def test_login_sends_tsnets_client_info_and_connects_on_server_info():
    conn = _conn(now_ms=1000)
    conn.receive_data(_greeting(), 1200)
    assert conn.state() == "server_info"
    assert conn.server_key == _SERVER.public()
    assert _events(conn) == []
    sent = _frames(conn.data_to_send())
    assert [t for t, _ in sent] == [frames.FRAME_CLIENT_INFO]
    client, info = login.parse_client_info(sent[0][1], _SERVER)
    assert client == _CLIENT.public()
    assert info == {"meshKey": "", "version": 2, "CanAckPings": True, "IsProber": False}
    payload = sent[0][1]
    plaintext = crypto.box_open(_SERVER.raw_private(), _CLIENT.public().raw, payload[32:56], payload[56:])
    assert plaintext == b'{"version":2,"CanAckPings":true}'
    assert payload[32:56] == FakeRandom(7)(24)  # the nonce is the injected randomness
    conn.receive_data(_server_info(), 1300)
    evs = _events(conn)
    assert len(evs) == 1
    assert type(evs[0]) is Connected
    assert evs[0].server_key == _SERVER.public()
    assert evs[0].token_bucket is None
    assert conn.is_connected() and conn.state() == "connected"
    assert conn.data_to_send() == b""


def test_preferred_client_sends_note_preferred_right_after_client_info():
    conn = _conn(preferred=True)
    conn.receive_data(_greeting(), 0)
    sent = _frames(conn.data_to_send())
    assert [t for t, _ in sent] == [frames.FRAME_CLIENT_INFO, frames.FRAME_NOTE_PREFERRED]
    assert sent[1][1] == b"\x01"


def test_note_preferred_is_sent_only_when_it_changes():
    conn = _conn()
    conn.note_preferred(True)  # before the login: remembered, sent with ClientInfo
    assert conn.data_to_send() == b""
    conn.receive_data(_greeting(), 0)
    assert [t for t, _ in _frames(conn.data_to_send())] == [
        frames.FRAME_CLIENT_INFO,
        frames.FRAME_NOTE_PREFERRED,
    ]
    conn.note_preferred(True)
    assert conn.data_to_send() == b""
    conn.note_preferred(False)
    assert conn.data_to_send() == frames.build_note_preferred(False)
    conn.receive_data(_server_info(), 0)
    conn.note_preferred(True)
    assert conn.data_to_send() == frames.build_note_preferred(True)
    assert conn.preferred is True


def test_mesh_key_and_prober_go_into_client_info():
    mesh = bytes(range(100, 132))
    for key in (mesh, mesh.hex().upper()):
        conn = _conn(mesh_key=key, is_prober=True, can_ack_pings=False)
        conn.receive_data(_greeting(), 0)
        _, info = login.parse_client_info(_frames(conn.data_to_send())[0][1], _SERVER)
        assert info == {"meshKey": mesh.hex(), "version": 2, "CanAckPings": False, "IsProber": True}
    for bad in (bytes(31), "ab" * 31, "zz" * 32):
        raises(LocalProtocolError, "bad_mesh_key", ClientConn, _CLIENT, FakeRandom(1), 0, bad)


def test_first_frame_must_be_a_good_server_key():
    conn = _conn()
    raises(
        RemoteProtocolError, "unexpected_frame", conn.receive_data, _HTTP_101 + frames.build_keep_alive(), 0
    )
    bad_magic = frames.encode_frame(frames.FRAME_SERVER_KEY, b"DERP\xf0\x9f\x94\x92" + bytes(32))
    raises(RemoteProtocolError, "bad_magic", _conn().receive_data, _HTTP_101 + bad_magic, 0)
    short = frames.encode_frame(frames.FRAME_SERVER_KEY, frames.MAGIC + bytes(31))
    raises(RemoteProtocolError, "short", _conn().receive_data, _HTTP_101 + short, 0)
    # Extra bytes in the greeting are reserved and ignored, up to 1 KiB in all.
    roomy = frames.encode_frame(
        frames.FRAME_SERVER_KEY, frames.MAGIC + _SERVER.public().raw + bytes(1024 - 40)
    )
    conn = _conn()
    conn.receive_data(_HTTP_101 + roomy, 0)
    assert conn.server_key == _SERVER.public()
    # A larger one is refused as soon as its header arrives.
    conn = _conn()
    raises(RemoteProtocolError, "frame_too_large", conn.receive_data, _HTTP_101 + b"\x01\x00\x00\x04\x01", 0)


def test_bad_server_info_is_fatal():
    conn = _conn()
    conn.receive_data(_greeting(), 0)
    wrong = login.build_server_info(_CLIENT, _CLIENT.public(), bytes(24), {"version": 2})
    e = raises(RemoteProtocolError, "bad_tag", conn.receive_data, wrong, 0)
    assert isinstance(e, CryptoError)
    assert conn.state() == "failed"
    conn = _conn()
    conn.receive_data(_greeting(), 0)
    raises(
        RemoteProtocolError,
        "short",
        conn.receive_data,
        frames.encode_frame(frames.FRAME_SERVER_INFO, bytes(23)),
        0,
    )


def test_eof_during_the_login_is_an_error():
    conn = _conn()
    raises(RemoteProtocolError, "truncated", conn.receive_data, b"", 0)
    conn = _conn()
    conn.receive_data(_HTTP_101, 0)
    raises(RemoteProtocolError, "truncated", conn.receive_data, b"", 0)
    conn = _conn()
    conn.receive_data(_HTTP_101 + login.build_server_key(_SERVER.public())[:20], 0)
    raises(RemoteProtocolError, "truncated", conn.receive_data, b"", 0)


# --- steady state ---


def test_packets_both_ways():
    conn = _logged_in()
    assert conn.send_packet(_PEER, b"wireguard bytes", 10) is True
    assert conn.send_packet(_OTHER, b"", 10) is True
    out = conn.data_to_send()
    assert out == frames.build_send_packet(_PEER, b"wireguard bytes") + frames.build_send_packet(_OTHER, b"")
    conn.receive_data(
        frames.build_recv_packet(_PEER, b"reply") + frames.build_recv_packet(_OTHER, b"x" * 1400), 20
    )
    evs = _events(conn)
    assert [type(e) for e in evs] == [PacketReceived, PacketReceived]
    assert (evs[0].src, evs[0].data) == (_PEER, b"reply")
    assert (evs[1].src, evs[1].data) == (_OTHER, b"x" * 1400)
    s = conn.stats
    assert (s.tx_packets, s.tx_bytes, s.rx_packets, s.rx_bytes) == (2, 15, 2, 1405)
    big = bytes(frames.MAX_PACKET_SIZE)
    assert conn.send_packet(_PEER, big, 30)
    assert conn.data_to_send() == frames.build_send_packet(_PEER, big)
    raises(LocalProtocolError, "packet_too_large", conn.send_packet, _PEER, big + b"x", 30)


def test_sends_are_allowed_after_client_info_and_dropped_before():
    conn = _conn()
    assert conn.send_packet(_PEER, b"early", 0) is False
    assert conn.stats.dropped == {"not_connected": 1}
    assert conn.data_to_send() == b""
    conn.receive_data(_greeting(), 0)
    conn.data_to_send()
    assert conn.send_packet(_PEER, b"before server info", 0) is True  # as Tailscale's client
    assert conn.data_to_send() == frames.build_send_packet(_PEER, b"before server info")


def test_control_frames_become_events():
    conn = _logged_in()
    stream = (
        frames.build_keep_alive()
        + frames.build_peer_gone(_PEER, frames.PEER_GONE_NOT_HERE)
        + frames.encode_frame(frames.FRAME_PEER_GONE, _OTHER.raw)  # an old server: no reason byte
        + frames.build_peer_present(_PEER, bytes([10, 0, 0, 7]), 41641, frames.PEER_PRESENT_IS_REGULAR)
        + frames.build_health("no connection to control")
        + frames.build_health("")
        + frames.build_restarting(1500, 30000)
    )
    conn.receive_data(stream, 0)
    evs = _events(conn)
    kinds = [type(e) for e in evs]
    assert kinds == [
        KeepAliveReceived,
        PeerGone,
        PeerGone,
        PeerPresent,
        HealthChanged,
        HealthChanged,
        ServerRestarting,
    ]
    assert (evs[1].peer, evs[1].reason) == (_PEER, frames.PEER_GONE_NOT_HERE)
    assert (evs[2].peer, evs[2].reason) == (_OTHER, frames.PEER_GONE_DISCONNECTED)
    assert (evs[3].key, evs[3].ip, evs[3].port, evs[3].flags) == (_PEER, bytes([10, 0, 0, 7]), 41641, 1)
    assert (evs[4].problem, evs[5].problem) == ("no connection to control", "")
    assert (evs[6].reconnect_in_ms, evs[6].try_for_ms) == (1500, 30000)
    assert conn.data_to_send() == b""
    for ev in evs:
        assert repr(ev)  # every event prints for logs


def test_server_pings_are_answered():
    conn = _logged_in()
    conn.receive_data(frames.build_ping(b"12345678"), 0)
    assert conn.data_to_send() == frames.build_pong(b"12345678")
    longer = frames.encode_frame(frames.FRAME_PING, b"abcdefgh" + bytes(2000))  # room for extensions
    conn.receive_data(longer, 0)
    assert conn.data_to_send() == frames.build_pong(b"abcdefgh")
    assert conn.stats.pongs_sent == 2
    assert _events(conn) == []
    quiet = _logged_in(can_ack_pings=False)
    quiet.receive_data(frames.build_ping(b"12345678"), 0)
    assert quiet.data_to_send() == b""


def test_our_ping_and_the_servers_pong():
    conn = _conn()
    raises(LocalProtocolError, "not_connected", conn.ping, b"12345678")
    conn = _logged_in()
    conn.ping(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert conn.data_to_send() == frames.build_ping(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    raises(LocalProtocolError, "bad_length", conn.ping, b"short")
    conn.receive_data(frames.build_pong(b"\x01\x02\x03\x04\x05\x06\x07\x08"), 0)
    evs = _events(conn)
    assert len(evs) == 1 and type(evs[0]) is PongReceived
    assert evs[0].data == b"\x01\x02\x03\x04\x05\x06\x07\x08"


def test_short_frames_are_dropped_and_counted_like_tailscale():
    conn = _logged_in()
    for frame_type, payload in (
        (frames.FRAME_RECV_PACKET, bytes(31)),
        (frames.FRAME_PEER_GONE, bytes(31)),
        (frames.FRAME_PEER_PRESENT, bytes(5)),
        (frames.FRAME_PING, bytes(7)),
        (frames.FRAME_PONG, bytes(7)),
        (frames.FRAME_RESTARTING, bytes(7)),
    ):
        conn.receive_data(frames.encode_frame(frame_type, payload), 0)
    conn.receive_data(frames.encode_frame(frames.FRAME_HEALTH, b"\xff\xfe"), 0)
    assert conn.stats.dropped == {"short": 6, "bad_utf8": 1}
    assert _events(conn) == []
    assert conn.data_to_send() == b""
    conn.receive_data(frames.build_keep_alive(), 0)
    assert [type(e) for e in _events(conn)] == [KeepAliveReceived]


def test_unknown_frames_are_skipped():
    conn = _logged_in()
    stream = (
        frames.encode_frame(0x7F, b"from the future")
        + frames.encode_frame(0x16, b"")
        + login.build_server_key(_OTHER)  # a second greeting means nothing now
        + frames.build_recv_packet(_PEER, b"after")
    )
    conn.receive_data(stream, 0)
    evs = _events(conn)
    assert len(evs) == 1 and evs[0].data == b"after"
    assert conn.stats.unknown_frames == 3
    assert conn.server_key == _SERVER.public()


def test_oversized_and_garbage_frames_kill_the_connection():
    conn = _logged_in()
    raises(RemoteProtocolError, "frame_too_large", conn.receive_data, b"\x05\x00\x10\x00\x01", 0)  # 1 MiB + 1
    raises(LocalProtocolError, "conn_dead", conn.receive_data, b"\x06\x00\x00\x00\x00", 0)
    assert conn.state() == "failed"
    assert conn.next_deadline() is None
    conn = _logged_in()
    raises(
        RemoteProtocolError, "frame_too_large", conn.receive_data, b"GET / HTTP/1.1\r\n", 0
    )  # 'G', then 0x45542f20 bytes
    conn = _logged_in(max_frame_len=1000)
    conn.receive_data(frames.build_recv_packet(_PEER, bytes(1000 - 32)), 0)
    raises(
        RemoteProtocolError,
        "frame_too_large",
        conn.receive_data,
        frames.build_recv_packet(_PEER, bytes(1000 - 31)),
        0,
    )


def test_a_later_server_info_updates_the_limit_without_a_new_event():
    conn = _logged_in()
    limited = {"version": 2, "TokenBucketBytesPerSecond": 5000, "TokenBucketBytesBurst": 6000}
    conn.receive_data(_server_info(limited), 0)
    assert _events(conn) == []
    assert conn.token_bucket == (5000, 6000)
    conn.receive_data(_server_info(), 0)
    assert conn.token_bucket is None


def test_token_bucket_from_server_info():
    info = {"version": 2, "TokenBucketBytesPerSecond": 1000, "TokenBucketBytesBurst": 1000}
    conn = _conn()
    conn.receive_data(_greeting() + _server_info(info), 0)
    conn.data_to_send()
    assert _events(conn)[0].token_bucket == (1000, 1000)
    # Each frame is 5 + 32 + 100 = 137 bytes; the full bucket of 1000 holds 7 (959 bytes).
    sent = [conn.send_packet(_PEER, bytes(100), 0) for _ in range(8)]
    assert sent == [True] * 7 + [False]
    assert conn.stats.dropped == {"rate_limited": 1}
    assert len(conn.data_to_send()) == 7 * 137
    # 41 bytes were left; at 1000 B/s it takes 96 ms more to reach 137.
    assert conn.send_packet(_PEER, bytes(100), 95) is False
    assert conn.send_packet(_PEER, bytes(100), 96) is True
    # After a long pause the bucket is full again, never fuller.
    assert [conn.send_packet(_PEER, bytes(100), 60_000) for _ in range(8)] == [True] * 7 + [False]
    # A frame larger than the burst never fits.
    assert conn.send_packet(_PEER, bytes(1000), 120_000) is False
    assert conn.stats.dropped == {"rate_limited": 4}


# --- timers and the end ---


def test_login_deadline():
    conn = _conn(now_ms=5000)
    assert conn.next_deadline() == 5000 + LOGIN_TIMEOUT_MS
    conn.receive_data(_HTTP_101, 6000)
    assert conn.next_deadline() == 5000 + LOGIN_TIMEOUT_MS  # the 101 alone does not count
    conn.handle_timer(5000 + LOGIN_TIMEOUT_MS - 1)
    assert _events(conn) == []
    conn.handle_timer(5000 + LOGIN_TIMEOUT_MS)
    evs = _events(conn)
    assert len(evs) == 1 and type(evs[0]) is ConnectionTimedOut and evs[0].phase == "login"
    assert conn.state() == "closed"
    assert conn.next_deadline() is None


def test_read_deadline_is_two_keep_alives_after_the_last_frame():
    conn = _conn()
    conn.receive_data(_greeting(), 1000)
    assert conn.last_rx_ms == 1000
    assert conn.next_deadline() == 1000 + READ_TIMEOUT_MS == 121_000
    conn.receive_data(_server_info(), 2000)
    assert conn.next_deadline() == 122_000
    conn.receive_data(frames.build_keep_alive()[:3], 60_000)  # part of a frame is not a frame
    assert conn.next_deadline() == 122_000
    conn.receive_data(frames.build_keep_alive()[3:], 62_000)
    assert conn.next_deadline() == 182_000
    assert conn.last_rx_ms == 62_000
    conn.handle_timer(181_999)
    assert [type(e) for e in _events(conn)] == [Connected, KeepAliveReceived]
    conn.handle_timer(182_000)
    evs = _events(conn)
    assert len(evs) == 1 and type(evs[0]) is ConnectionTimedOut and evs[0].phase == "read"
    assert conn.next_deadline() is None
    assert conn.send_packet(_PEER, b"late", 182_001) is False
    conn.handle_timer(999_999)
    assert _events(conn) == []
    conn.receive_data(b"", 182_002)  # the shell's EOF after closing is harmless
    raises(LocalProtocolError, "out_of_order", conn.receive_data, b"x", 182_003)


def test_clean_eof_and_eof_inside_a_frame():
    conn = _logged_in()
    conn.receive_data(b"", 0)
    assert [type(e) for e in _events(conn)] == [ConnectionClosed]
    assert conn.state() == "closed"
    conn = _logged_in()
    conn.receive_data(frames.build_recv_packet(_PEER, b"cut")[:10], 0)
    raises(RemoteProtocolError, "truncated", conn.receive_data, b"", 0)


# --- one script, fed every way ---


def _script():
    info = {"version": 2, "TokenBucketBytesPerSecond": 1 << 20, "TokenBucketBytesBurst": 1 << 20}
    return (
        _greeting()
        + _server_info(info)
        + frames.build_recv_packet(_PEER, b"one")
        + frames.build_ping(b"pingpong")
        + frames.build_keep_alive()
        + frames.encode_frame(0x42, bytes(300))
        + frames.build_recv_packet(_OTHER, bytes(range(256)) * 8)
        + frames.build_peer_gone(_PEER)
        + frames.build_pong(b"\x00" * 8)
        + frames.build_health("h")
        + frames.build_restarting(1, 2)
    )


def _run(chunks):
    conn = _conn(preferred=True)
    out = b""
    evs = []
    for i, chunk in enumerate(chunks):
        conn.receive_data(chunk, i)
        out += conn.data_to_send()
        evs.extend(repr(e) for e in _events(conn))
    conn.receive_data(b"", len(chunks))
    evs.extend(repr(e) for e in _events(conn))
    return out, evs


def test_byte_at_a_time_equals_all_at_once():
    data = _script()
    whole = _run([data])
    assert len(whole[1]) == 9, whole[1]
    assert whole[1][-1] == "ConnectionClosed()"
    assert [t for t, _ in _frames(whole[0])] == [
        frames.FRAME_CLIENT_INFO,
        frames.FRAME_NOTE_PREFERRED,
        frames.FRAME_PONG,
    ]
    assert _run([data[i : i + 1] for i in range(len(data))]) == whole
    for step in (2, 7, 100, 1000):
        assert _run([data[i : i + step] for i in range(0, len(data), step)]) == whole, step
