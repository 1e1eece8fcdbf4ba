"""ServerConn keeps h11's invariant: whatever a client sends, it yields events or raises RemoteProtocolError.

(CryptoError is a RemoteProtocolError.) Random bytes before login, random
bytes after a valid login, and valid streams cut into random pieces.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet.derp import frames, login
from meshlet.derp import server as ds
from meshlet.errors import RemoteProtocolError
from meshlet.key import NodePrivate
from meshlet_testing.rand import FakeRandom

SERVER = NodePrivate(b"\x06" * 32)
CLIENT = NodePrivate(b"\x05" * 32)
MESH = bytes(range(32))
HELLO = login.build_client_info(CLIENT, SERVER.public(), bytes(24), {"version": 2, "CanAckPings": True})


def _feed(conn: ds.ServerConn, chunks: "list[bytes]") -> None:
    try:
        for chunk in chunks + [b""]:
            conn.receive_data(chunk, 0)
            while conn.next_event() is not None:
                pass
    except RemoteProtocolError:
        assert conn.state == ds.ERROR


@given(st.lists(st.binary(max_size=200), max_size=8))
def test_garbage_before_login(chunks: "list[bytes]") -> None:
    _feed(ds.ServerConn(SERVER, FakeRandom(1), 0, mesh_key=MESH), chunks)


@given(st.lists(st.binary(max_size=200), max_size=8), st.booleans())
def test_garbage_after_login(chunks: "list[bytes]", mesh: bool) -> None:
    conn = ds.ServerConn(SERVER, FakeRandom(1), 0, mesh_key=MESH)
    info = {"version": 2, "meshKey": MESH.hex()} if mesh else {"version": 2}
    _feed(conn, [login.build_client_info(CLIENT, SERVER.public(), bytes(24), info)] + chunks)


frame_types = st.sampled_from([0x04, 0x07, 0x0A, 0x10, 0x11, 0x12, 0x13, 0x02, 0x7F])


@given(st.lists(st.tuples(frame_types, st.binary(max_size=80)), max_size=10), st.data())
@settings(max_examples=200)
def test_well_framed_random_payloads_cut_anywhere(
    body: "list[tuple[int, bytes]]", data: st.DataObject
) -> None:
    stream = HELLO + b"".join(frames.encode_frame(t, p) for t, p in body)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    _feed(ds.ServerConn(SERVER, FakeRandom(1), 0, mesh_key=MESH), pieces)


@given(st.integers(0, 200_000))
def test_timers_never_raise_anything_else(now_ms: int) -> None:
    conn = ds.ServerConn(SERVER, FakeRandom(1), 0)
    try:
        conn.handle_timer(now_ms)
    except RemoteProtocolError as e:
        assert e.reason == "handshake_timeout"
