"""`meshlet wg ...`: userspace WireGuard interfaces from wg-quick configs (docs/wireguard.md).

meshlet wg up CONFIG [--ifname NAME] [--foreground] [-v]
meshlet wg show [IFNAME] [--json]
meshlet wg genkey | genpsk | pubkey
"""

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
import time
from typing import Any

from meshlet.key import NodePrivate

from .. import log as agent_log
from .common import CliError

_EPILOG = """\
examples:
  meshlet wg genkey | tee wg0.key | meshlet wg pubkey > wg0.pub
  meshlet wg up /etc/wireguard/wg0.conf          # interface wg0, runs until Ctrl-C or SIGTERM
  meshlet wg up ./lab.conf --ifname mesh0 -v     # another name, debug logging
  meshlet wg show                                # every running meshlet interface
  meshlet wg show wg0 --json

The config is wg-quick's format ([Interface] PrivateKey, ListenPort, Address, MTU;
[Peer] PublicKey, PresharedKey, Endpoint, AllowedIPs, PersistentKeepalive).
See docs/wireguard.md.
"""

_UP_EPILOG = """\
example wg0.conf:
  [Interface]
  PrivateKey = <output of `meshlet wg genkey`>
  ListenPort = 51820
  Address = 100.64.0.1/32

  [Peer]
  PublicKey = <the peer's `wg pubkey`>
  Endpoint = 192.0.2.2:51820
  AllowedIPs = 100.64.0.2/32
  PersistentKeepalive = 25

Needs root (or CAP_NET_ADMIN) for the TUN device. Logs go to stderr, one line each
(with journald priority prefixes under systemd). SIGTERM or SIGINT removes the
interface, its addresses and routes. Status: `meshlet wg show NAME`.
"""


def add_parser(top: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Adds `wg` and its subcommands to the top-level parser."""
    wg = top.add_parser(
        "wg",
        help="userspace WireGuard interfaces (wg-quick configs)",
        description="Run and inspect userspace WireGuard interfaces, compatible with wg and wireguard-go.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = wg.add_subparsers(dest="wg_command", metavar="SUBCOMMAND", required=True)

    up = sub.add_parser(
        "up",
        help="create an interface from a wg-quick config and run it",
        description="Create a TUN interface from a wg-quick style config and run WireGuard on it.",
        epilog=_UP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    up.add_argument("config", metavar="CONFIG", help="the config file, e.g. /etc/wireguard/wg0.conf")
    up.add_argument(
        "--ifname",
        metavar="NAME",
        help="interface name (default: CONFIG's file name without .conf; max 15 chars)",
    )
    up.add_argument(
        "--foreground",
        "-f",
        action="store_true",
        help="stay in the foreground (the default and only mode, as `wireguard-go -f`;"
        " use systemd to detach)",
    )
    up.add_argument("--verbose", "-v", action="store_true", help="log debug lines too")

    show = sub.add_parser(
        "show",
        help="show running interfaces, like `wg show`",
        description="Show the state of running meshlet interfaces, in the format of `wg show`.",
        epilog="examples:\n  meshlet wg show\n  meshlet wg show wg0 --json | jq .peers[0].endpoint\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument("ifname", metavar="IFNAME", nargs="?", help="one interface (default: all)")
    show.add_argument("--json", action="store_true", help="print the full status as JSON, with counters")

    sub.add_parser(
        "genkey",
        help="print a new private key (base64), like `wg genkey`",
        description="Print a new random private key in WireGuard's base64 form. Keep it secret (umask 077).",
    )
    sub.add_parser(
        "genpsk",
        help="print a new pre-shared key (base64), like `wg genpsk`",
        description="Print a new random pre-shared key in WireGuard's base64 form.",
    )
    sub.add_parser(
        "pubkey",
        help="read a private key on stdin, print its public key, like `wg pubkey`",
        description="Read a base64 private key on stdin and print the matching public key.",
        epilog="example:\n  meshlet wg genkey | tee wg0.key | meshlet wg pubkey\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run(args: argparse.Namespace) -> int:
    if args.wg_command == "up":
        return _cmd_up(args)
    if args.wg_command == "show":
        return _cmd_show(args)
    if args.wg_command == "genkey":
        print(NodePrivate.generate(os.urandom).to_base64())
        return 0
    if args.wg_command == "genpsk":
        print(base64.b64encode(os.urandom(32)).decode())
        return 0
    if args.wg_command == "pubkey":
        return _cmd_pubkey()
    raise AssertionError("unhandled command %r" % args.wg_command)  # pragma: no cover


def _cmd_up(args: argparse.Namespace) -> int:
    from .. import wgup

    agent_log.setup(logging.DEBUG if args.verbose else logging.INFO)
    cfg = wgup.load_config(args.config)
    ifname = args.ifname or wgup.default_ifname(args.config)
    asyncio.run(wgup.run(cfg, ifname))
    return 0


def _cmd_pubkey() -> int:
    text = sys.stdin.read().strip()
    try:
        key = NodePrivate.from_base64(text)
    except Exception:  # noqa: BLE001 - any parse failure means the same thing here
        raise CliError(
            "stdin is not a base64 WireGuard private key (44 characters ending in '='); "
            "pipe in the output of `meshlet wg genkey`"
        ) from None
    print(key.public().to_base64())
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .. import localapi

    names = [args.ifname] if args.ifname else localapi.list_interfaces()
    statuses = []
    for name in names:
        try:
            statuses.append(localapi.request(name))
        except localapi.LocalApiError:
            if args.ifname:
                raise
            continue  # a stale socket among several: skip it
    if args.json:
        print(json.dumps(statuses[0] if args.ifname else statuses, indent=2))
        return 0
    if not statuses and not args.ifname:
        print(
            "meshlet: no meshlet interface is running; start one with `meshlet wg up CONFIG`", file=sys.stderr
        )
        return 1
    print("\n\n".join(format_show(s, int(time.time())) for s in statuses))
    return 0


# --- `wg show` formatting (wireguard-tools src/show.c) ---------------------------


def format_show(status: dict[str, Any], now_s: int) -> str:
    """Renders one interface's status as `wg show` does (without colours)."""
    lines = [
        "interface: %s" % status["interface"],
        "  public key: %s" % status["public_key"],
        "  private key: (hidden)",
        "  listening port: %d" % status["listening_port"],
    ]
    peers = sorted(status["peers"], key=lambda p: -int(p["latest_handshake_unix_ms"]))
    for p in peers:
        lines.append("")
        lines.append("peer: %s" % p["public_key"])
        if p.get("preshared_key"):
            lines.append("  preshared key: (hidden)")
        if p.get("endpoint"):
            lines.append("  endpoint: %s" % p["endpoint"])
        lines.append("  allowed ips: %s" % (", ".join(p["allowed_ips"]) or "(none)"))
        if p["latest_handshake_unix_ms"]:
            lines.append("  latest handshake: %s" % ago(p["latest_handshake_unix_ms"] // 1000, now_s))
        if p["rx_bytes"] or p["tx_bytes"]:
            lines.append(
                "  transfer: %s received, %s sent" % (human_bytes(p["rx_bytes"]), human_bytes(p["tx_bytes"]))
            )
        if p.get("persistent_keepalive_s"):
            lines.append("  persistent keepalive: every %s" % pretty_time(p["persistent_keepalive_s"]))
    return "\n".join(lines)


def pretty_time(seconds: int) -> str:
    """`1 minute, 5 seconds`: wg's pretty_time, omitting zero units."""
    parts = []
    for name, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append("%d %s%s" % (n, name, "" if n == 1 else "s"))
    return ", ".join(parts)


def ago(then_s: int, now_s: int) -> str:
    if now_s == then_s:
        return "Now"
    if now_s < then_s:
        return "(System clock wound backward; connection problems may ensue.)"
    return pretty_time(now_s - then_s) + " ago"


def human_bytes(n: int) -> str:
    if n < 1024:
        return "%d B" % n
    for unit, size in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)):
        if n < size * 1024:
            return "%.2f %s" % (n / size, unit)
    return "%.2f TiB" % (n / (1 << 40))
