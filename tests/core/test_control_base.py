"""controlbase framing: the TS2021 vector of control.md §13 byte for byte, then the record layer's edges."""

from meshlet.control import base
from meshlet.errors import CryptoError, LocalProtocolError, RemoteProtocolError
from meshlet.key import MachinePrivate, MachinePublic
from meshlet_testing.raises import raises
from meshlet_testing.vectors import cases, unhex

_V = cases("ts2021")[0]
# Module-level keys: each caches its public half, which keeps the X25519 count
# (and the MicroPython run time) down.
_MACHINE = MachinePrivate(unhex(_V["machine_static_priv"]))
_MACHINE_EPH = MachinePrivate(unhex(_V["machine_ephemeral_priv"]))
_CONTROL = MachinePrivate(unhex(_V["control_static_priv"]))
_CONTROL_EPH = MachinePrivate(unhex(_V["control_ephemeral_priv"]))
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _client():
    return base.ClientHandshake(_MACHINE, _CONTROL.public(), _MACHINE_EPH, _V["version"])


def _accept(initiation):
    return base.accept_initiation(initiation, _CONTROL, _CONTROL_EPH)


def _pair():
    """(client Conn, server Conn) after the vector's handshake."""
    _, _, response, server = _accept(unhex(_V["initiation"]))
    client = _client().receive_response(response)
    assert client is not None
    return client, server


def test_keys_and_prologue():
    assert _MACHINE.public().raw == unhex(_V["machine_static_pub"])
    assert _CONTROL.public().raw == unhex(_V["control_static_pub"])
    assert base.prologue(130) == _V["prologue"].encode()
    assert len(base.prologue(130)) == 31


def test_initiation_and_header_are_the_vectors():
    hs = _client()
    assert hs.initiation() == unhex(_V["initiation"]), hs.initiation().hex()
    assert len(hs.initiation()) == base.INITIATION_LEN
    assert hs.initiation_header() == _V["handshake_header"]
    assert len(hs.initiation_header()) == 136
    assert base.decode_handshake_header(_V["handshake_header"]) == hs.initiation()


def test_server_accepts_the_initiation():
    client_key, version, response, conn = base.accept_initiation(
        unhex(_V["initiation"]), _CONTROL, _CONTROL_EPH
    )
    assert client_key == MachinePublic(unhex(_V["machine_static_pub"]))
    assert version == 130
    assert response == unhex(_V["response"]), response.hex()
    assert conn.handshake_hash == unhex(_V["handshake_hash"])
    assert conn.peer == client_key and conn.version == 130
    # The server receives with k1 and sends with k2.
    assert conn.receive_cipher.k == unhex(_V["k1"])
    assert conn.send_cipher.k == unhex(_V["k2"])


def test_client_finishes_with_the_response():
    conn = _client().receive_response(unhex(_V["response"]))
    assert conn is not None
    assert conn.handshake_hash == unhex(_V["handshake_hash"])
    assert conn.send_cipher.k == unhex(_V["k1"])
    assert conn.receive_cipher.k == unhex(_V["k2"])
    assert conn.peer == _CONTROL.public() and conn.version == 130


def test_client_records_0_and_1_use_big_endian_nonces():
    client, server = _pair()
    for rec in _V["client_records"]:
        assert client.send_cipher.n == rec["nonce"]
        out = client.send(rec["plaintext"].encode())
        assert out == unhex(rec["bytes"]), out.hex()
        server.receive_data(out)
        assert server.read() == rec["plaintext"].encode()


def test_response_arrives_byte_at_a_time():
    hs = _client()
    response = unhex(_V["response"])
    for i in range(len(response) - 1):
        assert hs.receive_response(response[i : i + 1]) is None
    conn = hs.receive_response(response[-1:])
    assert conn is not None and conn.handshake_hash == unhex(_V["handshake_hash"])
    raises(LocalProtocolError, "out_of_order", hs.receive_response, b"")


def test_bytes_after_the_response_go_into_the_conn():
    # The reference server corks the response and its first records into one write.
    _, _, response, server = _accept(unhex(_V["initiation"]))
    records = server.send(b"first") + server.send(b"second")
    conn = _client().receive_response(response + records[:30])
    assert conn is not None
    assert conn.read() == b"first"
    conn.receive_data(records[30:])
    assert conn.read() == b"second"


def test_server_error_message_reaches_the_client():
    msg = base.build_error("unexpected handshake message type")
    assert msg[:3] == b"\x03\x00\x21"
    hs = _client()
    assert hs.receive_response(msg[:10]) is None
    e = raises(RemoteProtocolError, "server_error", hs.receive_response, msg[10:])
    assert e.detail == "unexpected handshake message type"
    assert len(base.build_error("x" * 70000)) == 3 + 65535


def test_response_of_the_wrong_type_or_length():
    response = unhex(_V["response"])
    raises(RemoteProtocolError, "bad_type", _client().receive_response, b"\x04" + response[1:])
    raises(RemoteProtocolError, "bad_length", _client().receive_response, b"\x02\x00\x31")
    bad = bytearray(response)
    bad[-1] ^= 1
    raises(CryptoError, "bad_tag", _client().receive_response, bytes(bad))


def test_bad_initiations_are_refused_with_tailscales_texts():
    init = unhex(_V["initiation"])
    e = raises(RemoteProtocolError, "bad_length", _accept, init[:100])
    assert e.detail == "wrong handshake initiation size"
    e = raises(RemoteProtocolError, "bad_type", _accept, init[:2] + b"\x02" + init[3:])
    assert e.detail == "unexpected handshake message type"
    e = raises(RemoteProtocolError, "bad_length", _accept, init[:4] + b"\x61" + init[5:])
    assert e.detail == "wrong handshake initiation length"


def test_tampered_initiation_or_version_fails_authentication():
    init = bytearray(unhex(_V["initiation"]))
    init[60] ^= 1  # the encrypted machine key
    raises(CryptoError, "bad_tag", _accept, bytes(init))
    # The version is bound through the prologue: claiming 131 breaks the first tag.
    init = unhex(_V["initiation"])
    raises(CryptoError, "bad_tag", _accept, b"\x00\x83" + init[2:])


def test_handshake_header_must_be_canonical_base64():
    raises(RemoteProtocolError, "bad_base64", base.decode_handshake_header, "AAA")
    raises(RemoteProtocolError, "bad_base64", base.decode_handshake_header, _V["handshake_header"] + "\n")
    raises(RemoteProtocolError, "bad_base64", base.decode_handshake_header, "AB==")  # non-zero padding bits


def test_writes_split_at_4077_bytes():
    client, server = _pair()
    one = client.send(bytes(4077))
    assert len(one) == base.MAX_MESSAGE_LEN == 4096
    assert one[:3] == b"\x04\x0f\xfd"
    two = client.send(bytes(range(256)) * 16)  # 4096 bytes: 4077 + 19
    assert len(two) == 4096 + 3 + 19 + 16
    assert two[:3] == b"\x04\x0f\xfd" and two[4096 : 4096 + 3] == b"\x04\x00\x23"
    assert client.send_cipher.n == 3
    server.receive_data(one + two)
    assert server.read() == bytes(4077) + bytes(range(256)) * 16


def test_empty_write_sends_nothing_and_empty_record_is_accepted():
    client, server = _pair()
    assert client.send(b"") == b""
    assert client.send_cipher.n == 0
    # An explicitly empty record (a bare tag) is legal on the wire.
    empty = b"\x04\x00\x10" + client.send_cipher.encrypt_with_ad(b"", b"")
    server.receive_data(empty + client.send(b"after"))
    assert server.read() == b"after"


def test_oversize_record_is_rejected_on_its_header():
    _, server = _pair()
    # 3 + 4094 = 4097 bytes declared; refused before any of them arrive.
    raises(RemoteProtocolError, "record_too_large", server.receive_data, b"\x04\x0f\xfe")
    assert server.is_dead()
    raises(LocalProtocolError, "conn_dead", server.receive_data, b"\x00")
    _, server = _pair()
    server.receive_data(b"\x04")
    raises(RemoteProtocolError, "record_too_large", server.receive_data, b"\xff\xff")


def test_non_record_type_is_rejected():
    _, server = _pair()
    raises(RemoteProtocolError, "bad_type", server.receive_data, b"\x02\x00\x30")


def test_tampered_record_kills_the_conn():
    client, server = _pair()
    good = client.send(b"hello")
    bad = bytearray(good)
    bad[5] ^= 1
    raises(CryptoError, "bad_tag", server.receive_data, bytes(bad))
    assert server.is_dead()
    raises(LocalProtocolError, "conn_dead", server.receive_data, good)
    raises(LocalProtocolError, "conn_dead", server.read)
    raises(LocalProtocolError, "conn_dead", server.send, b"reply")


def test_record_shorter_than_a_tag_is_a_forgery():
    _, server = _pair()
    raises(CryptoError, "bad_tag", server.receive_data, b"\x04\x00\x05" + bytes(5))


def test_byte_at_a_time_equals_all_at_once():
    client, server = _pair()
    stream = client.send(b"one") + client.send(bytes(5000)) + client.send(b"three")
    for i in range(len(stream)):
        server.receive_data(stream[i : i + 1])
        assert len(server._rx) < base.MAX_MESSAGE_LEN  # never more than one record buffered
    assert server.read() == b"one" + bytes(5000) + b"three"


def test_partial_reads():
    client, server = _pair()
    server.receive_data(client.send(b"abcdef") + client.send(b"ghij"))
    assert server.pending() == 10
    assert server.read(4) == b"abcd"
    assert server.read(0) == b""
    assert server.read(4) == b"efgh"
    assert server.read(100) == b"ij"
    assert server.read() == b"" and server.pending() == 0


def test_end_of_stream():
    client, server = _pair()
    record = client.send(b"bye")
    server.receive_data(record)
    server.receive_data(b"")
    assert server.eof and server.read() == b"bye"
    raises(LocalProtocolError, "out_of_order", server.receive_data, b"more")
    _, server = _pair()
    server.receive_data(record[:5])
    raises(RemoteProtocolError, "truncated", server.receive_data, b"")


def test_send_stops_at_the_last_nonce():
    client, server = _pair()
    client.send_cipher.set_nonce(0xFFFFFFFFFFFFFFFE)
    server.receive_cipher.set_nonce(0xFFFFFFFFFFFFFFFE)
    server.receive_data(client.send(b"last"))
    assert server.read() == b"last"
    raises(LocalProtocolError, "nonce_exhausted", client.send, b"one more")
    raises(LocalProtocolError, "conn_dead", client.send, b"")


def test_early_payload_round_trip():
    client, server = _pair()
    body = b'{"nodeKeyChallenge":"chalpub:' + b"ab" * 32 + b'"}'
    framed = base.build_early_payload(body)
    assert framed[:9] == b"\xff\xff\xffTS" + len(body).to_bytes(4, "big")
    h2_settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty HTTP/2 SETTINGS frame
    client.receive_data(server.send(framed + h2_settings))
    first = client.read()
    assert base.split_early_payload(first[:8]) is None  # cannot decide yet
    assert base.split_early_payload(first[:20]) is None  # payload incomplete
    assert base.split_early_payload(first) == (body, h2_settings)


def test_no_early_payload_hands_every_byte_to_http2():
    h2_settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    assert base.split_early_payload(h2_settings) == (None, h2_settings)
    assert base.split_early_payload(b"\xff\xff\xffTX" + bytes(4)) == (None, b"\xff\xff\xffTX" + bytes(4))


def test_early_payload_over_10_mib_is_refused():
    header = b"\xff\xff\xffTS" + (10 * 1024 * 1024 + 1).to_bytes(4, "big")
    raises(RemoteProtocolError, "early_payload_too_large", base.split_early_payload, header)
