#!/usr/bin/env python3
"""Benchmark of meshlet-control's map fan-out: N streaming nodes, one endpoint change, time until all know.

Not a test: it prints numbers (and `--json FILE` writes them). The level is
stated plainly: **the poll level, with the real per-connection protocol
stack but no sockets.**

* State: the real `meshlet_control.state.State` on a SQLite file in a temp
  directory. N nodes are registered with a reusable pre-auth key
  (`State.register`, as /machine/register does), then each reports a disco
  key, two endpoints and home DERP 900 (`update_from_map_request`, as its first
  MapRequest does).
* Streams: for each node, the server side of a real connection: a TS2021
  Noise handshake (`meshlet.control.base.accept_initiation` with a client
  initiation), an h2 server connection that has received the client's preface
  and a `POST /machine/map` stream, a `noise.NoiseSession` and `noise.Response`
  around them, and a `poll.MapSession` registered in the `PollHub` with its
  writer coroutine running. Only the socket is fake: its `write` counts the
  bytes (already HTTP/2-framed and Noise-sealed) and notes when each stream got
  its message.
* Not done per node: the first full map. At 10k nodes each one is ~7 MB of
  JSON, so building N of them would measure the initial sync, not the fan-out;
  the cost of one full map at this N is measured and printed instead.
* The change: one node's lite update (`State.update_from_map_request` with new
  endpoints). Timed from that call until the last of the other N-1 streams
  has had the sealed PeersChangedPatch written to its socket. Repeated
  `--changes` times on different nodes; the median and the worst are shown.
* Memory: the process's resident set size (VmRSS) after the State is loaded,
  and after the hub and all N streams exist.

    .venv/bin/python tools/bench/control_scale.py                 # N = 1,000 and 10,000
    .venv/bin/python tools/bench/control_scale.py --nodes 1000    # one size
    .venv/bin/python tools/bench/control_scale.py --json out.json

Goal from issue 5: 10k nodes, <= 1 s, <= 1 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection

ROOT = Path(__file__).resolve().parents[2]
for sub in ("core", "servers"):
    sys.path.insert(0, str(ROOT / sub))

from meshlet.control import base  # noqa: E402
from meshlet.key import DiscoPrivate, MachinePrivate, NodePrivate  # noqa: E402
from meshlet_control import mapper, noise, poll  # noqa: E402
from meshlet_control.state import State  # noqa: E402

DERP_MAP = {
    "Regions": {
        "900": {
            "RegionID": 900,
            "RegionCode": "mlt",
            "RegionName": "meshlet",
            "Nodes": [{"Name": "900a", "RegionID": 900, "HostName": "10.0.0.1", "DERPPort": 3340}],
        }
    }
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sink:
    """Stands in for the socket: counts bytes, tells the bench when a change arrived."""

    transport = None  # no socket buffer to watch

    def __init__(self, bench: Bench, node_id: int) -> None:
        self.bench = bench
        self.node_id = node_id
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.bench.arrived(self.node_id, len(data))

    def is_closing(self) -> bool:
        return False

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Bench:
    def __init__(self, n: int, changes: int, profile: bool = False) -> None:
        self.n = n
        self.changes = changes
        self.profile = profile
        self.expect = 0
        self.got = 0
        self.done: asyncio.Event | None = None
        self.waiting = False
        self.bytes_this_change = 0

    def arrived(self, node_id: int, nbytes: int) -> None:
        if not self.waiting:
            return
        self.got += 1
        self.bytes_this_change += nbytes
        if self.got >= self.expect and self.done is not None:
            self.done.set()

    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nodes": self.n}
        tmp = tempfile.mkdtemp(prefix="meshlet-bench-")
        state = State(os.path.join(tmp, "control.sqlite"))
        key = state.create_preauth_key(state.default_user(), reusable=True).key
        t = time.perf_counter()
        ids = []
        for i in range(self.n):
            mk = MachinePrivate.generate(os.urandom).public()
            nk = NodePrivate.generate(os.urandom).public()
            res = state.register(mk, nk, None, key, {"Hostname": "node%d" % i, "OS": "linux"}, capver=130)
            assert res.node is not None, res.error
            ids.append(res.node.id)
        out["register_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for i, node_id in enumerate(ids):
            disco = DiscoPrivate.generate(os.urandom).public()
            eps = [
                "192.0.2.%d:41641" % (i % 250 + 1),
                "10.%d.%d.%d:41641" % (i >> 16 & 255, i >> 8 & 255, i & 255),
            ]
            state.update_from_map_request(node_id, disco, eps, {"Hostname": "node%d" % i, "NetInfo": {}}, 900)
        out["first_map_requests_s"] = time.perf_counter() - t
        out["rss_state_mb"] = rss_mb()

        cfg = mapper.MapperConfig("meshlet.internal", DERP_MAP)
        hub = poll.PollHub(
            state, cfg, lambda: int(time.time() * 1000), keepalive_s=3600, offline_grace_s=3600
        )
        t = time.perf_counter()
        hub.load()
        out["hub_load_s"] = time.perf_counter() - t

        viewer = state.get_node(ids[0])
        assert viewer is not None
        t = time.perf_counter()
        one = poll.MapSession(hub, viewer.id, 130, None)
        full = poll.encode_message(hub.full_map(one, viewer))
        out["one_full_map_s"] = time.perf_counter() - t
        out["one_full_map_bytes"] = len(full)

        t = time.perf_counter()
        tasks = [self._stream(hub, state, node_id) for node_id in ids]
        out["streams_setup_s"] = time.perf_counter() - t
        await asyncio.sleep(0.5)  # every writer coroutine is now waiting for work
        out["rss_streams_mb"] = rss_mb()

        latencies, syncs, sizes = [], [], []
        prof = None
        if self.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        for k in range(self.changes):
            node_id = ids[(k * 7919) % len(ids)]
            self.expect, self.got, self.bytes_this_change = self.n - 1, 0, 0
            self.done = asyncio.Event()
            self.waiting = True
            t = time.perf_counter()
            state.update_from_map_request(node_id, None, ["198.51.100.%d:41641" % (k + 1)], None, None)
            syncs.append(time.perf_counter() - t)
            await asyncio.wait_for(self.done.wait(), 120)
            latencies.append(time.perf_counter() - t)
            self.waiting = False
            sizes.append(self.bytes_this_change / max(1, self.got))
        if prof is not None:
            import pstats

            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        out["change_to_all_s_median"] = statistics.median(latencies)
        out["change_to_all_s_max"] = max(latencies)
        out["change_sync_part_s_median"] = statistics.median(syncs)
        out["bytes_per_stream_per_change"] = statistics.median(sizes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        hub.close()
        state.close()
        return out

    def _stream(self, hub: poll.PollHub, state: State, node_id: int) -> asyncio.Task[None]:
        """The server side of one node's connection with an open /machine/map stream."""
        machine = MachinePrivate.generate(os.urandom)
        control = _CONTROL
        hs = base.ClientHandshake(machine, control.public(), MachinePrivate.generate(os.urandom))
        _, _, _, conn = base.accept_initiation(hs.initiation(), control, MachinePrivate.generate(os.urandom))
        sink = Sink(self, node_id)
        session = noise.NoiseSession(None, sink, conn, _no_handler)  # type: ignore[arg-type]
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(
            1,
            [(":method", "POST"), (":scheme", "https"), (":authority", "c"), (":path", "/machine/map")],
            end_stream=True,
        )
        session.h2.initiate_connection()
        session.h2.receive_data(client.data_to_send())
        session.h2.data_to_send()
        resp = noise.Response(session, 1)
        node = state.get_node(node_id)
        assert node is not None
        ms = poll.MapSession(hub, node_id, 130, resp)
        hub.sessions[node_id] = ms
        ms.keepalive_at = float("inf")
        return asyncio.ensure_future(ms.run())


_CONTROL = MachinePrivate.generate(os.urandom)


async def _no_handler(req: noise.Request, resp: noise.Response) -> None:
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, action="append", help="N (repeatable; default 1000 and 10000)")
    p.add_argument("--changes", type=int, default=5, help="endpoint changes timed per N (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--profile", action="store_true", help="print a cProfile of the timed changes")
    args = p.parse_args()
    sizes = args.nodes or [1000, 10000]
    results = []
    print("meshlet-control map fan-out, poll level with real h2 + Noise per stream (no sockets)")
    print("python %s on %s, %d CPUs" % (platform.python_version(), platform.machine(), os.cpu_count() or 0))
    for n in sizes:
        r = asyncio.run(Bench(n, args.changes, args.profile).run())
        results.append(r)
        print(
            "N=%-6d change->all %6.3f s (median of %d, worst %.3f; %.3f s of it inside the State call)  "
            "RSS %5.0f MB (state %4.0f MB)  %.0f B/stream  one full map %.2f s / %.0f kB  "
            "setup: register %.1f s, hub load %.2f s, streams %.1f s"
            % (n, r["change_to_all_s_median"], args.changes, r["change_to_all_s_max"],
               r["change_sync_part_s_median"], r["rss_streams_mb"], r["rss_state_mb"],
               r["bytes_per_stream_per_change"], r["one_full_map_s"], r["one_full_map_bytes"] / 1000,
               r["register_s"], r["hub_load_s"], r["streams_setup_s"])
        )  # fmt: skip
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
