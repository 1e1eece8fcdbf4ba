"""STUN Binding requests and responses (RFC 5389), the subset Tailscale uses.

A node learns its public `ip:port` by sending a Binding request from its one
UDP socket (the one WireGuard and disco share) to a STUN server; the server
answers with the source address it saw. shared/protocol/stun.md has the facts.

Header, 20 bytes, big-endian:

    2b  message type, top two bits zero (0x0001 request, 0x0101 success)
    2b  length of the attributes that follow (a multiple of 4)
    4b  magic cookie 21 12 a4 42
    12b transaction ID

then attributes: 2b type, 2b value length, value, zero padding to 4 bytes.

What we send is exactly Tailscale's 40-byte request (SOFTWARE "tailnode" then
FINGERPRINT), because Tailscale's derper ignores anything else. What we accept
as a server is wider: any well-formed RFC 5389 request, and RFC 3489 "classic"
requests (no magic cookie, a 16-byte transaction ID) so that older tools such
as Debian's `stun` client get an answer too. Their answer carries
MAPPED-ADDRESS, the only address attribute RFC 3489 knows.
"""

import binascii

from ._compat import const
from .errors import LocalProtocolError, RemoteProtocolError
from .wire import Reader, Writer, ip_compact

_HEADER_LEN = const(20)
TXID_LEN = 12
MAGIC_COOKIE = b"\x21\x12\xa4\x42"

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101

ATTR_MAPPED_ADDRESS = 0x0001
ATTR_CHANGE_REQUEST = 0x0003  # RFC 3489 / RFC 5780: "answer from another IP or port"
ATTR_SOURCE_ADDRESS = 0x0004  # RFC 3489 only
ATTR_CHANGED_ADDRESS = 0x0005  # RFC 3489 only
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_XOR_MAPPED_ADDRESS_OLD = 0x8020  # the number used before RFC 5389
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028

SOFTWARE_TAILNODE = b"tailnode"
_FINGERPRINT_XOR = const(0x5354554E)
_CHANGE_IP_OR_PORT = const(0x06)  # CHANGE-REQUEST flags: 0x04 change IP, 0x02 change port
_FAMILY_IPV4 = const(1)
_FAMILY_IPV6 = const(2)


class BindingRequest:
    """A parsed Binding request.

    Attributes:
        txid: 12 bytes for RFC 5389; 16 bytes (cookie position included) for
            an RFC 3489 classic request.
        classic: True for an RFC 3489 request (no magic cookie).
        software: the SOFTWARE attribute's value, or None.
        change_request: True when CHANGE-REQUEST asks for the answer to come
            from another IP or port. A server with one socket cannot do that
            and must not answer from the same address instead, or an RFC 3489
            client behind a NAT would conclude it has a full-cone NAT.
    """

    __slots__ = ("txid", "classic", "software", "change_request")

    def __init__(
        self, txid: bytes, classic: bool = False, software: "bytes | None" = None, change_request: bool = False
    ) -> None:
        self.txid = txid
        self.classic = classic
        self.software = software
        self.change_request = change_request

    def is_tailscale(self) -> bool:
        return not self.classic and self.software == SOFTWARE_TAILNODE


class BindingResponse:
    """A parsed Binding success response: our reflexive address as the server saw it.

    Attributes:
        txid: the transaction ID, to match against requests in flight.
        ip: 4 or 16 bytes (IPv4-mapped IPv6 is unmapped to 4).
        port: the UDP port.
    """

    __slots__ = ("txid", "ip", "port")

    def __init__(self, txid: bytes, ip: bytes, port: int) -> None:
        self.txid = txid
        self.ip = ip
        self.port = port


def is_stun(data: bytes) -> bool:
    """Tailscale's cheap test (`stun.Is`): long enough, top bits clear, cookie present."""
    return len(data) >= _HEADER_LEN and data[0] & 0xC0 == 0 and data[4:8] == MAGIC_COOKIE


def build_binding_request(txid: bytes) -> bytes:
    """The 40-byte request Tailscale clients send and Tailscale servers insist on."""
    w = Writer().u16(BINDING_REQUEST).u16(20).raw(MAGIC_COOKIE).fixed(txid, TXID_LEN)
    w.u16(ATTR_SOFTWARE).u16(len(SOFTWARE_TAILNODE)).raw(SOFTWARE_TAILNODE)
    return _append_fingerprint(w)


def parse_binding_request(data: bytes) -> BindingRequest:
    """Accepts RFC 5389 and RFC 3489 Binding requests.

    Raises:
        RemoteProtocolError: "short", "not_stun", "bad_type", "bad_attribute"
            or "bad_fingerprint".
    """
    r = Reader(data)
    msg_type, length = _header(r)
    if msg_type != BINDING_REQUEST:
        raise RemoteProtocolError("bad_type", "0x%04x is not a Binding request" % msg_type)
    classic = data[4:8] != MAGIC_COOKIE
    txid = bytes(data[4:20]) if classic else bytes(data[8:20])
    software = None
    change = False
    for attr, value, at in _attributes(data, length):
        if attr == ATTR_SOFTWARE:
            software = value
        elif attr == ATTR_CHANGE_REQUEST:
            change = len(value) == 4 and value[3] & _CHANGE_IP_OR_PORT != 0
        elif attr == ATTR_FINGERPRINT:
            _check_fingerprint(data, at, value)
    return BindingRequest(txid, classic, software, change)


def build_binding_response(request: BindingRequest, ip: bytes, port: int) -> bytes:
    """The success response telling the requester its source `ip:port`.

    RFC 5389 requests get XOR-MAPPED-ADDRESS only, byte for byte what
    Tailscale's server sends; RFC 3489 requests get MAPPED-ADDRESS.
    """
    if request.classic:
        attr, value = ATTR_MAPPED_ADDRESS, _address_value(ip, port, None)
        txid_field = request.txid
    else:
        attr, value = ATTR_XOR_MAPPED_ADDRESS, _address_value(ip, port, MAGIC_COOKIE + request.txid)
        txid_field = MAGIC_COOKIE + request.txid
    w = Writer().u16(BINDING_SUCCESS).u16(4 + len(value)).fixed(txid_field, 16)
    return w.u16(attr).u16(len(value)).raw(value).getvalue()


def parse_binding_response(data: bytes) -> BindingResponse:
    """Extracts the reflexive address, preferring XOR-MAPPED-ADDRESS as Tailscale does.

    Bytes beyond the header's length are ignored; unknown attributes are skipped.

    Raises:
        RemoteProtocolError: "short", "not_stun", "bad_type", "bad_attribute",
            "bad_family" or "no_address".
    """
    r = Reader(data)
    msg_type, length = _header(r)
    if data[4:8] != MAGIC_COOKIE:
        raise RemoteProtocolError("not_stun", "no magic cookie")
    if msg_type != BINDING_SUCCESS:
        raise RemoteProtocolError("bad_type", "0x%04x is not a Binding success" % msg_type)
    txid = bytes(data[8:20])
    xored = plain = None
    for attr, value, _ in _attributes(data, length):
        if attr == ATTR_XOR_MAPPED_ADDRESS or attr == ATTR_XOR_MAPPED_ADDRESS_OLD:
            if xored is None:
                xored = value
        elif attr == ATTR_MAPPED_ADDRESS and plain is None:
            plain = value
    if xored is not None:
        ip, port = _parse_address(xored, MAGIC_COOKIE + txid)
    elif plain is not None:
        ip, port = _parse_address(plain, None)
    else:
        raise RemoteProtocolError("no_address", "no (XOR-)MAPPED-ADDRESS attribute")
    return BindingResponse(txid, ip, port)


def _header(r: Reader) -> "tuple[int, int]":
    """Reads the type and length and checks the invariants both directions share."""
    if r.remaining() < _HEADER_LEN:
        raise RemoteProtocolError("short", "%d bytes is less than a STUN header" % r.remaining())
    msg_type = r.u16()
    length = r.u16()
    if msg_type & 0xC000:
        raise RemoteProtocolError("not_stun", "top bits of the type are set")
    if length & 3 or _HEADER_LEN + length > r.end:
        raise RemoteProtocolError("bad_attribute", "length %d does not fit" % length)
    return msg_type, length


def _attributes(data: bytes, length: int) -> "list[tuple[int, bytes, int]]":
    """(type, value, offset of the attribute) for each TLV, padding checked."""
    r = Reader(data, _HEADER_LEN, _HEADER_LEN + length)
    out = []
    while r.remaining():
        at = r.pos
        if r.remaining() < 4:
            raise RemoteProtocolError("bad_attribute", "truncated attribute header")
        attr = r.u16()
        n = r.u16()
        padded = (n + 3) & ~3
        if padded > r.remaining():
            raise RemoteProtocolError("bad_attribute", "attribute 0x%04x overruns" % attr)
        value = r.take(n)
        r.skip(padded - n)
        out.append((attr, value, at))
    return out


def _fingerprint(data: "bytes | bytearray") -> int:
    return (binascii.crc32(data) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF


def _append_fingerprint(w: Writer) -> bytes:
    # The CRC covers everything before the attribute, while the header's
    # length already counts it (RFC 5389 §15.5).
    crc = _fingerprint(w.buf)
    return w.u16(ATTR_FINGERPRINT).u16(4).u32(crc).getvalue()


def _check_fingerprint(data: bytes, at: int, value: bytes) -> None:
    if len(value) != 4 or at + 8 != _HEADER_LEN + ((data[2] << 8) | data[3]):
        raise RemoteProtocolError("bad_fingerprint", "FINGERPRINT must be last and 4 bytes")
    if int.from_bytes(value, "big") != _fingerprint(data[:at]):
        raise RemoteProtocolError("bad_fingerprint", "CRC mismatch")


def _address_value(ip: bytes, port: int, xor_key: "bytes | None") -> bytes:
    if len(ip) == 4:
        family = _FAMILY_IPV4
    elif len(ip) == 16:
        family = _FAMILY_IPV6
    else:
        raise LocalProtocolError("bad_ip", "address of %d bytes" % len(ip))
    if xor_key is not None:
        port ^= 0x2112
        ip = _xor(ip, xor_key)
    return Writer().u8(0).u8(family).u16(port).raw(ip).getvalue()


def _parse_address(value: bytes, xor_key: "bytes | None") -> "tuple[bytes, int]":
    r = Reader(value)
    r.skip(1)
    family = r.u8()
    port = r.u16()
    if family == _FAMILY_IPV4:
        ip = r.take(4)
    elif family == _FAMILY_IPV6:
        ip = r.take(16)
    else:
        raise RemoteProtocolError("bad_family", "address family %d" % family)
    if xor_key is not None:
        port ^= 0x2112
        ip = _xor(ip, xor_key)
    if len(ip) == 16:
        ip = ip_compact(ip)
    return ip, port


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(a[i] ^ b[i] for i in range(len(a)))
