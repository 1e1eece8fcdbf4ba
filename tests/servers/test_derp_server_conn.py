"""meshlet.derp.server.ServerConn, sans-I/O: login, every frame, every check, timers. No sockets."""

import pytest

from meshlet.derp import frames, login
from meshlet.derp import server as ds
from meshlet.errors import CryptoError, LocalProtocolError, RemoteProtocolError
from meshlet.key import NodePrivate
from meshlet_testing.rand import FakeRandom

SERVER = NodePrivate.generate(FakeRandom(1))
CLIENT = NodePrivate.generate(FakeRandom(2))
PEER = NodePrivate.generate(FakeRandom(3)).public()
MESH_KEY = bytes(range(32))


def _conn(now_ms=0, **kw):  # type: ignore[no-untyped-def]
    return ds.ServerConn(SERVER, FakeRandom(7), now_ms, **kw)


def _hello(info=None, client=CLIENT):  # type: ignore[no-untyped-def]
    return login.build_client_info(
        client, SERVER.public(), bytes(24), info or {"version": 2, "CanAckPings": True}
    )


def _events(conn, data, now_ms=0):  # type: ignore[no-untyped-def]
    conn.receive_data(data, now_ms)
    out = []
    while True:
        ev = conn.next_event()
        if ev is None:
            return out
        out.append(ev)


def _logged_in(**kw):  # type: ignore[no-untyped-def]
    mesh = kw.pop("mesh", False)
    conn = _conn(mesh_key=MESH_KEY, **kw)
    info = {"version": 2, "CanAckPings": True}
    if mesh:
        info["meshKey"] = MESH_KEY.hex()
    (ev,) = _events(conn, _hello(info))
    assert isinstance(ev, ds.ClientLoggedIn)
    conn.data_to_send()
    return conn


def _fails(conn, data, reason):  # type: ignore[no-untyped-def]
    with pytest.raises(RemoteProtocolError) as e:
        _events(conn, data)
    assert e.value.reason == reason
    assert conn.state == ds.ERROR
    with pytest.raises(RemoteProtocolError):  # and stays failed
        conn.next_event()


# -- login ----------------------------------------------------------------------------


def test_greeting_is_server_key():
    ftype, payload = frames.decode_frame(_conn().greeting())
    assert ftype == frames.FRAME_SERVER_KEY
    assert login.parse_server_key(payload) == SERVER.public()


def test_login_then_server_info_sealed_to_the_client():
    conn = _conn()
    assert conn.state == ds.AWAIT_CLIENT_INFO
    assert conn.data_to_send() == b""
    (ev,) = _events(conn, _hello())
    assert isinstance(ev, ds.ClientLoggedIn)
    assert ev.key == CLIENT.public() and conn.client_key == CLIENT.public()
    assert ev.info["CanAckPings"] is True and ev.info["version"] == 2
    assert not ev.is_mesh_peer
    assert conn.state == ds.LOGGED_IN
    ftype, payload = frames.decode_frame(conn.data_to_send())
    assert ftype == frames.FRAME_SERVER_INFO
    assert login.parse_server_info(payload, CLIENT, SERVER.public())["version"] == 2
    assert conn.data_to_send() == b""


def test_server_info_carries_the_token_bucket_when_given():
    info = {"version": 2, "TokenBucketBytesPerSecond": 1000, "TokenBucketBytesBurst": 70000}
    conn = _conn(server_info=info)
    _events(conn, _hello())
    _, payload = frames.decode_frame(conn.data_to_send())
    got = login.parse_server_info(payload, CLIENT, SERVER.public())
    assert got["TokenBucketBytesPerSecond"] == 1000 and got["TokenBucketBytesBurst"] == 70000


def test_mesh_key_makes_a_mesh_peer_only_when_it_matches():
    assert _logged_in(mesh=True).is_mesh_peer
    conn = _conn(mesh_key=MESH_KEY)
    (ev,) = _events(conn, _hello({"meshKey": bytes(31).hex() + "01", "version": 2}))
    assert not ev.is_mesh_peer
    conn = _conn(mesh_key=bytes(32))  # all zeros: no mesh at all
    (ev,) = _events(conn, _hello({"meshKey": MESH_KEY.hex()}))
    assert not ev.is_mesh_peer
    conn = _conn()  # no mesh key configured
    (ev,) = _events(conn, _hello({"meshKey": MESH_KEY.hex()}))
    assert not ev.is_mesh_peer


def test_bad_mesh_key_length_is_the_callers_mistake():
    with pytest.raises(LocalProtocolError):
        _conn(mesh_key=b"short")


def test_login_fed_one_byte_at_a_time():
    conn = _conn()
    data = _hello() + frames.build_note_preferred(True)
    got = []
    for i in range(len(data)):
        got.extend(_events(conn, data[i : i + 1]))
    assert [type(e) for e in got] == [ds.ClientLoggedIn, ds.NotePreferred]


def test_frame_before_client_info_is_refused():
    _fails(_conn(), frames.build_note_preferred(True), "unexpected_frame")


def test_client_info_box_that_does_not_open():
    data = bytearray(_hello())
    data[-1] ^= 1
    conn = _conn()
    with pytest.raises(CryptoError):
        _events(conn, bytes(data))
    assert conn.state == ds.ERROR


def test_client_info_too_short_and_too_long():
    _fails(_conn(), frames.encode_frame(frames.FRAME_CLIENT_INFO, bytes(55)), "short")
    header = frames.encode_header(frames.FRAME_CLIENT_INFO, login.MAX_CLIENT_INFO_LEN + 1)
    _fails(_conn(), header, "frame_too_large")  # refused at the header, before any payload


# -- steady state ---------------------------------------------------------------------


def test_send_packet_note_preferred_ping_and_unknown_frames():
    conn = _logged_in()
    data = (
        frames.build_send_packet(PEER, b"payload")
        + frames.build_note_preferred(True)
        + frames.build_ping(b"12345678")
        + frames.encode_frame(0x7F, b"future")
        + frames.encode_frame(frames.FRAME_PONG, b"12345678")
    )
    evs = _events(conn, data)
    assert [type(e) for e in evs] == [ds.PacketForPeer, ds.NotePreferred, ds.PingReceived, ds.FrameSkipped,
                                      ds.FrameSkipped]  # fmt: skip
    assert (evs[0].dst, evs[0].data) == (PEER, b"payload")
    assert evs[1].preferred is True
    assert evs[2].data == b"12345678"
    assert (evs[3].frame_type, evs[3].length) == (0x7F, 6)


def test_ping_lengths():
    conn = _logged_in()
    (ev,) = _events(conn, frames.encode_frame(frames.FRAME_PING, b"abcdefgh" + bytes(992)))
    assert ev.data == b"abcdefgh"
    _fails(_logged_in(), frames.encode_frame(frames.FRAME_PING, bytes(7)), "short")
    _fails(_logged_in(), frames.encode_frame(frames.FRAME_PING, bytes(1001)), "frame_too_large")


def test_note_preferred_must_be_one_byte():
    _fails(_logged_in(), frames.encode_frame(frames.FRAME_NOTE_PREFERRED, b""), "bad_length")
    _fails(_logged_in(), frames.encode_frame(frames.FRAME_NOTE_PREFERRED, b"\x01\x01"), "bad_length")


def test_mesh_only_frames_need_the_mesh_key():
    _fails(_logged_in(), frames.build_watch_conns(), "not_mesh_peer")
    _fails(_logged_in(), frames.build_close_peer(PEER), "not_mesh_peer")
    _fails(_logged_in(), frames.build_forward_packet(PEER, PEER, b"x"), "not_mesh_peer")
    conn = _logged_in(mesh=True)
    evs = _events(conn, frames.build_watch_conns() + frames.build_close_peer(PEER)
                  + frames.build_forward_packet(CLIENT.public(), PEER, b"fwd"))  # fmt: skip
    assert [type(e) for e in evs] == [ds.WatchConnsRequested, ds.ClosePeerRequested, ds.ForwardPacketReceived]
    assert evs[1].key == PEER
    assert (evs[2].src, evs[2].dst, evs[2].data) == (CLIENT.public(), PEER, b"fwd")


def test_mesh_frame_lengths_are_checked_even_for_mesh_peers():
    _fails(_logged_in(mesh=True), frames.encode_frame(frames.FRAME_WATCH_CONNS, b"x"), "bad_length")
    _fails(_logged_in(mesh=True), frames.encode_frame(frames.FRAME_CLOSE_PEER, bytes(31)), "bad_length")
    _fails(_logged_in(mesh=True), frames.encode_frame(frames.FRAME_FORWARD_PACKET, bytes(63)), "short")


def test_send_packet_limits():
    conn = _logged_in()
    (ev,) = _events(conn, frames.build_send_packet(PEER, bytes(frames.MAX_PACKET_SIZE)))
    assert len(ev.data) == frames.MAX_PACKET_SIZE
    _fails(_logged_in(), frames.encode_frame(frames.FRAME_SEND_PACKET, bytes(31)), "short")
    too_big = frames.encode_frame(frames.FRAME_SEND_PACKET, bytes(32 + frames.MAX_PACKET_SIZE + 1))
    _fails(_logged_in(), too_big, "packet_too_large")


def test_oversized_frame_is_refused_at_its_header():
    header = frames.encode_header(frames.FRAME_SEND_PACKET, frames.SERVER_MAX_FRAME_LEN + 1)
    _fails(_logged_in(), header, "frame_too_large")
    _fails(_logged_in(), frames.encode_header(0x7F, 0xFFFFFFFF), "frame_too_large")


def test_eof_between_frames_and_inside_one():
    conn = _logged_in()
    assert [type(e) for e in _events(conn, b"")] == [ds.ConnectionClosed]
    assert conn.state == ds.CLOSED and conn.next_event() is None
    conn = _logged_in()
    _events(conn, frames.build_send_packet(PEER, b"cut")[:-1])
    _fails(conn, b"", "truncated")


def test_not_draining_is_the_callers_mistake():
    conn = _logged_in()
    two = frames.build_send_packet(PEER, bytes(60000)) * 2
    conn.receive_data(two, 0)
    with pytest.raises(LocalProtocolError):
        conn.receive_data(two, 0)


# -- timers ---------------------------------------------------------------------------


def test_handshake_deadline_then_timeout():
    conn = _conn(now_ms=1000, handshake_timeout_ms=10_000)
    assert conn.next_deadline() == 11_000
    conn.handle_timer(10_999)  # not yet
    with pytest.raises(RemoteProtocolError) as e:
        conn.handle_timer(11_000)
    assert e.value.reason == "handshake_timeout"
    assert conn.state == ds.ERROR


def test_keep_alives_every_60_s_plus_a_jitter_drawn_once():
    conn = _conn()
    _events(conn, _hello(), now_ms=500)
    conn.data_to_send()
    sent = []
    now = 500
    for _ in range(20):
        deadline = conn.next_deadline()
        assert deadline is not None
        assert 60_000 <= deadline - now < 65_000
        now = deadline
        conn.handle_timer(now)
        ftype, payload = frames.decode_frame(conn.data_to_send())
        assert (ftype, payload) == (frames.FRAME_KEEP_ALIVE, b"")
        sent.append(now)
    gaps = {b - a for a, b in zip(sent, sent[1:])}
    assert len(gaps) == 1, "one period per connection, as Tailscale's ticker"
    other = ds.ServerConn(SERVER, FakeRandom(8), 0)
    _events(other, _hello())
    assert other.next_deadline() != sent[0] - 500, "connections should spread out"


def test_keep_alives_can_be_turned_off():
    conn = _conn(keep_alive_ms=0)
    _events(conn, _hello())
    assert conn.next_deadline() is None
