"""Keypairs: padding, unpadding, counters, and the previous/current/next rotation."""

from meshlet.errors import RemoteProtocolError
from meshlet.wg.session import Keypair, Keypairs, padding_len, unpad
from meshlet_testing.pair import A_IP4, A_IP6, B_IP4, B_IP6, ipv4_packet, ipv6_packet
from meshlet_testing.raises import raises


def test_padding_to_16_within_the_mtu():
    # wireguard-go's calculatePaddingSize.
    assert [padding_len(n, 1420) for n in (0, 1, 15, 16, 17, 1400, 1419, 1420)] == [0, 15, 1, 0, 15, 8, 1, 0]
    assert padding_len(1404, 1420) == 4  # 1408, a multiple of 16, fits
    assert padding_len(1418, 1420) == 2  # would be 1424 > MTU: pad to the MTU only
    assert padding_len(1510, 1420) == 6  # larger than the MTU: the last unit (90) is padded
    assert padding_len(17, 0) == 15  # no MTU known


def test_unpad_uses_the_ip_length():
    p4 = ipv4_packet(A_IP4, B_IP4, b"abc")
    assert unpad(p4 + bytes(9)) == p4
    assert unpad(p4) is p4  # nothing to cut, nothing copied
    p6 = ipv6_packet(A_IP6, B_IP6, b"abcdef")
    assert unpad(p6 + bytes(2)) == p6


def test_unpad_rejects_nonsense():
    raises(RemoteProtocolError, "bad_ip_version", unpad, b"\x50" + bytes(30))
    raises(RemoteProtocolError, "bad_ip_version", unpad, b"")
    raises(RemoteProtocolError, "bad_ip_length", unpad, b"\x45" + bytes(10))
    raises(RemoteProtocolError, "bad_ip_length", unpad, b"\x60" + bytes(30))
    p4 = bytearray(ipv4_packet(A_IP4, B_IP4, b"abc"))
    p4[3] += 1  # claims one byte more than there is
    raises(RemoteProtocolError, "bad_ip_length", unpad, bytes(p4))


def _kp(initiator, n):
    return Keypair(bytes((n,)) * 32, bytes((n + 1,)) * 32, initiator, n, n + 100, 0, None)


def test_counters_and_header():
    kp = _kp(True, 1)
    a = kp.encrypt(b"", 1420)
    b = kp.encrypt(b"", 1420)
    assert a[:16] == bytes((4, 0, 0, 0, 101, 0, 0, 0)) + bytes(8)
    assert b[8:16] == bytes((1,)) + bytes(7)
    assert kp.send_counter == 2


def test_initiator_keypair_is_current_at_once():
    kps = Keypairs()
    k1, k2 = _kp(True, 1), _kp(True, 2)
    assert kps.install(k1) == []
    assert (kps.previous, kps.current, kps.next) == (None, k1, None)
    assert kps.install(k2) == []
    assert (kps.previous, kps.current, kps.next) == (k1, k2, None)
    k3 = _kp(True, 3)
    assert kps.install(k3) == [k1]
    assert (kps.previous, kps.current, kps.next) == (k2, k3, None)


def test_responder_keypair_waits_in_next_until_confirmed():
    kps = Keypairs()
    k1, k2, k3 = _kp(True, 1), _kp(True, 2), _kp(False, 3)
    kps.install(k1)
    kps.install(k2)
    assert kps.install(k3) == [k1]  # previous dropped, current kept
    assert (kps.previous, kps.current, kps.next) == (None, k2, k3)
    assert kps.confirm(k2) is None  # not next: nothing happens
    assert kps.confirm(k3) is None  # no previous to retire
    assert (kps.previous, kps.current, kps.next) == (k2, k3, None)


def test_initiator_keypair_over_an_unconfirmed_next():
    kps = Keypairs()
    k1, k2, k3 = _kp(True, 1), _kp(False, 2), _kp(True, 3)
    kps.install(k1)
    kps.install(k2)
    assert kps.install(k3) == [k1]  # the old current goes, the unconfirmed next becomes previous
    assert (kps.previous, kps.current, kps.next) == (k2, k3, None)
    assert kps.clear() == [k2, k3]
    assert kps.all() == []
