"""The tailnet commands, which talk to meshletd (`meshlet daemon`): Tailscale's habits.

    meshlet up [--login-server URL] [--authkey KEY | file:PATH] [--enroll-code CODE] ...
    meshlet down | logout
    meshlet status [--json]
    meshlet ip [-4 | -6] [NAME]
    meshlet ping [-c N] [--timeout S] NAME
    meshlet whois IP [--json]

Each sends one request over the daemon's socket (localapi) and prints the
answer; the formatting functions are pure so tests feed them status documents.
"""

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from meshlet_host.qr import print_terminal_qr

from .common import CliError, add_socket_flag, ask, print_json

__all__ = ["add_parsers", "run"]

_RAW = argparse.RawDescriptionHelpFormatter

_UP_EPILOG = """\
examples:
  meshlet up --login-server https://control.example.com --authkey mlt-auth-…
  meshlet up --login-server http://10.0.0.1:8080 --authkey file:/etc/meshlet/authkey
  meshlet up --enroll-code 'meshlet://enroll?server=...&key=mkey:...&authkey=...'
  meshlet up --hostname pi-kitchen --advertise-tags tag:sensor,tag:kitchen --accept-dns=false
  meshlet up                                  # again after `meshlet down`: same server, same key

Without --authkey the control server may answer with a login URL: it is printed with a
QR code to scan, and `meshlet up` waits until someone approves the node. The daemon
remembers the server and keeps the node logged in across reboots; `meshlet down` stops
it, `meshlet logout` forgets the login. Exit status: 0 once Running, 1 on refusal or
--timeout.
"""

_STATUS_EPILOG = """\
examples:
  meshlet status
  meshlet status --json | jq '.Peer[] | {HostName, Online, Relay}'

Columns: tailnet IP, name, owner, OS, path. The path is "-" (no traffic yet), "idle",
"active; relay \\"<DERP region>\\"" or "active; direct <ip:port>", "offline" when control says
the peer is not connected; tx/rx count bytes since the daemon started.
"""


def add_parsers(top: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Adds up, down, logout, status, ip, ping and whois."""
    up = top.add_parser(
        "up",
        help="connect to the tailnet (log in if needed) and wait until running",
        description="Connect this machine to a tailnet through meshletd, like `tailscale up`.",
        epilog=_UP_EPILOG,
        formatter_class=_RAW,
    )
    up.add_argument(
        "--login-server", metavar="URL", help="the control server (remembered after the first up)"
    )
    up.add_argument(
        "--authkey",
        metavar="KEY",
        help="a pre-auth key, or file:PATH to read it from a file (keeps it out of ps)",
    )
    up.add_argument(
        "--enroll-code",
        metavar="CODE",
        help="a meshlet://enroll?... code (server + key in one, e.g. from a QR)",
    )
    up.add_argument("--hostname", metavar="NAME", help="the name in the tailnet (default: the machine's)")
    up.add_argument(
        "--advertise-tags",
        metavar="TAGS",
        default="",
        help="comma-separated ACL tags to request, e.g. tag:server,tag:pi",
    )
    up.add_argument(
        "--accept-dns",
        metavar="BOOL",
        nargs="?",
        const=True,
        default=True,
        type=parse_bool,
        help="use MagicDNS (100.100.100.100) as the system resolver (default true; --accept-dns=false)",
    )
    up.add_argument(
        "--ephemeral", action="store_true", help="register as ephemeral (removed when it goes away)"
    )
    up.add_argument("--force-reauth", action="store_true", help="log in again with a new node key")
    up.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=0.0,
        help="give up after S seconds (default 0: wait forever)",
    )
    up.add_argument("--json", action="store_true", help="print the final status as JSON")
    add_socket_flag(up)

    for name, text in (
        ("down", "disconnect from the tailnet; stay logged in (`meshlet up` reconnects)"),
        ("logout", "disconnect and log out: the node key is expired at control and forgotten"),
    ):
        p = top.add_parser(
            name,
            help=text,
            description="meshlet %s: %s." % (name, text),
            epilog="example:\n  meshlet %s\n" % name,
            formatter_class=_RAW,
        )
        add_socket_flag(p)

    st = top.add_parser(
        "status",
        help="this node and its peers, like `tailscale status`",
        description="Show the backend state, this node and the tailnet's peers.",
        epilog=_STATUS_EPILOG,
        formatter_class=_RAW,
    )
    st.add_argument("--json", action="store_true", help="print `tailscale status --json`'s shape")
    add_socket_flag(st)

    ip = top.add_parser(
        "ip",
        help="print this node's (or a peer's) tailnet addresses",
        description="Print tailnet IP addresses, one a line, IPv4 first.",
        epilog="examples:\n  meshlet ip\n  meshlet ip -4\n  meshlet ip pi-kitchen\n  ssh pi@$(meshlet ip -4 pi-kitchen)\n",
        formatter_class=_RAW,
    )
    fam = ip.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="only4", action="store_true", help="only the IPv4 address")
    fam.add_argument("-6", dest="only6", action="store_true", help="only the IPv6 address")
    ip.add_argument("name", metavar="NAME", nargs="?", help="a peer's name or address (default: this node)")
    ip.add_argument("--json", action="store_true", help="print the addresses as a JSON list")
    add_socket_flag(ip)

    ping = top.add_parser(
        "ping",
        help="disco-ping a peer: is it reachable, through which path, how fast",
        description="Ping a peer at the tailnet level (disco), like `tailscale ping`. It does not need the "
        "peer to answer ICMP, and says whether the path is a DERP relay or direct.",
        epilog="examples:\n  meshlet ping pi-kitchen\n  meshlet ping -c 5 100.64.0.2\n"
        "  meshlet ping --timeout 2 pi-kitchen.tail.example\n",
        formatter_class=_RAW,
    )
    ping.add_argument("target", metavar="NAME", help="a peer's name, full MagicDNS name or tailnet IP")
    ping.add_argument("-c", "--count", type=int, default=1, metavar="N", help="pings to send (default 1)")
    ping.add_argument("--timeout", type=float, default=5.0, metavar="S", help="wait per ping (default 5 s)")
    ping.add_argument(
        "--until-direct", type=parse_bool, default=True, metavar="BOOL",
        help="stop at the first pong over a direct path (default true, as tailscale ping)",
    )  # fmt: skip
    ping.add_argument("--json", action="store_true", help="print the results as JSON")
    add_socket_flag(ping)

    who = top.add_parser(
        "whois",
        help="which node and user own a tailnet address",
        description="Show the node and the user behind a tailnet IP, from the netmap.",
        epilog="examples:\n  meshlet whois 100.64.0.2\n  meshlet whois --json fd7a:115c:a1e0::2\n",
        formatter_class=_RAW,
    )
    who.add_argument("ip", metavar="IP", help="a tailnet address")
    who.add_argument("--json", action="store_true", help="print the node and user as JSON")
    add_socket_flag(who)


def parse_bool(text: str) -> bool:
    """`--accept-dns=false` as Tailscale's flags write booleans."""
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError("%r is not true or false" % text)


def run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "up":
        return cmd_up(args)
    if cmd in ("down", "logout"):
        reply = ask(args, {"request": cmd}, timeout_s=30.0)
        if reply.get("warning"):
            print("meshlet: %s" % reply["warning"], file=sys.stderr)
        return 0
    if cmd == "status":
        status = ask(args, {"request": "status"})["status"]
        if args.json:
            print_json(status)
            return 0
        text, code = format_status(status)
        print(text)
        return code
    if cmd == "ip":
        ips = filter_ips(ask(args, {"request": "ip", "name": args.name})["ips"], args.only4, args.only6)
        if args.json:
            print_json(ips)
        else:
            for ip in ips:
                print(ip)
        return 0
    if cmd == "ping":
        return cmd_ping(args)
    if cmd == "whois":
        reply = ask(args, {"request": "whois", "ip": args.ip})
        if args.json:
            print_json({"node": reply["node"], "user": reply["user"]})
        else:
            print(format_whois(reply))
        return 0
    raise AssertionError("unhandled command %r" % cmd)  # pragma: no cover


# --- up ----------------------------------------------------------------------------------


def read_authkey(value: "str | None") -> str:
    """`--authkey KEY` or `--authkey file:PATH` (first line of the file)."""
    if not value:
        return ""
    if not value.startswith("file:"):
        return value
    path = value[len("file:") :]
    try:
        with open(path, encoding="utf-8") as f:
            key = f.readline().strip()
    except OSError as e:
        raise CliError("cannot read the auth key from %s: %s; check the path" % (path, e.strerror)) from None
    if not key:
        raise CliError("%s is empty; put the pre-auth key on its first line" % path)
    return key


def up_request(args: argparse.Namespace) -> dict[str, Any]:
    tags = [t.strip() for t in args.advertise_tags.split(",") if t.strip()]
    for t in tags:
        if not t.startswith("tag:") or len(t) <= 4:
            raise CliError("--advertise-tags: %r is not a tag; write tags like tag:server,tag:pi" % t)
    if args.authkey and args.enroll_code:
        raise CliError("give --authkey or --enroll-code, not both (the code carries its own key)")
    return {
        "request": "up",
        "login_server": args.login_server,
        "authkey": read_authkey(args.authkey) or None,
        "enroll_code": args.enroll_code,
        "hostname": args.hostname,
        "advertise_tags": tags,
        "accept_dns": args.accept_dns,
        "ephemeral": args.ephemeral,
        "force_reauth": args.force_reauth,
    }


def cmd_up(args: argparse.Namespace) -> int:
    ask(args, up_request(args), timeout_s=60.0)
    status = wait_until_running(
        lambda: ask(args, {"request": "status"})["status"],
        sys.stderr,
        args.timeout,
        interactive=sys.stderr.isatty(),
    )
    if args.json:
        print_json(status)
    else:
        me = status.get("Self") or {}
        print(
            "meshlet is up: %s, %s"
            % (
                me.get("DNSName", "").rstrip(".") or me.get("HostName", "?"),
                " ".join(status.get("TailscaleIPs") or []),
            )
        )
    return 0


def wait_until_running(
    get_status: Callable[[], dict[str, Any]],
    err: TextIO,
    timeout_s: float,
    interactive: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
    poll_s: float = 0.5,
) -> dict[str, Any]:
    """Polls status until Running, printing progress once per change.

    Raises:
        CliError: the daemon reports an error (refused key, no TUN), or --timeout passed.
    """
    deadline = now() + timeout_s if timeout_s > 0 else None
    shown: set[str] = set()
    while True:
        st = get_status()
        state = st.get("BackendState", "")
        if state == "Running":
            return st
        if st.get("Error"):
            raise CliError(str(st["Error"]))
        if state == "Stopped":
            raise CliError("the daemon stopped instead of coming up; see `meshlet status` and its log")
        for h in st.get("Health") or []:
            if h not in shown and not h.startswith("not logged in"):
                shown.add(h)
                err.write("meshlet: %s\n" % h)  # e.g. control unreachable: why `up` is still waiting
        url = st.get("AuthURL") or ""
        if url and url not in shown:
            shown.add(url)
            err.write("\nTo authenticate, visit:\n\n\t%s\n\n" % url)
            if interactive:
                print_terminal_qr(url, err)
        elif state == "NeedsMachineAuth" and state not in shown:
            shown.add(state)
            err.write("waiting for the tailnet admin to approve this machine…\n")
        elif state in ("Starting", "NoState", "NeedsLogin") and "wait" not in shown and not url:
            shown.add("wait")
            err.write("waiting for control…\n")
        if deadline is not None and now() >= deadline:
            raise CliError(
                "not running after %g s (state %s); raise --timeout or see `meshlet status` for what it waits for"
                % (timeout_s, state)
            )
        sleep(poll_s)


# --- status ------------------------------------------------------------------------------


def format_status(st: dict[str, Any]) -> tuple[str, int]:
    """`tailscale status`'s table, and the exit status (1 unless Running)."""
    state = st.get("BackendState", "")
    lines: list[str] = []
    if state != "Running":
        if state == "NeedsLogin":
            if st.get("AuthURL"):
                lines.append("Logged out.\nLog in at: %s" % st["AuthURL"])
            else:
                lines.append("Logged out: run `meshlet up --login-server URL --authkey KEY`")
        elif state == "Stopped":
            lines.append("meshlet is stopped: run `meshlet up`")
        elif state == "NeedsMachineAuth":
            lines.append("Machine is not yet approved by the tailnet admin.")
        else:
            lines.append("meshlet is %s." % (state or "in an unknown state"))
        lines.extend(_health_lines(st))
        return "\n".join(lines), 1
    users = st.get("User") or {}
    rows = []
    me = st.get("Self") or {}
    rows.append([_first_ip(me), _name(me, st), _owner(me, users), me.get("OS") or "-", "-"])
    peers = sorted((st.get("Peer") or {}).values(), key=lambda p: _name(p, st))
    for p in peers:
        rows.append([_first_ip(p), _name(p, st), _owner(p, users), p.get("OS") or "-", peer_path(p)])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    health = _health_lines(st)
    if health:
        lines.append("")
        lines.extend(health)
    return "\n".join(lines), 0


def peer_path(p: dict[str, Any]) -> str:
    """The last column: how this peer is reached (Tailscale's wording)."""
    traffic = bool(p.get("TxBytes") or p.get("RxBytes"))
    offline = not p.get("Online")
    if not p.get("Active"):
        if traffic:
            text = "idle" + ("; offline" if offline else "")
        elif offline:
            text = "offline"
        else:
            text = "-"
    else:
        text = "active"
        if p.get("CurAddr"):
            text += "; direct %s" % p["CurAddr"]
        elif p.get("Relay"):
            text += '; relay "%s"' % p["Relay"]
        if offline:
            text += "; offline"
    if traffic:
        text += ", tx %d rx %d" % (p.get("TxBytes") or 0, p.get("RxBytes") or 0)
    return text


def _first_ip(p: dict[str, Any]) -> str:
    ips = p.get("TailscaleIPs") or []
    return str(ips[0]) if ips else "-"


def _name(p: dict[str, Any], st: dict[str, Any]) -> str:
    """The MagicDNS name without the tailnet's suffix (`pi-kitchen`), else the host name."""
    dns = str(p.get("DNSName") or "").rstrip(".")
    suffix = str(st.get("MagicDNSSuffix") or "")
    if dns and suffix and dns.endswith("." + suffix):
        return dns[: -len(suffix) - 1]
    return dns or str(p.get("HostName") or "-")


def _owner(p: dict[str, Any], users: dict[str, Any]) -> str:
    if p.get("Tags"):
        return "tagged-devices"
    profile = users.get(str(p.get("UserID"))) or {}
    login = str(profile.get("LoginName") or "")
    if "@" in login:
        return login.split("@", 1)[0] + "@"
    return login or "-"


def _health_lines(st: dict[str, Any]) -> list[str]:
    health = st.get("Health") or []
    if not health:
        return []
    return ["# Health check:"] + ["#     - %s" % h for h in health]


# --- ip, ping, whois -----------------------------------------------------------------------


def filter_ips(ips: list[str], only4: bool, only6: bool) -> list[str]:
    if only4:
        return [ip for ip in ips if ":" not in ip][:1]
    if only6:
        return [ip for ip in ips if ":" in ip][:1]
    return ips


def cmd_ping(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise CliError("-c must be at least 1")
    if args.timeout <= 0:
        raise CliError("--timeout must be more than 0 seconds")
    req: dict[str, Any] = {"request": "ping", "target": args.target, "count": args.count, "timeout_s": args.timeout}
    if not args.until_direct:
        req["until_direct"] = False  # the daemon's default is true
    pongs = ask(args, req, timeout_s=args.count * args.timeout + 10.0)["pongs"]
    if args.json:
        print_json(pongs)
    else:
        for p in pongs:
            print(format_pong(p))
    if not any("via" in p for p in pongs):
        if not args.json:
            print(
                "meshlet: no reply from %s; is it online? (`meshlet status`)" % args.target,
                file=sys.stderr,
            )
        return 1
    return 0


def format_pong(p: dict[str, Any]) -> str:
    """`pong from pi-kitchen (100.64.0.2) via DERP(fra) in 3ms`, as tailscale ping writes it."""
    who = "%s (%s)" % (p.get("node", "?"), p.get("ip", "?"))
    if "via" in p:
        return "pong from %s via %s in %s" % (who, p["via"], format_ms(float(p.get("latency_ms", 0.0))))
    return "no pong from %s: %s" % (who, p.get("error", "no reply"))


def format_ms(ms: float) -> str:
    """Whole milliseconds, as Go prints a Duration rounded to 1ms; below that, one decimal."""
    if ms >= 1.0:
        return "%dms" % round(ms)
    return "%.1fms" % ms


def format_whois(reply: dict[str, Any]) -> str:
    node, user = reply.get("node") or {}, reply.get("user") or {}
    lines = [
        "Machine:",
        "  Name:      %s" % str(node.get("Name") or "").rstrip("."),
        "  ID:        %s" % node.get("ID"),
        "  Addresses: %s" % ", ".join(node.get("Addresses") or []),
    ]
    if node.get("OS"):
        lines.append("  OS:        %s" % node["OS"])
    if node.get("Tags"):
        lines.append("  Tags:      %s" % ", ".join(node["Tags"]))
    lines.append("User:")
    lines.append("  Name:      %s" % (user.get("LoginName") or "-"))
    if user.get("DisplayName"):
        lines.append("  Display:   %s" % user["DisplayName"])
    lines.append("  ID:        %s" % user.get("ID"))
    return "\n".join(lines)
