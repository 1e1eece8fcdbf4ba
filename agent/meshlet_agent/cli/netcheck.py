"""`meshlet netcheck [--json]`: what the network looks like from this node, as `tailscale netcheck` shows it.

The daemon runs a fresh report on the shared UDP socket (the one WireGuard
uses, so the public address is the one peers would reach): UDP working, the
public IPv4 address and port, whether the NAT maps each destination
separately (MappingVariesByDestIP, "hard NAT": direct paths need the other
side to be easy), the nearest DERP region and each region's latency.

    Report:
    	* Time: 2026-11-22T07:30:00Z
    	* UDP: true
    	* IPv4: yes, 203.0.113.7:41641
    	* IPv6: no, not measured
    	* MappingVariesByDestIP: false
    	* Nearest DERP: Frankfurt
    	* DERP latency:
    		- fra: 12.3ms (Frankfurt)
"""

import argparse
import time
from typing import Any

from .common import add_socket_flag, ask, print_json

NETCHECK_TIMEOUT_S = 30.0
"""A report takes at most ~10 s (STUN 3 s, HTTPS 5 s, the mapping round 1 s); this is a hang guard."""


def add_parser(top: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = top.add_parser(
        "netcheck",
        help="print an analysis of the local network: UDP, public address, NAT type, DERP latencies",
        description="Run a network report from meshletd's UDP socket, like `tailscale netcheck`. "
        "Needs a running node (`meshlet up`): the DERP map comes from control.",
        epilog="examples:\n  meshlet netcheck\n  meshlet netcheck --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON (netcheck.Report's fields)")
    add_socket_flag(p)


def run(args: argparse.Namespace) -> int:
    report = ask(args, {"request": "netcheck"}, timeout_s=NETCHECK_TIMEOUT_S)["report"]
    if args.json:
        print_json(report)
    else:
        print(format_report(report), end="")
    return 0


def format_report(rep: dict[str, Any], now_unix: float | None = None) -> str:
    """The text form, from the JSON report."""
    t = time.gmtime(time.time() if now_unix is None else now_unix)
    lines = ["", "Report:", "\t* Time: %s" % time.strftime("%Y-%m-%dT%H:%M:%SZ", t)]
    lines.append("\t* UDP: %s" % ("true" if rep.get("UDP") else "false"))
    lines.append("\t* IPv4: yes, %s" % rep["GlobalV4"] if rep.get("GlobalV4") else "\t* IPv4: (no addr found)")
    lines.append("\t* IPv6: no, not measured")
    varies = rep.get("MappingVariesByDestIP")
    if varies is None:
        lines.append("\t* MappingVariesByDestIP: (unknown: needs STUN answers from two server IPs)")
    else:
        lines.append("\t* MappingVariesByDestIP: %s" % ("true" if varies else "false"))
    names: dict[str, Any] = rep.get("RegionNames") or {}
    latency: dict[str, int] = rep.get("RegionLatency") or {}
    v4: dict[str, int] = rep.get("RegionV4Latency") or {}

    def label(rid: str) -> tuple[str, str]:
        n = names.get(rid) or {}
        return str(n.get("Code") or rid), str(n.get("Name") or n.get("Code") or rid)

    home = str(rep.get("PreferredDERP") or "")
    lines.append("\t* Nearest DERP: %s" % (label(home)[1] if home and home != "0" else "[none]"))
    lines.append("\t* DERP latency:")
    order = sorted(set(names) | set(latency), key=lambda r: (r not in latency, latency.get(r, 0), int(r)))
    for rid in order:
        code, name = label(rid)
        ns = latency.get(rid)
        shown = "%.1fms" % (ns / 1e6) if ns is not None else ""
        how = " (https)" if ns is not None and rid not in v4 else ""
        lines.append("\t\t- %s: %s%s (%s)" % (code, shown, how, name))
    return "\n".join(lines) + "\n"
