"""Packets per second through the sans-I/O WireGuard core alone: no sockets, no TUN.

    .venv/bin/python tools/bench/wg_core.py [--seconds S] [--size BYTES] [--profile] [--json]

Two `meshlet.wg.device.Device`s are wired in memory and handshake. Then,
for each round, a batch of identical IP packets (1420 bytes by default,
a full packet at wg-quick's MTU) is

* **encrypted**: `a.send_packet(p)` for each, then `a.transmits()`;
* **decrypted**: each datagram is fed to `b.receive_datagram(d)`, then
  `b.received_packets()` (the replay window sees fresh counters every time).

It reports packets/s and the equivalent Mbit/s of IP payload for each
direction alone and for the pair (one encrypt + one decrypt, what a packet
costs when both ends run in one process), plus µs per packet. This is an
upper bound for `meshlet wg up`: the agent adds a read() from the TUN, a
sendto(), a recvfrom() and a write() per packet, and the kernel's own work.

`--profile` runs cProfile over one encrypt+decrypt pass and prints where
the time goes per packet. A benchmark, not a test: it prints numbers only.
"""

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import struct
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "core"))

from meshlet import crypto  # noqa: E402
from meshlet.key import NodePrivate  # noqa: E402
from meshlet.wg.device import Device, PeerConfig  # noqa: E402

A_IP = bytes([100, 64, 0, 1])
B_IP = bytes([100, 64, 0, 2])
A_ADDR = (bytes([10, 0, 0, 1]), 51820)
B_ADDR = (bytes([10, 0, 0, 2]), 51820)
BATCH = 256


def ipv4_packet(size: int, src: bytes, dst: bytes) -> bytes:
    """A UDP-in-IPv4 packet of `size` bytes (header checksums are not checked by the core)."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0, src, dst)
    return header + bytes(size - len(header))


def make_pair() -> tuple[Device, Device]:
    rand = os.urandom
    a_key, b_key = NodePrivate.generate(rand), NodePrivate.generate(rand)
    now = 1_000
    unix = time.time_ns() // 1_000_000
    a = Device(a_key, rand, unix, now)
    b = Device(b_key, rand, unix, now)
    a.set_peer(PeerConfig(b_key.public(), [(B_IP, 32)], B_ADDR))
    b.set_peer(PeerConfig(a_key.public(), [(A_IP, 32)], A_ADDR))
    # Handshake: a's first packet is staged and starts it; pump until both sides are quiet.
    a.send_packet(ipv4_packet(100, A_IP, B_IP), now)
    for _ in range(10):
        moved = False
        for src, dst, addr in ((a, b, A_ADDR), (b, a, B_ADDR)):
            for _peer, _dst, data in src.transmits():
                dst.receive_datagram(data, addr, now)
                moved = True
        if not moved:
            break
    a.received_packets()
    b.received_packets()
    assert a.stats.handshakes_completed and b.stats.handshakes_completed, "handshake did not complete"
    return a, b


def run_round(a: Device, b: Device, packet: bytes, budget_s: float) -> dict[str, float]:
    """Runs batches until the budget is spent; returns the seconds spent in each direction and the count."""
    enc = dec = 0.0
    n = 0
    now = 2_000
    clock = time.perf_counter
    deadline = clock() + budget_s
    send, recv = a.send_packet, b.receive_datagram
    while clock() < deadline:
        t0 = clock()
        for _ in range(BATCH):
            send(packet, now)
        out = a.transmits()
        t1 = clock()
        for _peer, _dst, data in out:
            recv(data, A_ADDR, now)
        got = b.received_packets()
        t2 = clock()
        assert len(got) == BATCH and got[-1] == packet, "packets lost or changed: %r" % b.stats.dropped
        enc += t1 - t0
        dec += t2 - t1
        n += BATCH
    return {"enc_s": enc, "dec_s": dec, "packets": n}


def measure(seconds: float, size: int) -> dict[str, Any]:
    a, b = make_pair()
    packet = ipv4_packet(size, A_IP, B_IP)
    run_round(a, b, packet, 0.1)  # warm-up
    rounds = [run_round(a, b, packet, seconds / 3) for _ in range(3)]
    best_enc = max(r["packets"] / r["enc_s"] for r in rounds)
    best_dec = max(r["packets"] / r["dec_s"] for r in rounds)
    best_pair = max(r["packets"] / (r["enc_s"] + r["dec_s"]) for r in rounds)

    def row(pps: float) -> dict[str, float]:
        return {
            "packets_per_s": round(pps),
            "mbit_per_s": round(pps * size * 8 / 1e6, 1),
            "us_per_packet": round(1e6 / pps, 2),
        }

    return {
        "packet_bytes": size,
        "encrypt": row(best_enc),
        "decrypt": row(best_dec),
        "encrypt_plus_decrypt": row(best_pair),
        "aead_backend": getattr(crypto, "BACKEND", None) or _backend_name(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _backend_name() -> str:
    cipher = crypto.aead_cipher(bytes(32))
    return type(cipher).__module__ + "." + type(cipher).__qualname__


def profile(size: int) -> str:
    a, b = make_pair()
    packet = ipv4_packet(size, A_IP, B_IP)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(40):
        for _ in range(BATCH):
            a.send_packet(packet, 3_000)
        for _peer, _dst, data in a.transmits():
            b.receive_datagram(data, A_ADDR, 3_000)
        b.received_packets()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(18)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time budget per measurement (default 3)")
    ap.add_argument("--size", type=int, default=1420, help="IP packet size in bytes (default 1420)")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the per-packet path")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    result = measure(args.seconds, args.size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            "meshlet.wg core, %d-byte packets, Python %s on %s (AEAD: %s)"
            % (args.size, result["python"], result["machine"], result["aead_backend"])
        )
        print("%-22s %12s %10s %10s" % ("", "packets/s", "Mbit/s", "µs/packet"))
        for name in ("encrypt", "decrypt", "encrypt_plus_decrypt"):
            r = result[name]
            print(
                "%-22s %12d %10.1f %10.2f"
                % (name.replace("_", " "), r["packets_per_s"], r["mbit_per_s"], r["us_per_packet"])
            )
    if args.profile:
        print(profile(args.size))


if __name__ == "__main__":
    main()
