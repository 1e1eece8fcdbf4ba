"""`meshlet-provision serial`: enroll a board over its serial console (USB adapter or a QEMU guest)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import serial_enroll


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serial",
        help="enroll a running board over its serial console",
        description="Wakes the console on PORT, logs in if it shows a login prompt, runs "
        "`meshlet up --enroll-code CODE --json` on the board and reports what the board says. "
        "Exit status 0 once the board is Running, 1 with the board's own error otherwise.",
        epilog="examples:\n"
        "  meshlet-provision serial /dev/ttyUSB0 --enroll-code 'meshlet://enroll?…' \\\n"
        "      --login pi --password-file pw --sudo\n"
        "  meshlet-provision serial socket://127.0.0.1:4555 --enroll-code 'meshlet://enroll?…' --hostname h\n"
        "A QEMU guest's console is reachable with -serial tcp:127.0.0.1:4555,server,nowait.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "port", metavar="PORT", help="/dev/ttyUSB0, /dev/ttyAMA0, socket://HOST:PORT (any pyserial URL)"
    )
    p.add_argument(
        "--enroll-code", required=True, metavar="CODE", help="the enrollment code (meshlet://enroll?…)"
    )
    p.add_argument("--hostname", metavar="H", help="the node's name in the tailnet")
    p.add_argument("--baud", type=int, default=serial_enroll.DEFAULT_BAUD, help="line speed (default 115200)")
    p.add_argument("--login", metavar="USER", help="user to log in as if the console shows a login prompt")
    p.add_argument("--password-file", metavar="F", help="file whose first line is USER's password")
    p.add_argument("--sudo", action="store_true", help="run meshlet up with sudo -n (when USER is not root)")
    p.add_argument(
        "--timeout", type=float, default=serial_enroll.DEFAULT_TIMEOUT_S, metavar="S",
        help="give up after S seconds (default 300)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise serial_enroll.SerialEnrollError("--timeout must be more than 0 seconds")
    password = _read_password(args.password_file) if args.password_file else None

    def progress(line: str) -> None:
        print("meshlet-provision: %s" % line, file=sys.stderr, flush=True)

    outcome = serial_enroll.enroll_over_serial(
        args.port,
        args.enroll_code,
        hostname=args.hostname,
        baud=args.baud,
        login=args.login,
        password=password,
        sudo=args.sudo,
        timeout_s=args.timeout,
        progress=progress,
    )
    if args.json:
        json.dump(outcome.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif outcome.ok:
        print(outcome.summary())
    if not outcome.ok:
        print("meshlet-provision: %s" % outcome.error, file=sys.stderr)
        return 1
    return 0


def _read_password(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except OSError as e:
        raise serial_enroll.SerialEnrollError(
            "cannot read --password-file %s: %s" % (path, e.strerror)
        ) from None
    return line.rstrip("\r\n")
