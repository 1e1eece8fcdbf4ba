"""`meshlet-provision qr`: an enrollment code as a terminal QR code or a printable label."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meshlet_host.qr import print_terminal_qr

from .. import qr


def register(sub: Any) -> None:
    p = sub.add_parser(
        "qr",
        help="print an enrollment code as a QR code, or write a printable label",
        description="Checks CODE, then prints it as a QR code on the terminal or writes a label "
        "(QR code, server, optional text) to print and stick on the board.",
        epilog="examples:\n"
        '  meshlet-provision qr "$(meshlet-control keys create --json | jq -r .enroll_uri)"\n'
        "  meshlet-provision qr 'meshlet://enroll?…' --png pi-kitchen.png --label pi-kitchen\n"
        "  meshlet-provision qr 'meshlet://enroll?…' --svg label.svg\n"
        "The label carries the pre-auth key in its QR code: treat it as a secret until the key is used.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("code", metavar="CODE", help="the enrollment code (meshlet://enroll?…)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--png", metavar="FILE", help="write a PNG label")
    where.add_argument("--svg", metavar="FILE", help="write an SVG label")
    p.add_argument("--label", metavar="TEXT", help="a line of text on the label (a host name, a room)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    parsed = qr.check_code(args.code)
    path = args.png or args.svg
    if path:
        qr.write_label(args.code, path, kind="png" if args.png else "svg", label=args.label)
        print("wrote %s (server %s)" % (path, parsed.server))
        return 0
    print_terminal_qr(args.code.strip(), sys.stdout)
    if args.label:
        print(args.label)
    print("server: %s" % parsed.server)
    return 0
