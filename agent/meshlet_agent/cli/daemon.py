"""`meshlet daemon`: run the tailnet agent in the foreground (systemd runs it as meshletd)."""

import argparse
import asyncio
import logging
import os
import sys

from .. import knobs
from .. import log as agent_log
from .common import CliError

_EPILOG = """\
examples:
  sudo meshlet daemon                               # /var/lib/meshlet, /run/meshlet/meshletd.sock
  sudo meshlet daemon --socket-group meshlet -v     # members of group meshlet may use the CLI
  sudo meshlet daemon --state-dir /tmp/m2 --socket /tmp/m2.sock --tun meshlet1 --port 0
  meshlet daemon --print-unit | sudo tee /etc/systemd/system/meshletd.service
  sudo systemctl enable --now meshletd

It stays in the foreground and logs one line per event on stderr (journald priorities
under systemd). Needs root (or CAP_NET_ADMIN) for the TUN device and the system
resolver. SIGTERM or SIGINT: DNS restored, the TUN and the socket removed; keys and
prefs stay in the state directory, and the next start comes up by itself if it was up.
Then: `meshlet up --login-server URL --authkey KEY`.
"""


def add_parser(top: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    d = top.add_parser(
        "daemon",
        help="run the tailnet agent (meshletd) in the foreground",
        description="Run the tailnet agent: keys and login, the TUN device, WireGuard over DERP, MagicDNS, "
        "and the local API that the other commands use.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keys, prefs and the netmap cache (default: $MESHLET_STATE_DIR or /var/lib/meshlet)",
    )
    d.add_argument(
        "--socket",
        metavar="PATH",
        help="the local API socket (default: $MESHLET_SOCKET or /run/meshlet/meshletd.sock)",
    )
    d.add_argument(
        "--socket-group",
        metavar="GROUP",
        help="a group whose members may use the CLI without root (socket mode 0660)",
    )
    d.add_argument("--tun", metavar="NAME", default="meshlet0", help="the TUN interface (default meshlet0)")
    d.add_argument(
        "--port", metavar="PORT", type=int, default=41641, help="UDP port for WireGuard and disco (0 = any)"
    )
    d.add_argument("--verbose", "-v", action="store_true", help="log debug lines too")
    d.add_argument(
        "--print-unit", action="store_true", help="print the systemd unit (meshletd.service) and exit"
    )


def run(args: argparse.Namespace) -> int:
    from .. import daemon

    if args.print_unit:
        sys.stdout.write(daemon.unit_text(_this_command()))
        return 0
    if not 0 <= args.port <= 65535:
        raise CliError("--port %d is not a UDP port; use 1..65535, or 0 for any" % args.port)
    from ..tun import check_ifname

    check_ifname(args.tun)
    agent_log.setup(logging.DEBUG if args.verbose else logging.INFO)
    opts = daemon.DaemonOptions(
        state_dir=args.state_dir or knobs.state_dir(),
        socket_path=args.socket or knobs.daemon_socket(),
        socket_group=args.socket_group,
        tun=args.tun,
        port=args.port,
    )
    asyncio.run(daemon.run(opts))
    return 0


def _this_command() -> str:
    """How systemd should start this very installation: the `meshlet` script, or `python -m meshlet_agent`."""
    argv0 = os.path.abspath(sys.argv[0])
    if os.path.basename(argv0) == "meshlet" and os.access(argv0, os.X_OK):
        return argv0
    return "%s -m meshlet_agent" % sys.executable
