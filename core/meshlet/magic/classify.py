"""Which protocol a datagram on the shared UDP socket belongs to.

One UDP socket carries WireGuard, disco and STUN (disco.md §4; Tailscale's
magicsock `packetLooksLike`). Their first bytes never collide:

    WireGuard  01..04 00 00 00 ...   a type byte and three zero bytes;
               initiation 148 bytes, response 92, cookie reply 64,
               transport data at least 32 (header 16 + tag 16)
    disco      54 53 f0 9f 92 ac ...  the magic "TS💬", then sender key and
               nonce: at least 62 bytes (disco.looks_like_disco)
    STUN       00|01 01 .. .. 21 12 a4 42 ...  top two bits zero, a Binding
               method (second byte 0x01), the RFC 5389 magic cookie at 4..8,
               at least 20 bytes

so the order of the tests does not matter; WireGuard is tested first because
nearly every datagram is WireGuard transport data. Anything else is
KIND_UNKNOWN and is dropped: unlike Tailscale, which hands every leftover to
WireGuard, a datagram WireGuard would reject anyway is not passed on.
Tailscale's Geneve-wrapped peer-relay traffic (a later issue) is unknown here.

DERP addresses: WireGuard identifies a peer's endpoint by ip:port, so
magicsock gives each DERP region a fake one, 127.3.3.40:<region id>
(tailcfg.DerpMagicIP). Packets that arrive over DERP are handed to WireGuard
with that source, and WireGuard packets sent to it go out through DERP.
"""

from .._compat import const
from ..disco import looks_like_disco
from ..errors import LocalProtocolError

KIND_UNKNOWN = 0
KIND_WIREGUARD = 1
KIND_DISCO = 2
KIND_STUN = 3
KIND_NAMES = ("unknown", "wireguard", "disco", "stun")
"""For counters and logs: KIND_NAMES[kind]."""

DERP_MAGIC_IP = b"\x7f\x03\x03\x28"  # 127.3.3.40
_DERP_MAGIC_IP_MAPPED = b"\x00" * 10 + b"\xff\xff" + DERP_MAGIC_IP

_WG_INITIATION_LEN = const(148)
_WG_RESPONSE_LEN = const(92)
_WG_COOKIE_REPLY_LEN = const(64)
_WG_TRANSPORT_MIN_LEN = const(32)
_STUN_HEADER_LEN = const(20)


def kind(datagram: "bytes | bytearray") -> int:
    """KIND_WIREGUARD, KIND_DISCO, KIND_STUN or KIND_UNKNOWN, from the first bytes and the length alone."""
    n = len(datagram)
    if n < 4:
        return KIND_UNKNOWN
    first = datagram[0]
    if 1 <= first <= 4 and datagram[1] == 0 and datagram[2] == 0 and datagram[3] == 0:
        if first == 4:
            ok = n >= _WG_TRANSPORT_MIN_LEN
        elif first == 1:
            ok = n == _WG_INITIATION_LEN
        elif first == 2:
            ok = n == _WG_RESPONSE_LEN
        else:
            ok = n == _WG_COOKIE_REPLY_LEN
        return KIND_WIREGUARD if ok else KIND_UNKNOWN
    if first == 0x54:
        return KIND_DISCO if looks_like_disco(datagram) else KIND_UNKNOWN
    if (
        n >= _STUN_HEADER_LEN
        and first & 0xC0 == 0
        and datagram[1] == 0x01
        and datagram[4] == 0x21
        and datagram[5] == 0x12
        and datagram[6] == 0xA4
        and datagram[7] == 0x42
    ):
        return KIND_STUN
    return KIND_UNKNOWN


def derp_addr(region: int) -> "tuple[bytes, int]":
    """The fake endpoint 127.3.3.40:<region> that stands for DERP region `region`.

    Raises:
        LocalProtocolError("bad_region"): a region id outside 1..65535.
    """
    if not 1 <= region <= 0xFFFF:
        raise LocalProtocolError("bad_region", "DERP region %d" % region)
    return DERP_MAGIC_IP, region


def derp_region(addr: "tuple[bytes, int]") -> "int | None":
    """The DERP region an endpoint stands for, or None for a real address.

    Accepts 127.3.3.40 as 4 bytes or IPv4-mapped in 16. Port 0 is no region
    (region ids start at 1), so it is None too.
    """
    ip, port = addr
    if port and (ip == DERP_MAGIC_IP or ip == _DERP_MAGIC_IP_MAPPED):
        return port
    return None
