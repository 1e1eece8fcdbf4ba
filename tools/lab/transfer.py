"""A TCP transfer with SHA-256 between two lab namespaces: did every byte arrive, unchanged?

The sender streams a deterministic byte sequence (`stream_block`), so the
receiver's digest can be checked against `expected_sha256(n)` without
shipping the data anywhere else. Run as a script inside a namespace:

    python transfer.py recv HOST PORT               "listening", then {"bytes", "sha256", "seconds"}
    python transfer.py send HOST PORT BYTES [MBPS]  sends the stream, optionally paced; the same report

`run(lab, src, dst, host, port, nbytes)` does both ends in a lab (any
`netlab.Namespaces`) and returns (sender's, receiver's) reports.
tests/interop/netns.py re-exports this module and still runs as the same
script, for callers that start it by that path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import subprocess
import sys
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from netlab import Namespaces

SCRIPT = __file__


def stream_block(i: int) -> bytes:
    """Block i of the deterministic test stream: 64 KiB from SHA-256 in counter mode (cheap, not random)."""
    seed = hashlib.sha256(i.to_bytes(8, "big")).digest()
    return (seed * 2048)[:65536]


def expected_sha256(nbytes: int) -> str:
    """The SHA-256 of the first `nbytes` of the stream."""
    h = hashlib.sha256()
    for i in itertools.count():
        if i << 16 >= nbytes:
            break
        h.update(stream_block(i)[: nbytes - (i << 16)])
    return h.hexdigest()


def send(host: str, port: int, total: int, mbps: float) -> dict[str, Any]:
    h = hashlib.sha256()
    start = time.monotonic()
    sent = 0
    with socket.create_connection((host, port), timeout=60) as s:
        for i in itertools.count():
            if sent >= total:
                break
            block = stream_block(i)[: total - sent]
            s.sendall(block)
            h.update(block)
            sent += len(block)
            if mbps > 0:
                ahead = sent * 8 / (mbps * 1e6) - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # wait for the receiver to close: everything arrived
    return {"bytes": sent, "sha256": h.hexdigest(), "seconds": round(time.monotonic() - start, 3)}


def recv(host: str, port: int, out: IO[str]) -> dict[str, Any]:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as ls:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(1)
        ls.settimeout(60)
        print("listening", file=out, flush=True)
        conn, _ = ls.accept()
    h = hashlib.sha256()
    n = 0
    start = time.monotonic()
    with conn:
        conn.settimeout(60)
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
    return {"bytes": n, "sha256": h.hexdigest(), "seconds": round(time.monotonic() - start, 3)}


def run(
    lab: "Namespaces", src: str, dst: str, host: str, port: int, nbytes: int, *, mbps: float = 0.0,
    timeout_s: float = 120.0, recv_name: str | None = None, listen_s: float = 15.0, recv_wait_s: float = 30.0,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Streams `nbytes` from namespace `src` to a receiver on HOST:PORT in `dst`.

    Returns (sender's, receiver's) reports.

    RuntimeError with the sender's output if it fails; the receiver is stopped
    by its PID if it has not finished `recv_wait_s` after the sender.
    """
    from netlab import wait_for

    name = recv_name or "recv-%d" % port
    receiver = lab.spawn(dst, name, [sys.executable, "-u", SCRIPT, "recv", host, str(port)])
    ready = lambda: "listening" in receiver.log() or not receiver.alive()  # noqa: E731
    wait_for(ready, listen_s, "the receiver on %s" % dst)
    args = [sys.executable, SCRIPT, "send", host, str(port), str(nbytes)]
    if mbps:
        args.append(str(mbps))
    sent = lab.run(src, *args, timeout=timeout_s, check=False)
    try:
        receiver.popen.wait(recv_wait_s)
    except subprocess.TimeoutExpired:
        receiver.stop()
    if sent.returncode != 0:
        raise RuntimeError("send %s -> %s failed: %s%s" % (src, dst, sent.stdout, sent.stderr))
    got: dict[str, Any] = json.loads(receiver.log().splitlines()[-1])
    want: dict[str, Any] = json.loads(sent.stdout.splitlines()[-1])
    return want, got


def main(argv: list[str]) -> None:
    cmd, host, port = argv[0], argv[1], int(argv[2])
    if cmd == "recv":
        result = recv(host, port, sys.stdout)
    else:
        result = send(host, port, int(argv[3]), float(argv[4]) if len(argv) > 4 else 0.0)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
