"""Telling WireGuard, disco and STUN apart on the one UDP socket (disco.md §4), and DERP's fake addresses."""

from meshlet import disco, stun
from meshlet.errors import LocalProtocolError
from meshlet.magic.classify import (
    DERP_MAGIC_IP,
    KIND_DISCO,
    KIND_NAMES,
    KIND_STUN,
    KIND_UNKNOWN,
    KIND_WIREGUARD,
    derp_addr,
    derp_region,
    kind,
)
from meshlet.wg.constants import (
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT_SIZE,
)
from meshlet.wire import parse_ip
from meshlet_testing.raises import raises


def wg(msg_type, size):
    """A WireGuard-shaped datagram: the type word, then `size - 4` bytes of filler."""
    return bytes((msg_type, 0, 0, 0)) + b"\xa5" * (size - 4)


def test_wireguard_messages_by_type_and_size():
    assert kind(wg(1, MESSAGE_INITIATION_SIZE)) == KIND_WIREGUARD
    assert kind(wg(2, MESSAGE_RESPONSE_SIZE)) == KIND_WIREGUARD
    assert kind(wg(3, MESSAGE_COOKIE_REPLY_SIZE)) == KIND_WIREGUARD
    assert kind(wg(4, MESSAGE_TRANSPORT_SIZE)) == KIND_WIREGUARD  # a keepalive
    assert kind(wg(4, 32 + 1280)) == KIND_WIREGUARD


def test_wireguard_of_the_wrong_size_or_type_is_unknown():
    assert kind(wg(1, MESSAGE_INITIATION_SIZE + 1)) == KIND_UNKNOWN
    assert kind(wg(2, MESSAGE_RESPONSE_SIZE - 1)) == KIND_UNKNOWN
    assert kind(wg(3, MESSAGE_COOKIE_REPLY_SIZE + 16)) == KIND_UNKNOWN
    assert kind(wg(4, MESSAGE_TRANSPORT_SIZE - 1)) == KIND_UNKNOWN
    assert kind(wg(5, 64)) == KIND_UNKNOWN
    assert kind(b"\x04\x00\x01\x00" + bytes(60)) == KIND_UNKNOWN  # reserved bytes not zero


def test_disco_by_its_magic():
    packet = disco.MAGIC + bytes(32) + bytes(24) + bytes(40)
    assert kind(packet) == KIND_DISCO
    assert kind(packet[: disco.HEADER_LEN]) == KIND_DISCO
    assert kind(packet[: disco.HEADER_LEN - 1]) == KIND_UNKNOWN  # no room for key and nonce
    assert kind(b"TS" + bytes(80)) == KIND_UNKNOWN


def test_stun_binding_requests_and_responses():
    request = stun.build_binding_request(bytes(range(12)))
    assert kind(request) == KIND_STUN
    response = stun.build_binding_response(stun.BindingRequest(bytes(12)), parse_ip("198.51.100.7"), 41641)
    assert kind(response) == KIND_STUN
    assert kind(request[:20]) == KIND_STUN  # a bare header is still STUN
    assert kind(request[:19]) == KIND_UNKNOWN


def test_stun_that_is_not_a_binding_or_has_no_cookie_is_unknown():
    request = bytearray(stun.build_binding_request(bytes(12)))
    allocate = bytearray(request)
    allocate[1] = 0x03  # TURN Allocate: not a method magicsock handles
    assert kind(bytes(allocate)) == KIND_UNKNOWN
    no_cookie = bytearray(request)
    no_cookie[4] = 0x00
    assert kind(bytes(no_cookie)) == KIND_UNKNOWN
    top_bits = bytearray(request)
    top_bits[0] = 0x40
    assert kind(bytes(top_bits)) == KIND_UNKNOWN


def test_tiny_and_empty_datagrams_are_unknown():
    for data in (b"", b"\x04", b"\x04\x00\x00", b"TS\xf0"):
        assert kind(data) == KIND_UNKNOWN


def test_every_kind_has_a_name():
    assert [KIND_NAMES[k] for k in (KIND_UNKNOWN, KIND_WIREGUARD, KIND_DISCO, KIND_STUN)] == [
        "unknown",
        "wireguard",
        "disco",
        "stun",
    ]


def test_derp_regions_are_127_3_3_40_with_the_region_as_port():
    assert DERP_MAGIC_IP == parse_ip("127.3.3.40")
    assert derp_addr(900) == (parse_ip("127.3.3.40"), 900)
    assert derp_region(derp_addr(1)) == 1
    assert derp_region((parse_ip("::ffff:127.3.3.40"), 12)) == 12
    assert derp_region((parse_ip("127.3.3.41"), 12)) is None
    assert derp_region((parse_ip("198.51.100.7"), 41641)) is None
    assert derp_region((DERP_MAGIC_IP, 0)) is None


def test_derp_region_ids_must_fit_a_port():
    raises(LocalProtocolError, "bad_region", derp_addr, 0)
    raises(LocalProtocolError, "bad_region", derp_addr, 65536)
