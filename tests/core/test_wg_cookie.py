"""mac1, mac2 and cookie replies (whitepaper §5.4.4, §5.4.7), alone and between two devices."""

from meshlet import crypto
from meshlet.errors import CryptoError, RemoteProtocolError
from meshlet.wg.cookie import CookieChecker, CookieGenerator, LoadMonitor, source_bytes
from meshlet.wg.messages import INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET, MessageCookieReply
from meshlet_testing.pair import A_ADDR, A_IP4, B_IP4, ipv4_packet, node_key, wg_pair
from meshlet_testing.raises import raises
from meshlet_testing.rand import FakeRandom

_MSG = bytes(range(116)) + bytes(32)  # an initiation-shaped message, macs zero


def test_mac1_is_keyed_blake2s_of_the_recipient_key():
    kr = node_key(2).public()
    out = CookieGenerator(kr).add_macs(_MSG, INITIATION_MAC1_OFFSET, 0)
    key = crypto.blake2s(b"mac1----" + kr.raw)
    assert out[116:132] == crypto.blake2s(_MSG[:116], key=key, digest_size=16)
    assert out[132:] == bytes(16)  # no cookie: mac2 zero
    checker = CookieChecker(kr, FakeRandom(1))
    assert checker.check_mac1(out, INITIATION_MAC1_OFFSET)
    assert not CookieChecker(node_key(1).public(), FakeRandom(1)).check_mac1(out, INITIATION_MAC1_OFFSET)


def test_cookie_round_trip_gives_a_valid_mac2():
    kr = node_key(2).public()
    gen, checker = CookieGenerator(kr), CookieChecker(kr, FakeRandom(1))
    first = gen.add_macs(_MSG, INITIATION_MAC1_OFFSET, 0)
    assert not checker.check_mac2(first, INITIATION_MAC2_OFFSET, A_ADDR, 0)  # no secret yet
    reply = checker.create_reply(first, INITIATION_MAC1_OFFSET, A_ADDR, 0)
    assert len(reply) == 64 and reply[4:8] == _MSG[4:8]  # answers the sender index
    gen.consume_reply(MessageCookieReply.parse(reply), 10)
    second = gen.add_macs(_MSG, INITIATION_MAC1_OFFSET, 20)
    assert second[132:] != bytes(16)
    assert checker.check_mac2(second, INITIATION_MAC2_OFFSET, A_ADDR, 20)
    assert not checker.check_mac2(second, INITIATION_MAC2_OFFSET, (A_ADDR[0], A_ADDR[1] + 1), 20)
    # Cookie-Refresh-Time: the sender stops using it after 120 s, the checker's secret goes stale.
    assert gen.add_macs(_MSG, INITIATION_MAC1_OFFSET, 120_011)[132:] == bytes(16)
    assert not checker.check_mac2(second, INITIATION_MAC2_OFFSET, A_ADDR, 120_001)


def test_secret_rotates_after_120_s():
    kr = node_key(2).public()
    checker = CookieChecker(kr, FakeRandom(1))
    gen = CookieGenerator(kr)
    msg = gen.add_macs(_MSG, INITIATION_MAC1_OFFSET, 0)
    r1 = checker.create_reply(msg, INITIATION_MAC1_OFFSET, A_ADDR, 0)
    r2 = checker.create_reply(msg, INITIATION_MAC1_OFFSET, A_ADDR, 1_000)
    r3 = checker.create_reply(msg, INITIATION_MAC1_OFFSET, A_ADDR, 121_000)
    cookies = []
    for r in (r1, r2, r3):
        g = CookieGenerator(kr)
        g.add_macs(_MSG, INITIATION_MAC1_OFFSET, 0)
        g.consume_reply(MessageCookieReply.parse(r), 0)
        cookies.append(g._cookie)
    assert cookies[0] == cookies[1] != cookies[2]


def test_replies_must_match_our_last_mac1():
    kr = node_key(2).public()
    checker = CookieChecker(kr, FakeRandom(1))
    gen = CookieGenerator(kr)
    reply = MessageCookieReply.parse(checker.create_reply(_MSG, INITIATION_MAC1_OFFSET, A_ADDR, 0))
    raises(RemoteProtocolError, "unexpected_cookie", gen.consume_reply, reply, 0)
    gen.add_macs(_MSG, INITIATION_MAC1_OFFSET, 0)  # its mac1 differs from the zero one answered
    raises(CryptoError, "bad_tag", gen.consume_reply, reply, 0)


def test_source_bytes():
    assert source_bytes((b"\x01\x02\x03\x04", 0x1234)) == b"\x01\x02\x03\x04\x12\x34"


def test_load_monitor():
    never, always, some = LoadMonitor(None), LoadMonitor(0), LoadMonitor(2)
    assert not never.note_handshake(0) and always.note_handshake(0)
    assert [some.note_handshake(t) for t in (0, 1, 2, 3)] == [False, False, True, True]
    assert some.note_handshake(1_002)  # a new window, but the load state lingers 1 s
    assert not some.note_handshake(3_500)


def test_under_load_the_first_initiation_only_earns_a_cookie():
    p = wg_pair(b_kwargs={"under_load_handshakes_per_s": 0})
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"patience"), 0)
    p.pump()
    assert [len(d) for _, _, d, _ in p.sent] == [148, 64]  # initiation, cookie reply
    assert p.b.stats.dropped == {"under_load": 1} and p.b.stats.cookie_replies_sent == 1
    assert p.b.stats.handshakes_completed == 0 and p.a.stats.dropped == {}
    p.advance(6_000)  # the retransmit carries a mac2 made with the cookie
    assert p.sent_by("a", 1)[1][132:] != bytes(16)
    assert p.b.received_packets() == [ipv4_packet(A_IP4, B_IP4, b"patience")]
    assert p.b.stats.cookie_replies_sent == 1


def test_both_under_load_still_converge():
    p = wg_pair(under_load_handshakes_per_s=0)
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"slow"), 0)
    p.advance(12_000)
    assert p.b.received_packets() == [ipv4_packet(A_IP4, B_IP4, b"slow")]


def test_a_cookie_is_bound_to_the_source_address():
    p = wg_pair(b_kwargs={"under_load_handshakes_per_s": 0})
    p.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x"), 0)
    p.pump()
    p.a_addr = (b"\xc6\x33\x64\x07", 40000)  # a moves before retrying: the cookie no longer fits
    p.advance(5_400)
    assert p.b.stats.cookie_replies_sent == 2 and p.b.stats.handshakes_completed == 0
