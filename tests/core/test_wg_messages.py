"""WireGuard message codecs: exact sizes, little-endian fields, strict lengths (wireguard.md §2)."""

from meshlet.errors import RemoteProtocolError
from meshlet.wg.messages import (
    MessageCookieReply,
    MessageInitiation,
    MessageResponse,
    MessageTransport,
    message_type,
)
from meshlet_testing.raises import raises
from meshlet_testing.vectors import unhex


def _fill(n, byte):
    return bytes((byte,)) * n


def test_initiation_layout():
    m = MessageInitiation(
        0x04030201, _fill(32, 0xE0), _fill(48, 0x5A), _fill(28, 0x7E), _fill(16, 0x01), _fill(16, 0x02)
    )
    data = m.to_bytes()
    assert len(data) == 148
    assert data[:8] == unhex("01 00 00 00  01 02 03 04")  # type, reserved, sender little-endian
    assert data[8:40] == _fill(32, 0xE0)
    assert data[40:88] == _fill(48, 0x5A)
    assert data[88:116] == _fill(28, 0x7E)
    assert data[116:132] == _fill(16, 0x01)
    assert data[132:148] == _fill(16, 0x02)
    back = MessageInitiation.parse(data)
    assert back.sender == 0x04030201 and back.mac2 == _fill(16, 0x02)


def test_response_layout():
    m = MessageResponse(0x0A0B0C0D, 0x01020304, _fill(32, 0xEE), _fill(16, 0x99))
    data = m.to_bytes()
    assert len(data) == 92
    assert data[:12] == unhex("02 00 00 00  0d 0c 0b 0a  04 03 02 01")
    assert data[12:44] == _fill(32, 0xEE)
    assert data[44:60] == _fill(16, 0x99)
    assert data[60:92] == bytes(32)  # macs default to zero
    back = MessageResponse.parse(data)
    assert (back.sender, back.receiver) == (0x0A0B0C0D, 0x01020304)


def test_cookie_reply_layout():
    data = MessageCookieReply(7, _fill(24, 0x24), _fill(32, 0x32)).to_bytes()
    assert len(data) == 64
    assert data[:8] == unhex("03 00 00 00  07 00 00 00")
    assert data[8:32] == _fill(24, 0x24) and data[32:] == _fill(32, 0x32)
    assert MessageCookieReply.parse(data).receiver == 7


def test_transport_layout():
    data = MessageTransport(0x11223344, 0x0102030405060708, _fill(16, 0xAA)).to_bytes()
    assert data[:16] == unhex("04 00 00 00  44 33 22 11  08 07 06 05 04 03 02 01")
    assert len(data) == 32  # a keepalive: header and tag
    back = MessageTransport.parse(data)
    assert (back.receiver, back.counter, back.content) == (0x11223344, 0x0102030405060708, _fill(16, 0xAA))


def test_sizes_are_exact():
    init = MessageInitiation(1, bytes(32), bytes(48), bytes(28)).to_bytes()
    raises(RemoteProtocolError, "short", MessageInitiation.parse, init[:147])
    raises(RemoteProtocolError, "trailing", MessageInitiation.parse, init + b"\x00")
    resp = MessageResponse(1, 2, bytes(32), bytes(16)).to_bytes()
    raises(RemoteProtocolError, "short", MessageResponse.parse, resp[:91])
    raises(RemoteProtocolError, "trailing", MessageResponse.parse, resp + b"\x00")
    cookie = MessageCookieReply(1, bytes(24), bytes(32)).to_bytes()
    raises(RemoteProtocolError, "short", MessageCookieReply.parse, cookie[:63])
    raises(RemoteProtocolError, "trailing", MessageCookieReply.parse, cookie + b"\x00")
    raises(RemoteProtocolError, "short", MessageTransport.parse, MessageTransport(1, 2, bytes(16)).to_bytes()[:31])


def test_type_word_includes_the_reserved_bytes():
    init = bytearray(MessageInitiation(1, bytes(32), bytes(48), bytes(28)).to_bytes())
    init[3] = 1  # reserved byte set: no longer type 1, as in wireguard-go
    raises(RemoteProtocolError, "bad_type", MessageInitiation.parse, bytes(init))
    assert message_type(bytes(init)) == 0x01000001
    cookie_sized_as_response = MessageCookieReply(1, bytes(24), bytes(32)).to_bytes() + bytes(28)
    raises(RemoteProtocolError, "bad_type", MessageResponse.parse, cookie_sized_as_response)
    raises(RemoteProtocolError, "short", message_type, b"\x04\x00\x00")
