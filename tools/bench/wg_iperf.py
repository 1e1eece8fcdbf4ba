"""iperf3 TCP through meshlet's userspace WireGuard vs through wireguard-go, side by side.

    .venv/bin/python tools/bench/wg_iperf.py [--seconds 10] [--rounds 3] [--direction both]
                                             [--json] [--profile] [--meshlet-env NAME=VALUE]

Needs root, wireguard-go, wg, iperf3 (shared/lab/README.md §2). One pair of
namespaces, two tunnels over the same veth, built once:

    namespace <p>a                              namespace <p>b
      meshlet       <p>ma 100.64.1.1 :51820  <->  wireguard-go <p>mb 100.64.1.2 :51820   path "meshlet"
      wireguard-go  <p>ga 100.64.2.1 :51821  <->  wireguard-go <p>gb 100.64.2.2 :51821   path "wireguard-go"

Each round runs one bounded iperf3 client (`-t SECONDS`, one TCP stream,
killed after SECONDS+20 s) over each path in turn, alternating which path
goes first, for each direction: `send` is a → b (meshlet or the a-side
wireguard-go encrypts), `recv` is b → a (`iperf3 -R`: it decrypts). Reported:
the median Mbit/s per path and direction, the ratio meshlet / wireguard-go,
and the a-side processes' RSS idle (after the first handshake, before load)
and peak (VmHWM, after the runs), with the CPU seconds each used under load
and CPU milliseconds per MiB of WireGuard traffic it handled, a figure that
suffers less than throughput when other jobs share the CPUs.

`--profile` runs meshlet under cProfile and prints the functions that took
the most time, in µs per packet (packets = IP packets through the TUN both
ways, from meshlet's own counters); profiling itself slows meshlet down, so
the throughput of a profiled run is not comparable.

Everything started is stopped by recorded PID and the namespaces are deleted,
also on Ctrl-C. A benchmark, not a test: it prints numbers and never fails on
them. On a shared 2-core machine runs vary by ±30 %: compare only the two
columns of the same run.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("meshlet_lab_netns", ROOT / "tests" / "interop" / "netns.py")
assert _spec is not None and _spec.loader is not None
netns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netns)

PATHS = {
    # name: (a-side tunnel address, b-side tunnel address, UDP port)
    "meshlet": ("100.64.1.1", "100.64.1.2", 51820),
    "wireguard-go": ("100.64.2.1", "100.64.2.2", 51821),
}
IPERF_PORT = 5299


def proc_stats(pid: int) -> dict[str, float]:
    """RSS and peak RSS (MiB) and CPU seconds of a process, from /proc."""
    out: dict[str, float] = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


class Bench:
    def __init__(self, lab: Any, profile_to: str | None = None, env: dict[str, str] | None = None) -> None:
        self.lab = lab
        self.procs: dict[str, Any] = {}
        self.profile_to = profile_to
        self.env = env or {}

    def setup(self) -> None:
        lab = self.lab
        keys = {n: netns.genkey() for n in ("ma", "mb", "ga", "gb")}
        # wireguard-go on both ends of the reference path, and on b's end of the meshlet path.
        for side, name, peer, path in (
            ("b", "mb", "ma", "meshlet"),
            ("a", "ga", "gb", "wireguard-go"),
            ("b", "gb", "ga", "wireguard-go"),
        ):
            ifname = lab.p + name
            self.procs[name] = lab.wireguard_go(side, ifname)
            mine, theirs, port = PATHS[path]
            if side == "b":
                mine, theirs = theirs, mine
            other = "a" if side == "b" else "b"
            key = lab.key_file(name + ".key", keys[name][0])
            lab.wg(
                side,
                "set",
                ifname,
                "private-key",
                key,
                "listen-port",
                str(port),
                "peer",
                keys[peer][1],
                "endpoint",
                "%s:%d" % (lab.under[other], port),
                "allowed-ips",
                theirs + "/32",
            )
            lab.ip(side, "address", "add", mine + "/24", "dev", ifname)
            lab.ip(side, "link", "set", ifname, "mtu", "1420", "up")
        mine, theirs, port = PATHS["meshlet"]
        conf = lab.key_file(
            "ma.conf",
            "\n".join(
                [
                    "[Interface]",
                    "PrivateKey = " + keys["ma"][0],
                    "ListenPort = %d" % port,
                    "Address = %s/24" % mine,
                    "[Peer]",
                    "PublicKey = " + keys["mb"][1],
                    "Endpoint = %s:%d" % (lab.under["b"], port),
                    "AllowedIPs = %s/32" % theirs,
                ]
            ),
        )
        ifname = lab.p + "ma"
        prof = ["-m", "cProfile", "-o", self.profile_to] if self.profile_to else []
        self.procs["ma"] = proc = lab.spawn(
            "a",
            "meshlet",
            [sys.executable, *prof, "-m", "meshlet_agent", "wg", "up", conf, "--ifname", ifname],
            env=self.env,
        )
        netns.wait_for(lambda: " up: " in proc.log() or not proc.alive(), 20, "meshlet to come up")
        if not proc.alive():
            raise SystemExit("meshlet did not start:\n" + proc.log())
        for path, (_, theirs, _) in PATHS.items():
            res = lab.ping("a", theirs, count=2, deadline_s=10)
            if res.returncode != 0:
                raise SystemExit("no ping over the %s path:\n%s\n%s" % (path, res.stdout, proc.log()))
        for path, (_, theirs, _) in PATHS.items():
            self.procs["iperf-" + path] = lab.spawn(
                "b", "iperf3-" + path, ["iperf3", "-s", "-B", theirs, "-p", str(IPERF_PORT)]
            )
        time.sleep(0.5)

    def iperf(self, path: str, seconds: int, reverse: bool) -> float:
        theirs = PATHS[path][1]
        args = ["iperf3", "-c", theirs, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"] + (
            ["-R"] if reverse else []
        )
        res = self.lab.run("a", "timeout", str(seconds + 20), *args, timeout=seconds + 30, check=False)
        try:
            end = json.loads(res.stdout)["end"]
            return float(end["sum_received"]["bits_per_second"]) / 1e6
        except (ValueError, KeyError) as e:
            print(
                "iperf3 over %s failed (%s): %s %s" % (path, e, res.stdout[-500:], res.stderr[-500:]),
                file=sys.stderr,
            )
            return 0.0


def wire_bytes(bench: Bench) -> dict[str, int]:
    """WireGuard bytes (received + sent) each a-side process has handled so far."""
    from meshlet_agent import localapi

    peer = localapi.request(bench.lab.p + "ma")["peers"][0]
    out = {"meshlet": int(peer["rx_bytes"]) + int(peer["tx_bytes"])}
    fields = bench.lab.wg("a", "show", bench.lab.p + "ga", "transfer").split()
    out["wireguard-go"] = int(fields[1]) + int(fields[2])
    return out


def run(
    seconds: int, rounds: int, directions: list[str], quiet: bool, profile_to: str | None, env: dict[str, str]
) -> dict[str, Any]:
    lab = netns.Lab(prefix="wgb%x" % (os.getpid() % 0xFFF))
    try:
        lab.up()
        bench = Bench(lab, profile_to, env)
        bench.setup()
        pids = {"meshlet": bench.procs["ma"].pid, "wireguard-go": bench.procs["ga"].pid}
        idle = {name: proc_stats(pid) for name, pid in pids.items()}
        results: dict[str, dict[str, list[float]]] = {d: {p: [] for p in PATHS} for d in directions}
        cpu_before = {name: proc_stats(pid)["cpu_s"] for name, pid in pids.items()}
        bytes_before = wire_bytes(bench)
        for r in range(rounds):
            for d in directions:
                order = list(PATHS) if r % 2 == 0 else list(reversed(PATHS))
                for path in order:
                    mbps = bench.iperf(path, seconds, d == "recv")
                    results[d][path].append(mbps)
                    if not quiet:
                        print("round %d %-4s %-12s %7.0f Mbit/s" % (r + 1, d, path, mbps), file=sys.stderr)
        after = {name: proc_stats(pid) for name, pid in pids.items()}
        bytes_after = wire_bytes(bench)
        meshlet_log = bench.procs["ma"].log()
        from meshlet_agent import localapi

        counters = localapi.request(lab.p + "ma")["counters"]
        bench.procs["ma"].stop(30)  # profiles are written at exit
    finally:
        lab.down()
    summary: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "directions": {}, "processes": {}}
    for d in directions:
        med = {p: statistics.median(v) for p, v in results[d].items()}
        summary["directions"][d] = {
            "runs_mbit_per_s": results[d],
            "median_mbit_per_s": med,
            "ratio_meshlet_over_wireguard_go": round(med["meshlet"] / med["wireguard-go"], 3)
            if med["wireguard-go"]
            else None,
        }
    for name in pids:
        summary["processes"][name] = {
            "idle_rss_mib": round(idle[name]["VmRSS"], 1),
            "peak_rss_mib": round(after[name]["VmHWM"], 1),
            "cpu_s_under_load": round(after[name]["cpu_s"] - cpu_before[name], 1),
            "cpu_ms_per_mib": round(
                (after[name]["cpu_s"] - cpu_before[name])
                * 1e3
                / max((bytes_after[name] - bytes_before[name]) / (1 << 20), 1e-9),
                2,
            ),
        }
    summary["meshlet_env"] = env
    summary["meshlet_counters"] = counters
    summary["meshlet_warnings"] = [
        ln for ln in meshlet_log.splitlines() if " WARNING " in ln or "Traceback" in ln
    ]
    return summary


def print_table(s: dict[str, Any]) -> None:
    print(
        "iperf3 TCP, 1 stream, %d s x %d rounds per cell, same namespaces and veth"
        % (s["seconds"], s["rounds"])
    )
    print("%-28s %12s %14s %8s" % ("direction", "meshlet", "wireguard-go", "ratio"))
    for d, r in s["directions"].items():
        label = "send (a->b, a encrypts)" if d == "send" else "recv (b->a, a decrypts)"
        med = r["median_mbit_per_s"]
        print(
            "%-28s %7.0f Mbit/s %7.0f Mbit/s %8.2f"
            % (label, med["meshlet"], med["wireguard-go"], r["ratio_meshlet_over_wireguard_go"] or 0)
        )
    print("%-28s %12s %14s %10s %14s" % ("a-side process", "idle RSS", "peak RSS", "CPU s", "CPU ms/MiB"))
    for name, p in s["processes"].items():
        print(
            "%-28s %8.1f MiB %10.1f MiB %10.1f %14.2f"
            % (name, p["idle_rss_mib"], p["peak_rss_mib"], p["cpu_s_under_load"], p["cpu_ms_per_mib"])
        )
    if s["meshlet_env"]:
        print("meshlet environment: " + " ".join("%s=%s" % kv for kv in s["meshlet_env"].items()))
    for line in s["meshlet_warnings"]:
        print("meshlet: " + line)


def print_profile(path: str, packets: int, top: int = 25) -> None:
    import pstats

    st = pstats.Stats(path)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    total = sum(v[2] for _, v in rows)
    print(
        "\nmeshlet profile: %d IP packets through the TUN; %.2f µs of profiled CPU per packet"
        % (packets, total * 1e6 / max(packets, 1))
    )
    print("%10s %10s %9s  %s" % ("self µs/pkt", "cum µs/pkt", "calls/pkt", "function"))
    for (file, line, func), (_cc, nc, tt, ct, _callers) in rows[:top]:
        where = "%s:%d(%s)" % (os.path.relpath(file, ROOT) if file.startswith("/") else file, line, func)
        print(
            "%10.2f %10.2f %9.2f  %s"
            % (tt * 1e6 / max(packets, 1), ct * 1e6 / max(packets, 1), nc / max(packets, 1), where)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="length of each iperf3 run (default 10)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="runs per path and direction; medians reported (default 3)"
    )
    ap.add_argument("--direction", choices=["send", "recv", "both"], default="both")
    ap.add_argument("--json", action="store_true", help="print JSON (progress still goes to stderr)")
    ap.add_argument(
        "--profile", action="store_true", help="run meshlet under cProfile and print where time goes"
    )
    ap.add_argument(
        "--meshlet-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for meshlet, e.g. MESHLET_WG_GSO=0 (repeatable)",
    )
    args = ap.parse_args()
    reason = netns.requirements_missing()
    if reason is None:
        for exe in ("iperf3",):
            if subprocess.run(["which", exe], capture_output=True).returncode != 0:
                reason = "`%s` is not installed: apt-get install %s" % (exe, exe)
    if reason:
        raise SystemExit("wg_iperf: " + reason)
    directions = ["send", "recv"] if args.direction == "both" else [args.direction]
    profile_to = "/tmp/meshlet-wg-iperf-%d.prof" % os.getpid() if args.profile else None
    env = dict(kv.split("=", 1) for kv in args.meshlet_env)
    summary = run(args.seconds, args.rounds, directions, args.json, profile_to, env)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    if profile_to:
        c = summary["meshlet_counters"]
        print_profile(profile_to, int(c.get("rx_packets", 0)) + int(c.get("tx_packets", 0)))
        os.unlink(profile_to)


if __name__ == "__main__":
    main()
