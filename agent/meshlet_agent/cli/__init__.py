"""The `meshlet` command line.

    meshlet daemon [--state-dir DIR] [--socket PATH] [--socket-group G] [--tun NAME] [--port N]
    meshlet up [--login-server URL] [--authkey KEY] ... | down | logout
    meshlet status [--json] | ip [-4|-6] [NAME] | ping [-c N] NAME | whois IP | netcheck [--json]
    meshlet wg up CONFIG | show [IFNAME] [--json] | genkey | genpsk | pubkey

One module per command group: daemon.py, tailnet.py (the commands that talk
to meshletd), wg.py. The parser is built by `build_parser()` alone, so
documentation can render `--help` without running anything. Every failure
prints one line, `meshlet:` followed by the problem and the fix, and exits
with a non-zero status:

    1  the operation failed (bad config, no TUN, daemon not running, peer unknown)
    2  the command line itself is wrong (argparse's convention)
"""

import argparse
import sys
from collections.abc import Sequence

from meshlet import __version__

from .. import knobs
from . import daemon as daemon_cmd
from . import netcheck as netcheck_cmd
from . import tailnet, wg
from .common import CliError, add_socket_flag
from .wg import ago, format_show, human_bytes, pretty_time

__all__ = ["CliError", "ago", "build_parser", "format_show", "human_bytes", "main", "pretty_time"]

_EPILOG = """\
examples:
  sudo meshlet daemon &                     # or: systemctl enable --now meshletd
  meshlet up --login-server https://control.example.com --authkey mlt-auth-…
  meshlet status
  meshlet ping pi-kitchen
  meshlet netcheck
  meshlet ip -4
  meshlet wg up /etc/wireguard/wg0.conf     # plain WireGuard, no tailnet

Operator's guide: docs/agent.md.
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole `meshlet` command line (used by main() and by the docs)."""
    parser = argparse.ArgumentParser(
        prog="meshlet",
        description="meshlet: a small Tailscale-compatible mesh."
        " `meshlet daemon` runs the tailnet agent, the other commands talk to it;"
        " `meshlet wg` runs a userspace WireGuard interface.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="meshlet " + __version__)
    add_socket_flag(parser, top=True)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    daemon_cmd.add_parser(top)
    tailnet.add_parsers(top)
    netcheck_cmd.add_parser(top)
    wg.add_parser(top)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        knobs.check_all()
        if args.command == "wg":
            return wg.run(args)
        if args.command == "daemon":
            return daemon_cmd.run(args)
        if args.command == "netcheck":
            return netcheck_cmd.run(args)
        return tailnet.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - every expected failure type is listed in _reportable
        if not _reportable(e):
            raise
        print("meshlet: %s" % e, file=sys.stderr)
        return 1


def _reportable(e: Exception) -> bool:
    from meshlet_host.statefile import StateFileError

    from ..daemon import DaemonError
    from ..knobs import KnobError
    from ..localapi import LocalApiError
    from ..tun import TunError
    from ..udp import UdpError
    from ..wgconfig import ConfigError
    from ..wgup import WgUpError

    return isinstance(
        e,
        (
            CliError,
            ConfigError,
            TunError,
            UdpError,
            LocalApiError,
            WgUpError,
            DaemonError,
            StateFileError,
            KnobError,
        ),
    )
