#!/usr/bin/env python3
"""Benchmark of meshlet-derp on loopback: relayed throughput and memory per idle client.

Not a test: it prints numbers (and `--json` writes them). What it measures:

1. **Throughput.** A relay runs in its own process (`python -m meshlet_derp
   --http`), under the default asyncio loop and then under uvloop. N sender/
   receiver pairs (N = 1, 4, 16) connect from this process; each sender
   writes SendPacket frames of 1,280-byte packets to its receiver as fast as
   TCP flow control lets it, for `--seconds`. Packets/s and Mbit/s are what
   the *receivers* got (packet bytes only, not frame headers). The relay's
   CPU use over the window is read from /proc.
2. **The ceiling.** Raw loopback TCP in the same run: one socket pair, a
   thread writing 256 KiB chunks and a thread reading them, for the same
   duration. The relay's Mbit/s over this is the "ratio" column.
3. **Memory per idle client.** A fresh relay; its resident set size is read
   before and after 1,000 and then 10,000 clients have connected, logged in
   (ClientInfo/ServerInfo) and gone idle; (RSS delta) / N. RLIMIT_NOFILE is
   raised for both processes.

The load generator itself runs on uvloop when installed (so that it is not
the bottleneck); only the relay's loop varies. Everything is bounded: each
phase has a timeout, and the relay processes are killed at the end.

    .venv/bin/python tools/bench/derp_relay.py              # the full table, ~1-2 minutes
    .venv/bin/python tools/bench/derp_relay.py --quick      # N=1,4 and 1k idle only
    .venv/bin/python tools/bench/derp_relay.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "core"), str(ROOT / "servers")]

from meshlet.derp import frames, login  # noqa: E402
from meshlet.key import NodePrivate, NodePublic  # noqa: E402

PACKET = 1280
FRAME = frames.build_send_packet(
    NodePublic(bytes(32)), bytes(PACKET)
)  # template; the key is patched per pair
RECV_FRAME_LEN = frames.FRAME_HEADER_LEN + frames.KEY_LEN + PACKET


# --- the relay process --------------------------------------------------------------------


class Relay:
    def __init__(self, loop: str, state_dir: str, nofile: int, tls: bool = False) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        argv = [sys.executable, "-m", "meshlet_derp", "-a", "127.0.0.1:%d" % self.port, "--no-stun",
                "--metrics-addr", "", "--state-dir", state_dir, "--event-loop", loop,
                "--max-connections", str(nofile)]  # fmt: skip
        if tls:
            cert, key = os.path.join(state_dir, "bench.crt"), os.path.join(state_dir, "bench.key")
            if not os.path.exists(cert):
                cmd = [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                ]
                cmd += ["-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert]
                subprocess.run(cmd, check=True, capture_output=True)
            argv += ["--certfile", cert, "--keyfile", key]
        else:
            argv.append("--http")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "core"), str(ROOT / "servers")]))
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    raise SystemExit("relay did not start:\n" + self.log.read().decode(errors="replace"))
                time.sleep(0.05)

    def rss_bytes(self) -> int:
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_s(self) -> float:
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- a minimal DERP client as an asyncio Protocol -------------------------------------------


class BenchClient(asyncio.Protocol):
    """Upgrades, logs in, then either counts what it receives or sends one frame over and over."""

    def __init__(self, private: NodePrivate) -> None:
        self.private = private
        self.key = private.public()
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.reader: frames.FrameReader | None = None
        self.server_key: NodePublic | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.paused = False
        self.blob = b""
        self.sending = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self.transport.write(
            b"GET /derp HTTP/1.1\r\nHost: bench\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        if self.ready.done():
            self.received += len(data)
            return
        if self.reader is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data, self.head = self.head[end + 4 :], self.head[: end + 4]
            self.reader = frames.FrameReader()
        self.reader.feed(data)
        while not self.ready.done():
            frame = self.reader.next_frame()
            if frame is None:
                return
            ftype, payload = frame
            if ftype == frames.FRAME_SERVER_KEY:
                self.server_key = login.parse_server_key(payload)
                info: dict[str, object] = {"version": 2, "CanAckPings": True}
                assert self.transport is not None
                self.transport.write(
                    login.build_client_info(self.private, self.server_key, os.urandom(24), info)
                )
            elif ftype == frames.FRAME_SERVER_INFO:
                self.ready.set_result(None)
                self.received += self.reader.buffered()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during login"))
        self.sending = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def start_sending(self, dst: NodePublic) -> None:
        frame = FRAME[: frames.FRAME_HEADER_LEN] + dst.raw + FRAME[frames.FRAME_HEADER_LEN + 32 :]
        self.blob = frame * 48  # ~63 KB per write
        self.sending = True
        self._pump()

    def _pump(self) -> None:
        t = self.transport
        if not self.sending or t is None or t.is_closing():
            return
        for _ in range(4):
            if self.paused:
                return
            t.write(self.blob)
        asyncio.get_running_loop().call_soon(self._pump)


async def _connect(port: int, n: int, concurrency: int = 200, tls: bool = False) -> list[BenchClient]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    ctx = None
    if tls:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

    async def one() -> BenchClient:
        async with gate:
            _, proto = await loop.create_connection(lambda: BenchClient(NodePrivate.generate(os.urandom)),
                                                    "127.0.0.1", port, ssl=ctx)  # fmt: skip
            await asyncio.wait_for(proto.ready, 30)
            return proto

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _throughput(relay: Relay, pairs: int, seconds: float) -> dict[str, float]:
    clients = await _connect(relay.port, 2 * pairs)
    senders, receivers = clients[:pairs], clients[pairs:]
    for s, r in zip(senders, receivers):
        s.start_sending(r.key)
    await asyncio.sleep(min(1.0, seconds / 3))  # warm-up
    got0 = sum(r.received for r in receivers)
    cpu0, t0 = relay.cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)
    got1 = sum(r.received for r in receivers)
    cpu1, t1 = relay.cpu_s(), time.monotonic()
    for c in clients:
        c.sending = False
        assert c.transport is not None
        c.transport.abort()
    await asyncio.sleep(0.2)
    packets = (got1 - got0) / RECV_FRAME_LEN / (t1 - t0)
    return {"pairs": pairs, "packets_per_s": packets, "mbit_per_s": packets * PACKET * 8 / 1e6,
            "relay_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0)}  # fmt: skip


async def _idle_memory(relay: Relay, counts: list[int], tls: bool = False) -> list[dict[str, float]]:
    await _connect(relay.port, 20, tls=tls)  # warm the relay's code paths and allocator first
    await asyncio.sleep(0.5)
    base = relay.rss_bytes()
    out = []
    held: list[BenchClient] = []
    for n in counts:
        start = time.monotonic()
        held += await _connect(relay.port, n - len(held), tls=tls)
        took = time.monotonic() - start
        await asyncio.sleep(1.0)
        rss = relay.rss_bytes()
        out.append({"clients": n, "rss_delta_bytes": rss - base, "bytes_per_client": (rss - base) / n,
                    "connect_login_s": took})  # fmt: skip
    for c in held:
        assert c.transport is not None
        c.transport.abort()
    await asyncio.sleep(0.2)
    return out


def _raw_tcp(seconds: float) -> float:
    """Mbit/s of one loopback TCP stream, 256 KiB writes, in this process (the ceiling)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    a = socket.create_connection(lsock.getsockname())
    b, _ = lsock.accept()
    lsock.close()
    stop = threading.Event()
    total = [0]

    def reader() -> None:
        buf = bytearray(1 << 18)
        view = memoryview(buf)
        while True:
            n = b.recv_into(view)
            if not n:
                return
            total[0] += n

    def writer() -> None:
        chunk = bytes(1 << 18)
        while not stop.is_set():
            a.sendall(chunk)
        a.shutdown(socket.SHUT_WR)

    tr, tw = threading.Thread(target=reader), threading.Thread(target=writer)
    tr.start()
    tw.start()
    time.sleep(0.3)
    n0, t0 = total[0], time.monotonic()
    time.sleep(seconds)
    n1, t1 = total[0], time.monotonic()
    stop.set()
    tw.join(10)
    tr.join(10)
    a.close()
    b.close()
    return (n1 - n0) * 8 / 1e6 / (t1 - t0)


def _print_memory(loop: str, kind: str, m: dict[str, float]) -> None:
    mb, kb = m["rss_delta_bytes"] / 1e6, m["bytes_per_client"] / 1e3
    line = "relay %-7s %6d %s: RSS +%.1f MB, %.1f KB per client (connect+login %.1f s)"
    print(line % (loop, m["clients"], kind, mb, kb, m["connect_login_s"]))


def _raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _client_loop() -> str:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    except ImportError:
        return "asyncio"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="measurement window per case (default 3)")
    p.add_argument("--pairs", default="1,4,16", help="sender/receiver pair counts (default 1,4,16)")
    p.add_argument("--idle", default="1000,10000", help="idle client counts for memory (default 1000,10000)")
    p.add_argument("--loops", default="asyncio,uvloop", help="relay event loops to compare")
    p.add_argument("--tls-idle", default="", metavar="N,...",
                   help="also measure idle memory over TLS (self-signed via openssl), e.g. 1000")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="pairs 1,4; idle 1000; 2 s windows")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    args = p.parse_args()
    if args.quick:
        args.pairs, args.idle, args.seconds = "1,4", "1000", 2.0
    pairs = [int(x) for x in args.pairs.split(",") if x]
    idle = [int(x) for x in args.idle.split(",") if x]
    nofile = _raise_nofile(max(idle + [0]) * 2 + 1000)
    client_loop = _client_loop()
    results: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "client_loop": client_loop,
            "nofile": nofile,
        },  # fmt: skip
        "packet_bytes": PACKET,
    }
    raw = _raw_tcp(args.seconds)
    results["raw_tcp_mbit_per_s"] = raw
    print("raw loopback TCP, one stream: %.0f Mbit/s (the ceiling)" % raw)
    rows = []
    mem = []
    with tempfile.TemporaryDirectory() as state:
        for loop in args.loops.split(","):
            relay = Relay(loop, state, nofile)
            try:
                for n in pairs:
                    r = asyncio.run(asyncio.wait_for(_throughput(relay, n, args.seconds), args.seconds + 60))
                    r["loop"] = loop
                    r["ratio_to_raw"] = r["mbit_per_s"] / raw
                    rows.append(r)
                    print(
                        "relay %-7s %2d pair(s): %8.0f packets/s %7.0f Mbit/s  %.3f of raw  relay CPU %3.0f%%"
                        % (
                            loop,
                            n,
                            r["packets_per_s"],
                            r["mbit_per_s"],
                            r["ratio_to_raw"],
                            r["relay_cpu_pct"],
                        )
                    )
            finally:
                relay.stop()
            if idle:
                relay = Relay(loop, state, nofile)
                try:
                    for m in asyncio.run(asyncio.wait_for(_idle_memory(relay, idle), 300)):
                        m["loop"] = loop
                        mem.append(m)
                        _print_memory(loop, "idle clients", m)
                finally:
                    relay.stop()
            tls_idle = [int(x) for x in args.tls_idle.split(",") if x]
            if tls_idle:
                relay = Relay(loop, state, nofile, tls=True)
                try:
                    for m in asyncio.run(asyncio.wait_for(_idle_memory(relay, tls_idle, tls=True), 300)):
                        m["loop"] = loop
                        m["tls"] = True
                        mem.append(m)
                        _print_memory(loop, "idle TLS clients", m)
                finally:
                    relay.stop()
    results["throughput"] = rows
    results["idle_memory"] = mem
    if args.json:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
