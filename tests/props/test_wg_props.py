"""Properties of the WireGuard core, and its cross-check against independent implementations.

* Codecs round-trip; garbage parses or raises ProtocolError, nothing else.
* Random and mutated datagrams and packets fed to a Device never raise and
  only ever bump stats.dropped (h11's fuzz invariant, at the entry points).
* The replay window equals a set-based reference; the allowed-IPs table
  equals a linear longest-prefix scan (wireguard-go's SlowRouter idea).
* The handshake equals noiseprotocol's Noise_IKpsk2 with the WireGuard
  identifier as prologue, mac1 equals hashlib's keyed BLAKE2s, transport
  equals `cryptography`'s ChaCha20-Poly1305: the transcript in
  tests/vectors/wg_handshake.json is recomputed here from those libraries
  alone (run this file as a script with --write to regenerate it).
"""

import hashlib
import json
import struct
import sys
import warnings

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet.key import NodePublic
from meshlet.wg import handshake
from meshlet.wg.allowedips import AllowedIPs
from meshlet.wg.messages import MessageCookieReply, MessageInitiation, MessageResponse, MessageTransport
from meshlet.wg.replay import WINDOW_SIZE, ReplayFilter
from meshlet_testing.garbage import mutations, parses_or_rejects
from meshlet_testing.pair import A_IP4, B_IP4, A_IP6, B_IP6, ipv4_packet, ipv6_packet, wg_pair
from meshlet_testing.vectors import VECTORS_DIR, load, unhex

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
u64 = st.integers(min_value=0, max_value=0xFFFFFFFFFFFFFFFF)


def _b(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


# --- codecs ---------------------------------------------------------------------


@given(u32, _b(32), _b(48), _b(28), _b(16), _b(16))
def test_initiation_round_trip(sender: int, e: bytes, s: bytes, t: bytes, m1: bytes, m2: bytes) -> None:
    data = MessageInitiation(sender, e, s, t, m1, m2).to_bytes()
    assert len(data) == 148
    m = MessageInitiation.parse(data)
    got = (m.sender, m.ephemeral, m.encrypted_static, m.encrypted_timestamp, m.mac1, m.mac2)
    assert got == (sender, e, s, t, m1, m2)


@given(u32, u32, _b(32), _b(16), _b(16), _b(16))
def test_response_round_trip(
    sender: int, receiver: int, e: bytes, empty: bytes, m1: bytes, m2: bytes
) -> None:
    data = MessageResponse(sender, receiver, e, empty, m1, m2).to_bytes()
    assert len(data) == 92
    m = MessageResponse.parse(data)
    got = (m.sender, m.receiver, m.ephemeral, m.encrypted_nothing, m.mac1, m.mac2)
    assert got == (sender, receiver, e, empty, m1, m2)


@given(u32, _b(24), _b(32))
def test_cookie_reply_round_trip(receiver: int, nonce: bytes, cookie: bytes) -> None:
    data = MessageCookieReply(receiver, nonce, cookie).to_bytes()
    assert len(data) == 64
    m = MessageCookieReply.parse(data)
    assert (m.receiver, m.nonce, m.encrypted_cookie) == (receiver, nonce, cookie)


@given(u32, u64, st.binary(min_size=16, max_size=200))
def test_transport_round_trip(receiver: int, counter: int, content: bytes) -> None:
    data = MessageTransport(receiver, counter, content).to_bytes()
    assert len(data) == 16 + len(content)
    m = MessageTransport.parse(data)
    assert (m.receiver, m.counter, m.content) == (receiver, counter, content)


_PARSERS = (MessageInitiation.parse, MessageResponse.parse, MessageCookieReply.parse, MessageTransport.parse)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_reject(data: bytes) -> None:
    for parse in _PARSERS:
        parses_or_rejects(parse, data)


# --- the device never raises ----------------------------------------------------

_PAIR = wg_pair(seed=9, b_kwargs={"under_load_handshakes_per_s": None})
_PAIR.a.send_packet(ipv4_packet(A_IP4, B_IP4, b"x" * 40), 0)
_PAIR.pump()
_CAPTURED = [d for _, _, d, _ in _PAIR.sent]  # initiation, response, transport
_DEVICE_B = _PAIR.b
while _DEVICE_B.next_event() is not None:
    pass
_DEVICE_B.received_packets()
_SRCS = st.sampled_from([_PAIR.a_addr, (b"\x01\x02\x03\x04", 1), (bytes(16), 65535)])


def _feed(data: bytes, src: "tuple[bytes, int]") -> None:
    """Delivers junk to b: exactly one drop is counted, and nothing else happens."""
    dev = _DEVICE_B
    s = dev.stats
    before = (s.handshakes_completed, s.rx_packets, s.tx_packets, s.rx_bytes, s.tx_bytes)
    dropped = sum(s.dropped.values())
    dev.receive_datagram(data, src, 1)
    assert (s.handshakes_completed, s.rx_packets, s.tx_packets, s.rx_bytes, s.tx_bytes) == before
    assert sum(s.dropped.values()) == dropped + 1, s.dropped
    assert dev.received_packets() == []
    assert dev.transmits() == []  # no answer to unauthenticated input
    assert dev.next_event() is None


@settings(max_examples=300)
@given(st.binary(max_size=300), _SRCS)
def test_random_datagrams_only_count_drops(data: bytes, src: "tuple[bytes, int]") -> None:
    _feed(data, src)


@settings(max_examples=300)
@given(st.sampled_from(_CAPTURED), st.integers(min_value=0), st.integers(min_value=0, max_value=255), _SRCS)
def test_mutated_datagrams_only_count_drops(
    data: bytes, pos: int, value: int, src: "tuple[bytes, int]"
) -> None:
    mutated = mutations(data, pos, value)
    if mutated == data:
        return
    _feed(mutated, src)


@settings(max_examples=200)
@given(st.sampled_from(_CAPTURED), st.integers(min_value=0, max_value=200))
def test_truncated_and_extended_datagrams_only_count_drops(data: bytes, n: int) -> None:
    _feed(data[:n], _PAIR.a_addr)
    if data[0] != 4:  # a longer transport message is a different ciphertext; still only a drop
        _feed(data + bytes(n % 7 + 1), _PAIR.a_addr)


_LOADED = wg_pair(seed=10, b_kwargs={"under_load_handshakes_per_s": 0}).b


@settings(max_examples=200)
@given(
    st.sampled_from(_CAPTURED[:2]), st.integers(min_value=0), st.integers(min_value=0, max_value=255), _SRCS
)
def test_under_load_the_only_answer_is_a_cookie_reply(
    data: bytes, pos: int, value: int, src: "tuple[bytes, int]"
) -> None:
    dev = _LOADED
    dev.receive_datagram(mutations(data, pos, value), src, 1)
    for peer, dest, reply in dev.transmits():
        assert peer is None and dest == src and len(reply) == 64 and reply[:4] == b"\x03\x00\x00\x00"
    assert dev.stats.handshakes_completed == 0 and dev.received_packets() == []


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_random_packets_to_send_never_raise(packet: bytes) -> None:
    dev = _PAIR.a
    dev.send_packet(packet, 2)
    dev.transmits()


# --- replay window vs a set ---------------------------------------------------------


class _SetWindow:
    def __init__(self) -> None:
        self.seen: "set[int]" = set()
        self.highest = 0

    def accept(self, n: int, limit: int) -> bool:
        if n >= limit or (n <= self.highest and self.highest - n > WINDOW_SIZE) or n in self.seen:
            return False
        self.seen.add(n)
        self.highest = max(self.highest, n)
        return True


_counters = st.lists(
    st.one_of(
        st.integers(min_value=0, max_value=40),
        st.integers(min_value=0, max_value=3 * WINDOW_SIZE),
        st.integers(min_value=0, max_value=1 << 20),
    ),
    max_size=300,
)


@settings(max_examples=300)
@given(_counters, st.integers(min_value=1, max_value=1 << 21))
def test_replay_window_equals_a_set(counters: "list[int]", limit: int) -> None:
    f, ref = ReplayFilter(), _SetWindow()
    for n in counters:
        assert f.accept(n, limit) == ref.accept(n, limit), n


@given(st.lists(st.integers(min_value=-70, max_value=70), max_size=400))
def test_replay_window_equals_a_set_on_walks(steps: "list[int]") -> None:
    f, ref = ReplayFilter(), _SetWindow()
    n = WINDOW_SIZE
    for step in steps:
        n = max(0, n + step * 97)
        assert f.accept(n, 1 << 64) == ref.accept(n, 1 << 64), n


# --- allowed IPs vs a linear scan ------------------------------------------------------


def _slow_lookup(routes: "dict[tuple[int, int, int], str]", ip: bytes) -> "str | None":
    bits = len(ip) * 8
    x = int.from_bytes(ip, "big")
    best, best_len = None, -1
    for (fam, net, cidr), peer in routes.items():
        if fam == bits and cidr > best_len and (x >> (bits - cidr)) == (net >> (bits - cidr)):
            best, best_len = peer, cidr
    return best


_v4 = st.tuples(_b(4), st.integers(min_value=0, max_value=32))
_v6 = st.tuples(_b(16), st.integers(min_value=0, max_value=128))
_ops = st.lists(
    st.tuples(st.booleans(), st.one_of(_v4, _v6), st.sampled_from(["p1", "p2", "p3"])),
    max_size=60,
)


@settings(max_examples=300)
@given(_ops, st.lists(st.one_of(_b(4), _b(16)), max_size=30))
def test_allowed_ips_equal_a_linear_scan(ops, probes) -> None:  # type: ignore[no-untyped-def]
    table = AllowedIPs()
    routes: "dict[tuple[int, int, int], str]" = {}
    for insert, (ip, cidr), peer in ops:
        bits = len(ip) * 8
        net = int.from_bytes(ip, "big") >> (bits - cidr) << (bits - cidr)
        key = (bits, net, cidr)
        if insert:
            table.insert(ip, cidr, peer)  # type: ignore[arg-type]
            routes[key] = peer
        else:
            table.remove(ip, cidr, peer)  # type: ignore[arg-type]
            if routes.get(key) == peer:
                del routes[key]
    # Probe addresses near the stored networks as well as random ones.
    near = [net.to_bytes(bits // 8, "big") for (bits, net, _) in routes]
    for ip in probes + near:
        assert table.lookup(ip) == _slow_lookup(routes, ip), ip.hex()
    for peer in ("p1", "p2", "p3"):
        want = sorted((n.to_bytes(b // 8, "big"), c) for (b, n, c), p in routes.items() if p == peer)
        assert sorted(table.entries_for_peer(peer)) == want  # type: ignore[arg-type]


@given(st.one_of(_b(4), _b(16)), st.binary(max_size=30))
def test_lookup_packet_reads_the_addresses(ip: bytes, payload: bytes) -> None:
    table = AllowedIPs()
    table.insert(ip, len(ip) * 8, "dst")  # type: ignore[arg-type]
    if len(ip) == 4:
        pkt = ipv4_packet(A_IP4, ip, payload)
    else:
        pkt = ipv6_packet(A_IP6, ip, payload)
    assert table.lookup_packet(pkt, len(ip) == 16, False) == "dst"


# --- the handshake against independent implementations ---------------------------


def _noise(  # type: ignore[no-untyped-def]
    initiator: bool, static: bytes, remote: "bytes | None", ephemeral: bytes, psk: bytes
):
    from noise.connection import Keypair, NoiseConnection

    conn = NoiseConnection.from_name(b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_psks(psk=psk)
    conn.set_prologue(b"WireGuard v1 zx2c4 Jason@zx2c4.com")
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if remote is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ephemeral already set: OK for testing"
        conn.start_handshake()
    return conn


def _public(private: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = X25519PrivateKey.from_private_bytes(private).public_key()
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _mac1(recipient_public: bytes, msg: bytes) -> bytes:
    key = hashlib.blake2s(b"mac1----" + recipient_public).digest()
    return hashlib.blake2s(msg, key=key, digest_size=16).digest()


def _spaced(b: bytes) -> str:
    return " ".join(b[i : i + 16].hex(" ") for i in range(0, len(b), 16))


def _seed(label: str) -> bytes:
    return hashlib.sha256(b"meshlet wg vector " + label.encode()).digest()


def reference_transcript() -> "dict[str, object]":
    """The whole exchange, computed without meshlet's crypto or handshake code."""
    si, sr, ei, er, psk = (_seed(n) for n in ("si", "sr", "ei", "er", "psk"))
    si_pub, sr_pub = _public(si), _public(sr)
    i_index, r_index = 0x11223344, 0xA1B2C3D4
    timestamp = struct.pack(">QI", 0x400000000000000A + 1_700_000_000, 0x2A000000)
    init = _noise(True, si, sr_pub, ei, psk)
    resp = _noise(False, sr, None, er, psk)
    body1 = init.write_message(timestamp)
    assert resp.read_message(body1) == timestamp
    body2 = resp.write_message(b"")
    assert init.read_message(body2) == b""
    head1 = struct.pack("<II", 1, i_index) + body1
    initiation = head1 + _mac1(sr_pub, head1) + bytes(16)
    head2 = struct.pack("<III", 2, r_index, i_index) + body2
    response = head2 + _mac1(si_pub, head2) + bytes(16)
    packet = ipv4_packet(A_IP4, B_IP4, b"wireguard vector")  # 36 bytes, padded to 48
    to_responder = struct.pack("<IIQ", 4, r_index, 0) + init.encrypt(packet + bytes(12))
    keepalive = struct.pack("<IIQ", 4, i_index, 0) + resp.encrypt(b"")
    return {
        "source": "computed by tests/props/test_wg_props.py::reference_transcript with noiseprotocol 0.3.1 "
        "(Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, prologue = the WireGuard identifier), hashlib.blake2s "
        "(mac1) and cryptography (X25519 public keys); layout per shared/protocol/wireguard.md §2-§4",
        "vectors": [
            {
                "comment": "keys are SHA-256 of 'meshlet wg vector <name>'; mac2 zero (no cookie)",
                "initiator_static_private": _spaced(si),
                "responder_static_private": _spaced(sr),
                "initiator_ephemeral_private": _spaced(ei),
                "responder_ephemeral_private": _spaced(er),
                "preshared_key": _spaced(psk),
                "initiator_index": i_index,
                "responder_index": r_index,
                "timestamp": _spaced(timestamp),
                "initiation": _spaced(initiation),
                "response": _spaced(response),
                "packet": _spaced(packet),
                "transport_to_responder": _spaced(to_responder),
                "keepalive_to_initiator": _spaced(keepalive),
            }
        ],
    }


def test_stored_transcript_is_what_the_references_compute() -> None:
    assert load("wg_handshake") == reference_transcript()


def test_meshlet_initiation_matches_noiseprotocol_for_random_keys() -> None:
    _matches_for(3)


@settings(max_examples=10, deadline=None)
@given(_b(32), _b(32), _b(32), _b(32), _b(32), _b(11))
def test_meshlet_handshake_equals_noiseprotocol(
    si: bytes, sr: bytes, ei: bytes, er: bytes, psk: bytes, ts: bytes
) -> None:
    from meshlet.key import NodePrivate, clamp

    ts = b"\x40" + ts  # any TAI64N label after 1970: never below the initial all-zero mark
    ki, kr = NodePrivate(clamp(si)), NodePrivate(clamp(sr))
    hs_i = handshake.Handshake(ki, kr.public(), psk)
    m1 = handshake.create_initiation(ki, hs_i, 5, ts, clamp(ei))
    init = _noise(True, clamp(si), kr.public().raw, clamp(ei), psk)
    assert init.write_message(ts) == m1.ephemeral + m1.encrypted_static + m1.encrypted_timestamp
    hs_r = handshake.Handshake(kr, ki.public(), psk)

    class _P:
        handshake = hs_r

    handshake.consume_initiation(kr, m1, lambda k: _P if k == ki.public() else None, 0)
    m2 = handshake.create_response(hs_r, 6, clamp(er))
    resp = _noise(False, clamp(sr), None, clamp(er), psk)
    resp.read_message(m1.ephemeral + m1.encrypted_static + m1.encrypted_timestamp)
    assert resp.write_message(b"") == m2.ephemeral + m2.encrypted_nothing


def _matches_for(n: int) -> None:
    for i in range(n):
        test_meshlet_handshake_equals_noiseprotocol.hypothesis.inner_test(  # type: ignore[attr-defined]
            *(hashlib.sha256(bytes((i, j))).digest() for j in range(5)), bytes(range(11))
        )


if __name__ == "__main__" and "--write" in sys.argv:
    with open(VECTORS_DIR + "/wg_handshake.json", "w") as f:
        json.dump(reference_transcript(), f, indent=2)
        f.write("\n")
    print("wrote", VECTORS_DIR + "/wg_handshake.json")
