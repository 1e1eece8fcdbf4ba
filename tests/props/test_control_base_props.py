"""Properties of controlbase: random handshakes, streams cut anywhere, garbage only as ProtocolError."""

from hypothesis import given
from hypothesis import strategies as st

from meshlet.control import base
from meshlet.errors import ProtocolError
from meshlet.key import MachinePrivate
from meshlet_testing.garbage import mutations, parses_or_rejects

keys = st.binary(min_size=32, max_size=32).map(MachinePrivate)
versions = st.integers(min_value=0, max_value=0xFFFF)
chunks = st.lists(st.binary(max_size=9000), max_size=6)

# One fixed handshake for the properties that only need some Conn pair.
_M, _ME, _C, _CE = (MachinePrivate(bytes((i,)) * 32) for i in (1, 2, 3, 4))
_HS = base.ClientHandshake(_M, _C.public(), _ME)
_INITIATION = _HS.initiation()


def _pair(version: int = 130) -> "tuple[base.Conn, base.Conn]":
    hs = base.ClientHandshake(_M, _C.public(), _ME, version)
    _, _, response, server = base.accept_initiation(hs.initiation(), _C, _CE)
    client = hs.receive_response(response)
    assert client is not None
    return client, server


def _cuts(data: bytes, points: "list[int]") -> "list[bytes]":
    """`data` split at the given offsets (taken modulo its length)."""
    at = sorted({p % (len(data) + 1) for p in points})
    out, prev = [], 0
    for p in at + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def _feed(conn: base.Conn, pieces: "list[bytes]") -> bytes:
    got = bytearray()
    for piece in pieces:
        if piece:  # b"" would mean end of stream
            conn.receive_data(piece)
            got.extend(conn.read())
    return bytes(got)


@given(keys, keys, keys, keys, versions, chunks, chunks)
def test_handshake_and_records_round_trip(
    machine: MachinePrivate,
    machine_eph: MachinePrivate,
    control: MachinePrivate,
    control_eph: MachinePrivate,
    version: int,
    upstream: "list[bytes]",
    downstream: "list[bytes]",
) -> None:
    hs = base.ClientHandshake(machine, control.public(), machine_eph, version)
    init = base.decode_handshake_header(hs.initiation_header())
    client_key, got_version, response, server = base.accept_initiation(init, control, control_eph)
    assert client_key == machine.public() and got_version == version
    client = hs.receive_response(response)
    assert client is not None
    assert client.handshake_hash == server.handshake_hash
    for sender, receiver, writes in ((client, server, upstream), (server, client, downstream)):
        for data in writes:
            records = sender.send(data)
            # 19 bytes of overhead per started 4077-byte piece; nothing at all for b"".
            assert len(records) == len(data) + 19 * -(-len(data) // base.MAX_PLAINTEXT_LEN)
            if records:  # b"" would tell the receiver the stream ended
                receiver.receive_data(records)
            assert receiver.read() == data


@given(chunks, st.lists(st.integers(min_value=0), max_size=20))
def test_random_splits_decrypt_identically(writes: "list[bytes]", points: "list[int]") -> None:
    client, server = _pair()
    stream = b"".join(client.send(w) for w in writes)
    assert _feed(server, _cuts(stream, points)) == b"".join(writes)
    assert server.pending() == 0 and not server._rx


@given(
    chunks,
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=255),
    st.lists(st.integers(min_value=0), max_size=5),
)
def test_mutated_streams_never_yield_wrong_plaintext(
    writes: "list[bytes]", pos: int, value: int, points: "list[int]"
) -> None:
    client, server = _pair()
    stream = b"".join(client.send(w) for w in writes)
    data = mutations(stream, pos, value)
    got = bytearray()
    try:
        for piece in _cuts(data, points):
            if piece:
                server.receive_data(piece)
                got.extend(server.read())
    except ProtocolError:
        assert data != stream
    # Whatever came out is authentic: a prefix of what was sent.
    assert b"".join(writes).startswith(bytes(got))


@given(st.binary(max_size=5000), st.lists(st.integers(min_value=0), max_size=10))
def test_arbitrary_streams_only_raise_protocol_errors(data: bytes, points: "list[int]") -> None:
    _, server = _pair()
    pieces = _cuts(data, points) + [b""]
    for piece in pieces:
        if parses_or_rejects(server.receive_data, piece) is None and server.is_dead():
            break
    if server.is_dead():
        assert parses_or_rejects(server.read, 0) is None


@given(st.binary(max_size=120))
def test_arbitrary_initiations_only_raise_protocol_errors(data: bytes) -> None:
    assert parses_or_rejects(lambda d: base.accept_initiation(d, _C, _CE), data) is None


@given(st.binary(min_size=96, max_size=96), versions)
def test_well_framed_garbage_initiations_fail_authentication(payload: bytes, version: int) -> None:
    data = version.to_bytes(2, "big") + b"\x01\x00\x60" + payload
    assert parses_or_rejects(lambda d: base.accept_initiation(d, _C, _CE), data) is None


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_mutated_initiations_parse_or_reject(pos: int, value: int) -> None:
    data = mutations(_INITIATION, pos, value)
    got = parses_or_rejects(lambda d: base.accept_initiation(d, _C, _CE), data)
    assert (got is None) == (data != _INITIATION)


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0), max_size=5))
def test_arbitrary_responses_only_raise_protocol_errors(data: bytes, points: "list[int]") -> None:
    hs = base.ClientHandshake(_M, _C.public(), _ME)
    for piece in _cuts(data, points):
        try:
            if hs.receive_response(piece) is not None:
                break
        except ProtocolError:
            break


@given(st.binary(max_size=64))
def test_split_early_payload_decides_or_rejects(data: bytes) -> None:
    got = parses_or_rejects(base.split_early_payload, data)
    if got is not None:
        payload, rest = got
        if payload is None:
            assert rest == data
        else:
            assert data == base.build_early_payload(payload) + rest
