"""Disco, Tailscale's peer discovery protocol: the packet codec.

Two nodes find a direct UDP path by sending each other small NaCl-boxed
messages (pings, pongs, call-me-maybes) over UDP and over DERP. This module
seals, opens, builds and parses them; deciding whom to ping and which path
wins is magic/'s job. shared/protocol/disco.md has the facts (section numbers
below are its).

Outer packet (§2), the same over UDP and inside a DERP SendPacket/RecvPacket:

    6b  magic "TS💬" 54 53 f0 9f 92 ac
    32b sender's disco public key
    24b nonce
    16b Poly1305 tag      } NaCl box (XSalsa20-Poly1305) under the shared key
    n   ciphertext        } crypto_box_beforenm(peer_pub, my_priv)

Inner payload, after opening the box:

    1b  message type (TYPE_*)
    1b  version, 0 for every current type
    ... body; receivers ignore trailing bytes (Tailscale is "deliberately lax
        on longer-than-expected messages, for future compatibility")

Bodies (§3): Ping = 12b TxID [32b node key] [zero padding]; Pong = 12b TxID,
16b source IP (IPv4 v4-mapped), 2b port; CallMeMaybe = k × (16b IP, 2b port).
The peer-relay messages of §3.4 (types 0x04-0x09) are drawn at their classes.

Every address is kept as 4 or 16 bytes (`wire.ip_compact`, Go's `Unmap`) plus
an int port, and written in the 16-byte form (`wire.ip16`). Nonces and keys
are the caller's: the core has no randomness.

Relay traffic is wrapped in an 8-byte Geneve header (RFC 8926), also here
(`GeneveHeader`, `parse_geneve`) because magic/classify.py needs it:

    1b  version (2 bits, 0) | option length in 4-byte words (6 bits)
    1b  O: control packet (0x80) | C: critical options (0x40) | reserved
    2b  protocol: 0x7A11 disco, 0x7A12 WireGuard
    3b  VNI
    1b  reserved, 0
"""

from . import crypto
from ._compat import TYPE_CHECKING, const
from .errors import LocalProtocolError, RemoteProtocolError
from .key import DiscoPrivate, DiscoPublic, NodePublic
from .wire import Reader, Writer, ip16, ip_compact

if TYPE_CHECKING:
    from typing import Callable, Self, Union

    Message = Union[
        "Ping",
        "Pong",
        "CallMeMaybe",
        "BindUDPRelayEndpoint",
        "BindUDPRelayEndpointChallenge",
        "BindUDPRelayEndpointAnswer",
        "CallMeMaybeVia",
        "AllocateUDPRelayEndpointRequest",
        "AllocateUDPRelayEndpointResponse",
    ]
    Endpoint = tuple[bytes, int]
    BodyParser = Callable[[int, Reader], Message]

# Specification (disco.md §2, §3; Tailscale disco/disco.go).
MAGIC = b"TS\xf0\x9f\x92\xac"
KEY_LEN = 32
NONCE_LEN = 24
TXID_LEN = 12
CHALLENGE_LEN = 32
HEADER_LEN = 62  # magic + sender key + nonce: the shortest thing LooksLikeDiscoWrapper accepts
_TAG_LEN = const(16)
_SEALED_AT = const(38)  # the nonce starts here
_EP_LEN = const(18)  # 16-byte IP + 2-byte port
_PONG_BODY_LEN = const(30)
_BIND_BODY_LEN = const(72)
_ALLOCATE_REQUEST_BODY_LEN = const(68)
_RELAY_ENDPOINT_FIXED_LEN = const(124)  # 3 disco keys + LamportID + VNI + 2 lifetimes

TYPE_PING = 0x01
TYPE_PONG = 0x02
TYPE_CALL_ME_MAYBE = 0x03
TYPE_BIND_UDP_RELAY_ENDPOINT = 0x04
TYPE_BIND_UDP_RELAY_ENDPOINT_CHALLENGE = 0x05
TYPE_BIND_UDP_RELAY_ENDPOINT_ANSWER = 0x06
TYPE_CALL_ME_MAYBE_VIA = 0x07
TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_REQUEST = 0x08
TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_RESPONSE = 0x09

GENEVE_HEADER_LEN = 8
GENEVE_PROTOCOL_DISCO = 0x7A11
GENEVE_PROTOCOL_WIREGUARD = 0x7A12
_GENEVE_CONTROL = const(0x80)


# --- the outer packet -------------------------------------------------------


def looks_like_disco(data: "bytes | bytearray | memoryview") -> bool:
    """Tailscale's `LooksLikeDiscoWrapper`: the magic, and room for key and nonce.

    DERP servers use this test to decide whether a dropped packet earns the
    sender a PeerGone(NotHere) (derp.md §6). magicsock's own classifier
    (disco.md §4) asks only for magic + key, 38 bytes; anything shorter than
    62 fails `parse_header` anyway.
    """
    return len(data) >= HEADER_LEN and bytes(data[:6]) == MAGIC


def beforenm(my_private: DiscoPrivate, peer: DiscoPublic) -> bytes:
    """NaCl `crypto_box_beforenm`: the per-peer shared key, computed once (§1).

    Raises:
        CryptoError("low_order_point"): the peer's key is a low-order point.
    """
    return crypto.box_beforenm(peer.raw, my_private.raw_private())


def seal(shared_key: bytes, sender: DiscoPublic, nonce: bytes, message: "Message | bytes") -> bytes:
    """The whole outer packet: magic, our disco key, nonce, box of the message.

    Args:
        shared_key: `beforenm(my_private, peer_public)`.
        sender: our own disco public key (the receiver looks us up by it).
        nonce: 24 fresh random bytes from the caller.
        message: a message object, or an inner payload already encoded.
    """
    if isinstance(message, (bytes, bytearray)):
        payload = bytes(message)
    else:
        payload = message.to_bytes()
    w = Writer().raw(MAGIC).fixed(sender.raw, KEY_LEN).fixed(nonce, NONCE_LEN)
    return w.raw(crypto.secretbox_seal(shared_key, nonce, payload)).getvalue()


def parse_header(packet: bytes) -> "tuple[DiscoPublic, bytes]":
    """Splits an outer packet into the sender's disco key and the sealed part.

    The sealed part is bytes 38.. (nonce, tag, ciphertext). The caller looks
    the sender up in its netmap (unknown senders are dropped, §5) before
    spending an X25519 on it.

    Raises:
        RemoteProtocolError: "short" (not even a header and a tag) or "bad_magic".
    """
    if len(packet) < HEADER_LEN + _TAG_LEN:
        raise RemoteProtocolError("short", "%d bytes is not a disco packet" % len(packet))
    if bytes(packet[:6]) != MAGIC:
        raise RemoteProtocolError("bad_magic", "not disco")
    return DiscoPublic(packet[6:_SEALED_AT]), bytes(packet[_SEALED_AT:])


def open_payload(shared_key: bytes, packet: bytes) -> bytes:
    """Checks the header and opens the box; returns the inner payload unparsed.

    Raises:
        RemoteProtocolError: "short" or "bad_magic".
        CryptoError("bad_tag"): wrong key (a peer that restarted) or forgery.
    """
    sealed = parse_header(packet)[1]
    return crypto.secretbox_open(shared_key, sealed[:NONCE_LEN], sealed[NONCE_LEN:])


def open_message(shared_key: bytes, packet: bytes) -> "Message":
    """Opens an outer packet and parses the message inside.

    Raises:
        RemoteProtocolError: as `open_payload` and `parse`.
        CryptoError("bad_tag"): the box did not open.
    """
    return parse(open_payload(shared_key, packet))


# --- inner messages ----------------------------------------------------------


class Ping:
    """A discovery ping (0x01, §3.1).

    Attributes:
        txid: 12 random bytes, echoed in the Pong.
        node_key: the sender's node key (all clients since ~1.16 send it), or
            None. A zero key is not sent, and reads back as None, as in
            Tailscale; so a keyless ping with >= 32 bytes of padding reads
            back with 32 fewer.
        padding: zero bytes after the key, for path-MTU probing.
    """

    __slots__ = ("txid", "node_key", "padding")
    TYPE = TYPE_PING

    def __init__(self, txid: bytes, node_key: "NodePublic | None" = None, padding: int = 0) -> None:
        self.txid = txid
        self.node_key = node_key
        self.padding = padding

    def to_bytes(self) -> bytes:
        if self.padding < 0:
            raise LocalProtocolError("out_of_range", "padding %d" % self.padding)
        w = _header(TYPE_PING).fixed(self.txid, TXID_LEN)
        if self.node_key is not None and not self.node_key.is_zero():
            w.raw(self.node_key.raw)
        return w.raw(bytes(self.padding)).getvalue()

    @classmethod
    def parse_body(cls, version: int, r: Reader) -> "Ping":
        txid = r.take(TXID_LEN)
        node_key = None
        # Deliberately lax: 32 bytes after the TxID are the key, the rest padding.
        if r.remaining() >= KEY_LEN:
            raw = r.take(KEY_LEN)
            if raw != bytes(KEY_LEN):
                node_key = NodePublic(raw)
        return cls(txid, node_key, r.remaining())


class Pong:
    """The reply to a Ping (0x02, §3.2): which source address the ping came from.

    Attributes:
        txid: the ping's TxID.
        ip: 4 or 16 bytes (v4-mapped addresses are unmapped to 4).
        port: the source port. Over DERP the "address" is 127.3.3.40:<region>.
    """

    __slots__ = ("txid", "ip", "port")
    TYPE = TYPE_PONG

    def __init__(self, txid: bytes, ip: bytes, port: int) -> None:
        self.txid = txid
        self.ip = ip
        self.port = port

    def to_bytes(self) -> bytes:
        w = _header(TYPE_PONG).fixed(self.txid, TXID_LEN)
        return w.raw(ip16(self.ip)).u16(self.port).getvalue()

    @classmethod
    def parse_body(cls, version: int, r: Reader) -> "Pong":
        if r.remaining() < _PONG_BODY_LEN:
            raise RemoteProtocolError("short", "pong body of %d bytes" % r.remaining())
        txid = r.take(TXID_LEN)
        ip = ip_compact(r.take(16))
        return cls(txid, ip, r.u16())


class CallMeMaybe:
    """"Ping me back" with the sender's endpoints (0x03, §3.3); DERP only.

    Attributes:
        endpoints: list of (ip, port), ip 4 or 16 bytes. A version other
            than 0, or a body that is not a multiple of 18 bytes, parses as an
            empty list, exactly as Tailscale does.
    """

    __slots__ = ("endpoints",)
    TYPE = TYPE_CALL_ME_MAYBE

    def __init__(self, endpoints: "list[Endpoint] | None" = None) -> None:
        self.endpoints: "list[Endpoint]" = [] if endpoints is None else endpoints

    def to_bytes(self) -> bytes:
        w = _header(TYPE_CALL_ME_MAYBE)
        _write_endpoints(w, self.endpoints)
        return w.getvalue()

    @classmethod
    def parse_body(cls, version: int, r: Reader) -> "CallMeMaybe":
        if version != 0 or r.remaining() % _EP_LEN:
            return cls([])
        return cls(_read_endpoints(r))


class _BindCommon:
    """The 72-byte body shared by the three bind-handshake messages (§3.4).

        4b  VNI (u32 BE)
        4b  generation (u32 BE)
        32b remote key: the other client's disco key
        32b challenge
    """

    __slots__ = ("vni", "generation", "remote_key", "challenge")
    TYPE = 0

    def __init__(self, vni: int, generation: int, remote_key: DiscoPublic, challenge: bytes) -> None:
        self.vni = vni
        self.generation = generation
        self.remote_key = remote_key
        self.challenge = challenge

    def to_bytes(self) -> bytes:
        w = _header(self.TYPE).u32(self.vni).u32(self.generation).raw(self.remote_key.raw)
        return w.fixed(self.challenge, CHALLENGE_LEN).getvalue()

    @classmethod
    def parse_body(cls, version: int, r: Reader) -> "Self":
        if r.remaining() < _BIND_BODY_LEN:
            raise RemoteProtocolError("short", "bind body of %d bytes" % r.remaining())
        vni = r.u32()
        generation = r.u32()
        remote_key = DiscoPublic(r.take(KEY_LEN))
        return cls(vni, generation, remote_key, r.take(CHALLENGE_LEN))


class BindUDPRelayEndpoint(_BindCommon):
    """Client to relay server (0x04), Geneve-wrapped: the first bind step."""

    __slots__ = ()
    TYPE = TYPE_BIND_UDP_RELAY_ENDPOINT


class BindUDPRelayEndpointChallenge(_BindCommon):
    """Relay server to client (0x05), Geneve-wrapped: the challenge to answer."""

    __slots__ = ()
    TYPE = TYPE_BIND_UDP_RELAY_ENDPOINT_CHALLENGE


class BindUDPRelayEndpointAnswer(_BindCommon):
    """Client to relay server (0x06), Geneve-wrapped: the challenge echoed."""

    __slots__ = ()
    TYPE = TYPE_BIND_UDP_RELAY_ENDPOINT_ANSWER


class UDPRelayEndpoint:
    """A relay allocation, the body of CallMeMaybeVia (§3.4); not a message itself.

        32b server disco key
        32b client disco key 0
        32b client disco key 1
        8b  Lamport ID (u64 BE)
        4b  VNI (u32 BE)
        8b  bind lifetime, nanoseconds (u64 BE)
        8b  steady-state lifetime, nanoseconds (u64 BE)
        18b × k endpoints, k >= 1; nothing may follow them

    Attributes:
        client_disco: a tuple of exactly two DiscoPublic.
        endpoints: list of (ip, port), ip 4 or 16 bytes.
    """

    __slots__ = (
        "server_disco",
        "client_disco",
        "lamport_id",
        "vni",
        "bind_lifetime_ns",
        "steady_state_lifetime_ns",
        "endpoints",
    )

    def __init__(
        self,
        server_disco: DiscoPublic,
        client_disco: "tuple[DiscoPublic, DiscoPublic]",
        lamport_id: int,
        vni: int,
        bind_lifetime_ns: int,
        steady_state_lifetime_ns: int,
        endpoints: "list[Endpoint]",
    ) -> None:
        self.server_disco = server_disco
        self.client_disco = client_disco
        self.lamport_id = lamport_id
        self.vni = vni
        self.bind_lifetime_ns = bind_lifetime_ns
        self.steady_state_lifetime_ns = steady_state_lifetime_ns
        self.endpoints = endpoints

    def write(self, w: Writer) -> None:
        if not self.endpoints:
            raise LocalProtocolError("no_endpoints", "a relay endpoint needs an address")
        w.raw(self.server_disco.raw).raw(self.client_disco[0].raw).raw(self.client_disco[1].raw)
        w.u64(self.lamport_id).u32(self.vni)
        w.u64(self.bind_lifetime_ns).u64(self.steady_state_lifetime_ns)
        _write_endpoints(w, self.endpoints)

    @classmethod
    def read(cls, r: Reader) -> "UDPRelayEndpoint":
        n = r.remaining()
        if n < _RELAY_ENDPOINT_FIXED_LEN + _EP_LEN:
            raise RemoteProtocolError("short", "relay endpoint of %d bytes" % n)
        if (n - _RELAY_ENDPOINT_FIXED_LEN) % _EP_LEN:
            raise RemoteProtocolError("bad_length", "relay endpoint of %d bytes" % n)
        server = DiscoPublic(r.take(KEY_LEN))
        clients = (DiscoPublic(r.take(KEY_LEN)), DiscoPublic(r.take(KEY_LEN)))
        lamport_id = r.u64()
        vni = r.u32()
        bind_ns = r.u64()
        steady_ns = r.u64()
        return cls(server, clients, lamport_id, vni, bind_ns, steady_ns, _read_endpoints(r))


class CallMeMaybeVia:
    """"Meet me at this relay" (0x07), DERP only.

    Attributes:
        endpoint: the UDPRelayEndpoint.
    """

    __slots__ = ("endpoint",)
    TYPE = TYPE_CALL_ME_MAYBE_VIA

    def __init__(self, endpoint: UDPRelayEndpoint) -> None:
        self.endpoint = endpoint

    def to_bytes(self) -> bytes:
        w = _header(TYPE_CALL_ME_MAYBE_VIA)
        self.endpoint.write(w)
        return w.getvalue()

    @classmethod
    def parse_body(cls, version: int, r: Reader) -> "CallMeMaybeVia":
        _check_version(version)
        return cls(UDPRelayEndpoint.read(r))


class AllocateUDPRelayEndpointRequest:
    """Ask a relay server for an endpoint (0x08), DERP only.

        32b client disco key 0
        32b client disco key 1
        4b  generation (u32 BE)
    """

    __slots__ = ("client_disco", "generation")
    TYPE = TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_REQUEST

    def __init__(self, client_disco: "tuple[DiscoPublic, DiscoPublic]", generation: int) -> None:
        self.client_disco = client_disco
        self.generation = generation

    def to_bytes(self) -> bytes:
        w = _header(TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_REQUEST)
        w.raw(self.client_disco[0].raw).raw(self.client_disco[1].raw)
        return w.u32(self.generation).getvalue()

    @classmethod
    def parse_body(cls, version: int, r: Reader) -> "AllocateUDPRelayEndpointRequest":
        _check_version(version)
        if r.remaining() < _ALLOCATE_REQUEST_BODY_LEN:
            raise RemoteProtocolError("short", "allocate request of %d bytes" % r.remaining())
        clients = (DiscoPublic(r.take(KEY_LEN)), DiscoPublic(r.take(KEY_LEN)))
        return cls(clients, r.u32())


class AllocateUDPRelayEndpointResponse:
    """The relay server's answer (0x09), DERP only: 4b generation, then a UDPRelayEndpoint."""

    __slots__ = ("generation", "endpoint")
    TYPE = TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_RESPONSE

    def __init__(self, generation: int, endpoint: UDPRelayEndpoint) -> None:
        self.generation = generation
        self.endpoint = endpoint

    def to_bytes(self) -> bytes:
        w = _header(TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_RESPONSE).u32(self.generation)
        self.endpoint.write(w)
        return w.getvalue()

    @classmethod
    def parse_body(cls, version: int, r: Reader) -> "AllocateUDPRelayEndpointResponse":
        _check_version(version)
        generation = r.u32()
        return cls(generation, UDPRelayEndpoint.read(r))


_BY_TYPE: "dict[int, BodyParser]" = {
    TYPE_PING: Ping.parse_body,
    TYPE_PONG: Pong.parse_body,
    TYPE_CALL_ME_MAYBE: CallMeMaybe.parse_body,
    TYPE_BIND_UDP_RELAY_ENDPOINT: BindUDPRelayEndpoint.parse_body,
    TYPE_BIND_UDP_RELAY_ENDPOINT_CHALLENGE: BindUDPRelayEndpointChallenge.parse_body,
    TYPE_BIND_UDP_RELAY_ENDPOINT_ANSWER: BindUDPRelayEndpointAnswer.parse_body,
    TYPE_CALL_ME_MAYBE_VIA: CallMeMaybeVia.parse_body,
    TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_REQUEST: AllocateUDPRelayEndpointRequest.parse_body,
    TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_RESPONSE: AllocateUDPRelayEndpointResponse.parse_body,
}


def parse(payload: bytes) -> "Message":
    """Parses an inner payload (what `open_payload` returns).

    Tailscale ignores the version byte of Ping, Pong and the bind messages;
    CallMeMaybe with another version is empty; for 0x07-0x09 Tailscale returns
    an empty message, which we report as "unknown_version" instead.

    Raises:
        RemoteProtocolError: "short", "unknown_type", "unknown_version" or
            "bad_length" (a relay endpoint list that is not a multiple of 18).
    """
    r = Reader(payload)
    if r.remaining() < 2:
        raise RemoteProtocolError("short", "no message header")
    msg_type = r.u8()
    version = r.u8()
    parse_body = _BY_TYPE.get(msg_type)
    if parse_body is None:
        raise RemoteProtocolError("unknown_type", "0x%02x" % msg_type)
    return parse_body(version, r)


def _header(msg_type: int) -> Writer:
    return Writer().u8(msg_type).u8(0)


def _check_version(version: int) -> None:
    if version != 0:
        raise RemoteProtocolError("unknown_version", "version %d" % version)


def _write_endpoints(w: Writer, endpoints: "list[Endpoint]") -> None:
    for ip, port in endpoints:
        w.raw(ip16(ip)).u16(port)


def _read_endpoints(r: Reader) -> "list[Endpoint]":
    out = []
    while r.remaining():
        ip = ip_compact(r.take(16))
        out.append((ip, r.u16()))
    return out


# --- Geneve (RFC 8926), the wrapper around peer-relay traffic -----------------


class GeneveHeader:
    """The fixed 8-byte Geneve header Tailscale puts before relayed packets.

    Attributes:
        protocol: GENEVE_PROTOCOL_DISCO or GENEVE_PROTOCOL_WIREGUARD.
        vni: the 24-bit virtual network identifier the relay allocated.
        control: the O bit, set on the bind-handshake disco messages.
        version: 0; 2 bits on the wire.
    """

    __slots__ = ("protocol", "vni", "control", "version")

    def __init__(self, protocol: int, vni: int, control: bool = False, version: int = 0) -> None:
        self.protocol = protocol
        self.vni = vni
        self.control = control
        self.version = version

    def to_bytes(self) -> bytes:
        if not 0 <= self.version <= 3 or not 0 <= self.vni <= 0xFFFFFF:
            raise LocalProtocolError("out_of_range", "version %d, VNI %d" % (self.version, self.vni))
        w = Writer().u8(self.version << 6).u8(_GENEVE_CONTROL if self.control else 0)
        return w.u16(self.protocol).u32(self.vni << 8).getvalue()


def parse_geneve(data: bytes) -> GeneveHeader:
    """Decodes the fixed header as Tailscale's `GeneveHeader.Decode` does.

    Like Tailscale it checks nothing but the length: options, reserved bits
    and unknown protocols are the classifier's business (disco.md §4).

    Raises:
        RemoteProtocolError("short"): fewer than 8 bytes.
    """
    r = Reader(data)
    if r.remaining() < GENEVE_HEADER_LEN:
        raise RemoteProtocolError("short", "geneve header of %d bytes" % r.remaining())
    version = r.u8() >> 6
    control = r.u8() & _GENEVE_CONTROL != 0
    protocol = r.u16()
    return GeneveHeader(protocol, r.u32() >> 8, control, version)
