"""A tour of meshlet's protocol core: the main job of `./dev demo` until the agent exists.

Every exchange below runs the real codecs and state machines of `core/meshlet`
between two in-memory parties, with real randomness and real crypto, and
prints what went over the "wire". Nothing here is mocked: the only thing
missing is the network, which is exactly what a sans-I/O core leaves to its
shells.

    .venv/bin/python tools/demo/core_tour.py [--json]

With --json it prints one JSON object with the figures instead of the prose.
"""

import argparse
import json
import os
import sys

from meshlet import crypto, disco, stun
from meshlet.control import base as ts2021
from meshlet.derp import frames, login
from meshlet.key import DiscoPrivate, MachinePrivate, NodePrivate
from meshlet.wg.device import Device, PeerConfig
from meshlet.wire import format_addr, parse_ip

random_bytes = os.urandom


def _hex(data: bytes, limit: int = 48) -> str:
    text = data.hex()
    return text if len(data) <= limit else text[: 2 * limit] + "…(%d bytes)" % len(data)


class Tour:
    """Collects the figures of each step, printing prose unless --json was given."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.results: dict[str, dict[str, object]] = {}

    def section(self, title: str) -> None:
        if not self.as_json:
            print("\n== " + title)

    def say(self, text: str) -> None:
        if not self.as_json:
            print("   " + text)

    def record(self, step: str, **figures: object) -> None:
        self.results[step] = figures


def keys(t: Tour) -> None:
    t.section("Keys: one type per role, Tailscale's text forms")
    node, disco_key, machine = (NodePrivate.generate(random_bytes), DiscoPrivate.generate(random_bytes),
                                MachinePrivate.generate(random_bytes))
    for priv in (node, disco_key, machine):
        pub = priv.public()
        t.say("%-13s %s   log form %s" % (type(pub).__name__, pub.to_text(), pub.short()))
    t.say("NodePrivate   %r   (private bytes never print)" % node)
    t.say("WireGuard form of the node key: %s" % node.public().to_base64())
    t.record("keys", node=node.public().to_text(), disco=disco_key.public().to_text(),
             machine=machine.public().to_text(), crypto_backend=crypto.NAME)


def stun_round_trip(t: Tour) -> None:
    t.section("STUN: a node asks a server for its public address")
    txid = random_bytes(stun.TXID_LEN)
    request = stun.build_binding_request(txid)
    t.say("request  (%d bytes, Tailscale's exact form): %s" % (len(request), _hex(request)))
    seen_from = (parse_ip("203.0.113.7"), 41641)  # as a server behind NAT would see it
    parsed = stun.parse_binding_request(request)
    response = stun.build_binding_response(parsed, *seen_from)
    t.say("response (%d bytes, XOR-MAPPED-ADDRESS): %s" % (len(response), _hex(response)))
    answer = stun.parse_binding_response(response)
    assert answer.txid == txid
    t.say("the node learns its reflexive address: %s" % format_addr(answer.ip, answer.port))
    t.record("stun", request_bytes=len(request), response_bytes=len(response),
             reflexive=format_addr(answer.ip, answer.port))


def disco_round_trip(t: Tour) -> None:
    t.section("disco: a sealed ping from A to B, and B's pong")
    a_disco, b_disco = DiscoPrivate.generate(random_bytes), DiscoPrivate.generate(random_bytes)
    a_node = NodePrivate.generate(random_bytes).public()
    a_shared = disco.beforenm(a_disco, b_disco.public())
    b_shared = disco.beforenm(b_disco, a_disco.public())
    ping = disco.Ping(random_bytes(12), a_node)
    packet = disco.seal(a_shared, a_disco.public(), random_bytes(24), ping)
    t.say("A -> B ping on the wire: %d bytes, starts %s (the TS\U0001f4ac magic)" % (len(packet), packet[:6].hex()))
    sender, _ = disco.parse_header(packet)
    got = disco.open_message(b_shared, packet)
    assert isinstance(got, disco.Ping) and got.txid == ping.txid and sender == a_disco.public()
    t.say("B opens it: Ping from %s, node key %s" % (sender.short(), got.node_key.short() if got.node_key else "-"))
    observed = (parse_ip("198.51.100.20"), 41641)
    pong = disco.seal(b_shared, b_disco.public(), random_bytes(24), disco.Pong(got.txid, *observed))
    reply = disco.open_message(a_shared, pong)
    assert isinstance(reply, disco.Pong) and reply.txid == ping.txid
    t.say("A opens B's pong (%d bytes): B saw the ping come from %s" % (len(pong), format_addr(reply.ip, reply.port)))
    t.record("disco", ping_bytes=len(packet), pong_bytes=len(pong), observed=format_addr(reply.ip, reply.port))


def derp_relay(t: Tour) -> None:
    t.section("DERP: two clients log in to a relay and one packet is relayed")
    server = NodePrivate.generate(random_bytes)
    alice, bob = NodePrivate.generate(random_bytes), NodePrivate.generate(random_bytes)
    server_reader = frames.FrameReader(frames.SERVER_MAX_FRAME_LEN)
    for client in (alice, bob):
        greeting = login.build_server_key(server.public())
        ftype, payload = frames.decode_frame(greeting)
        assert ftype == frames.FRAME_SERVER_KEY and login.parse_server_key(payload) == server.public()
        hello = login.build_client_info(client, server.public(), random_bytes(24),
                                         {"version": 2, "CanAckPings": True})
        server_reader.feed(hello)
        ftype, payload = server_reader.next_frame() or (0, b"")
        who, info = login.parse_client_info(payload, server)
        assert who == client.public()
        welcome = login.build_server_info(server, who, random_bytes(24), {"version": 2})
        ftype, payload = frames.decode_frame(welcome)
        login.parse_server_info(payload, client, server.public())
        t.say("%s logged in (ClientInfo %d bytes, %r), got ServerInfo" % (who.short(), len(hello), info))
    send = frames.build_send_packet(bob.public(), b"hello bob, via the relay")
    # Feed the relay one byte at a time: the reader must cope with any split.
    frame = None
    for i in range(len(send)):
        server_reader.feed(send[i : i + 1])
        frame = server_reader.next_frame() or frame
    assert frame is not None
    dst, data = frames.parse_send_packet(frame[1])
    recv = frames.build_recv_packet(alice.public(), data)
    ftype, payload = frames.decode_frame(recv)
    src, delivered = frames.parse_recv_packet(payload)
    t.say("SendPacket(to %s) fed byte by byte -> RecvPacket(from %s): %r" % (dst.short(), src.short(), delivered))
    t.record("derp", send_frame_bytes=len(send), delivered=delivered.decode())


def ts2021_channel(t: Tour) -> None:
    t.section("TS2021: a machine opens a Noise channel to a control server")
    control = MachinePrivate.generate(random_bytes)
    machine = MachinePrivate.generate(random_bytes)
    hs = ts2021.ClientHandshake(machine, control.public(), MachinePrivate.generate(random_bytes))
    t.say("X-Tailscale-Handshake: %s… (%d bytes, capability version %d)"
          % (hs.initiation_header()[:24], len(hs.initiation()), hs.version))
    peer, version, response, server_conn = ts2021.accept_initiation(
        ts2021.decode_handshake_header(hs.initiation_header()), control, MachinePrivate.generate(random_bytes))
    assert peer == machine.public()
    t.say("server learns the machine key %s and answers %d bytes" % (peer.short(), len(response)))
    client_conn = hs.receive_response(response)
    assert client_conn is not None
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    server_conn.receive_data(client_conn.send(preface))
    assert server_conn.read() == preface
    big = random_bytes(10_000)
    wire = server_conn.send(big)
    client_conn.receive_data(wire)
    assert client_conn.read() == big
    t.say("HTTP/2 preface client -> server; 10000 bytes server -> client in %d bytes of records" % len(wire))
    t.record("ts2021", initiation_bytes=len(hs.initiation()), response_bytes=len(response),
             records_bytes_for_10000=len(wire))


def _ipv4_packet(src: bytes, dst: bytes, payload: bytes) -> bytes:
    """A minimal IPv4/UDP packet; WireGuard only reads the addresses and length."""
    total = 20 + 8 + len(payload)
    header = bytes((0x45, 0, total >> 8, total & 0xFF, 0, 0, 0, 0, 64, 17, 0, 0)) + src + dst
    return header + bytes((0x9C, 0x40, 0x9C, 0x40, (8 + len(payload)) >> 8, (8 + len(payload)) & 0xFF, 0, 0)) + payload


def wireguard_tunnel(t: Tour) -> None:
    t.section("WireGuard: two devices handshake and carry one IP packet")
    now_ms, unix_ms = 0, 1_700_000_000_000
    a_key, b_key = NodePrivate.generate(random_bytes), NodePrivate.generate(random_bytes)
    a_addr, b_addr = (parse_ip("192.0.2.1"), 51820), (parse_ip("192.0.2.2"), 51820)
    a_ip, b_ip = parse_ip("100.64.0.1"), parse_ip("100.64.0.2")
    a = Device(a_key, random_bytes, unix_ms, now_ms)
    b = Device(b_key, random_bytes, unix_ms, now_ms)
    a.set_peer(PeerConfig(b_key.public(), [(b_ip, 32)], endpoint=b_addr))
    b.set_peer(PeerConfig(a_key.public(), [(a_ip, 32)]))
    a.send_packet(_ipv4_packet(a_ip, b_ip, b"ping through the tunnel"), now_ms)
    wire = {a_addr: a, b_addr: b}
    sizes = []
    for _ in range(4):  # initiation, response, then the queued data packet
        for sender, src in ((a, a_addr), (b, b_addr)):
            for _peer, dest, datagram in sender.transmits():
                sizes.append(len(datagram))
                wire[dest].receive_datagram(datagram, src, now_ms)
    delivered = b.received_packets()
    assert delivered and delivered[0].endswith(b"ping through the tunnel")
    t.say("datagrams on the wire: %s bytes (initiation, response, data)" % ", ".join(map(str, sizes)))
    t.say("B's TUN receives %d bytes from %s: %r" % (len(delivered[0]), format_addr(a_ip, 0)[:-2], delivered[0][28:]))
    t.record("wireguard", datagram_bytes=sizes, delivered_bytes=len(delivered[0]))


def main(argv: "list[str]") -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    tour = Tour(args.json)
    if not args.json:
        print("meshlet core tour (crypto backend: %s)" % crypto.NAME)
    for step in (keys, stun_round_trip, disco_round_trip, derp_relay, ts2021_channel, wireguard_tunnel):
        step(tour)
    if args.json:
        print(json.dumps(tour.results, indent=2))
    else:
        print("\nAll exchanges completed.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
