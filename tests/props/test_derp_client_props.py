"""Properties of the DERP client connection: whatever the server sends, only RemoteProtocolError escapes.

h11's fuzz invariant applied to the stream entry point: random bytes, a
valid server script with bytes mutated, inserted or cut off, each fed in
random chunks, either run to the end or raise a RemoteProtocolError (after
which the connection refuses more input). Never a LocalProtocolError, which
would be a bug in the client, and never anything else. What the client
writes back is always whole frames, and any chunking of a valid script
gives the same events.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from meshlet.derp import frames, login
from meshlet.derp.client import ClientConn
from meshlet.errors import LocalProtocolError, RemoteProtocolError
from meshlet.key import NodePrivate, NodePublic
from meshlet_testing.garbage import mutations
from meshlet_testing.rand import FakeRandom

_CLIENT = NodePrivate(b"\x05" * 32)
_SERVER = NodePrivate(b"\x06" * 32)
_PEER = NodePublic(bytes(range(32)))
_HTTP_101 = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"


def _script() -> bytes:
    info = {"version": 2, "TokenBucketBytesPerSecond": 100_000, "TokenBucketBytesBurst": 10_000}
    return (
        _HTTP_101
        + login.build_server_key(_SERVER.public())
        + login.build_server_info(_SERVER, _CLIENT.public(), bytes(24), info)
        + frames.build_recv_packet(_PEER, b"hello")
        + frames.build_ping(b"12345678")
        + frames.build_keep_alive()
        + frames.build_peer_gone(_PEER, frames.PEER_GONE_NOT_HERE)
        + frames.build_peer_present(_PEER, b"\x0a\x00\x00\x01", 1, 1)
        + frames.build_health("x")
        + frames.build_restarting(5, 6)
        + frames.build_pong(bytes(8))
        + frames.encode_frame(0x30, b"unknown")
    )


_SCRIPT = _script()


def _chunks(data: bytes, cuts: "list[int]") -> "list[bytes]":
    points = sorted({c % (len(data) + 1) for c in cuts})
    out = []
    at = 0
    for p in points + [len(data)]:
        out.append(data[at:p])
        at = p
    return [c for c in out if c]


def _feed(chunks: "list[bytes]", eof: bool = True, **kwargs: object) -> "tuple[ClientConn, list[str], bytes]":
    """Runs the chunks through a fresh client; returns it, its event reprs and what it wrote."""
    conn = ClientConn(_CLIENT, FakeRandom(1), 0, preferred=True, **kwargs)  # type: ignore[arg-type]
    conn.connect("derp.test")
    out = conn.data_to_send()
    events: "list[str]" = []
    now = 0
    try:
        for chunk in chunks + ([b""] if eof else []):
            now += 1
            conn.receive_data(chunk, now)
            out += conn.data_to_send()
            conn.send_packet(_PEER, b"data", now)
            out += conn.data_to_send()
            while (ev := conn.next_event()) is not None:
                events.append(repr(ev))
    except LocalProtocolError as e:  # pragma: no cover - a failure of the property
        raise AssertionError("LocalProtocolError escaped: %r" % e) from None
    except RemoteProtocolError:
        assert conn.state() == "failed"
        assert conn.next_deadline() is None
        try:
            conn.receive_data(b"x", now)
        except LocalProtocolError as e:
            assert e.reason == "conn_dead"
        else:  # pragma: no cover
            raise AssertionError("a failed connection accepted more input")
        events.append("failed")
    return conn, events, out


def _whole_frames(out: bytes) -> None:
    upgrade = out.index(b"\r\n\r\n") + 4
    reader = frames.FrameReader()
    reader.feed(out[upgrade:])
    while reader.next_frame() is not None:
        pass
    assert reader.buffered() == 0


@settings(max_examples=300)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=8))
def test_random_bytes_only_raise_remote_errors(data: bytes, cuts: "list[int]") -> None:
    _, _, out = _feed(_chunks(data, cuts))
    _whole_frames(out)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=8))
def test_random_frames_after_the_login_only_raise_remote_errors(data: bytes, cuts: "list[int]") -> None:
    login_bytes = _SCRIPT[: _SCRIPT.index(frames.build_recv_packet(_PEER, b"hello"))]
    _, events, out = _feed([login_bytes] + _chunks(data, cuts), max_frame_len=1000)
    assert events[0].startswith("Connected(")
    _whole_frames(out)


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=4
    ),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_mutated_scripts_only_raise_remote_errors(edits: "list[tuple[int, int]]", cuts: "list[int]") -> None:
    data = _SCRIPT
    for position, value in edits:
        data = mutations(data, position, value)
    _, _, out = _feed(_chunks(data, cuts))
    _whole_frames(out)


@settings(max_examples=200)
@given(
    st.integers(min_value=0),
    st.binary(min_size=1, max_size=20),
    st.lists(st.integers(min_value=0), max_size=8),
)
def test_inserted_and_truncated_scripts_only_raise_remote_errors(
    at: int, extra: bytes, cuts: "list[int]"
) -> None:
    i = at % (len(_SCRIPT) + 1)
    _feed(_chunks(_SCRIPT[:i] + extra + _SCRIPT[i:], cuts))
    _, events, _ = _feed(_chunks(_SCRIPT[:i], cuts))
    if i < len(_SCRIPT):
        assert events[-1] in ("failed", "ConnectionClosed()")


_WHOLE = _feed([_SCRIPT])


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0), max_size=40))
def test_any_chunking_of_a_valid_script_gives_the_same_events(cuts: "list[int]") -> None:
    _, events, out = _feed(_chunks(_SCRIPT, cuts))
    assert events == _WHOLE[1]
    assert events[-1] == "ConnectionClosed()"
    _whole_frames(out)
