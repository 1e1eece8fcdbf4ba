"""What every command group shares: the one-line error type and talking to meshletd."""

import argparse
import json
import sys
from typing import Any

from .. import knobs, localapi


class CliError(Exception):
    """A failure to report as one `meshlet: ...` line with exit status 1."""


def socket_path(args: argparse.Namespace) -> str:
    """`--socket`, else $MESHLET_SOCKET, else /run/meshlet/meshletd.sock."""
    return getattr(args, "socket", None) or knobs.daemon_socket()


def ask(
    args: argparse.Namespace, req: dict[str, Any], timeout_s: float = localapi.CLIENT_TIMEOUT_S
) -> dict[str, Any]:
    """One request to meshletd; every failure becomes a CliError that names the fix."""
    path = socket_path(args)
    try:
        return localapi.call(path, req, timeout_s)
    except localapi.NotRunningError:
        raise CliError(
            "cannot reach meshletd at %s: is `meshlet daemon` running? (systemctl start meshletd)" % path
        ) from None
    except localapi.SocketPermissionError:
        raise CliError(
            "cannot reach meshletd at %s: permission denied; run the command as root (sudo), or start the "
            "daemon with --socket-group GROUP and add your user to that group" % path
        ) from None
    except localapi.RefusedError as e:
        raise CliError(e.reason) from None


def add_socket_flag(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """`--socket PATH`, accepted before the command (`meshlet --socket X status`) and after it."""
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None if top else argparse.SUPPRESS,
        help="meshletd's socket (default: $MESHLET_SOCKET or /run/meshlet/meshletd.sock)",
    )


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
