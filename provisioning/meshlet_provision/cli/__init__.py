"""`meshlet-provision`: board profiles, flashable images, enrollment QR codes, serial-console enrollment.

Each subcommand is a module here with `register(sub)` (adds its parser and
sets `func=run`) and `run(args) -> int`. Failures are one line on stderr,
`meshlet-provision: ` then the problem and the fix, with exit status 1 (2 for
a malformed command line, as argparse does).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..boards import BoardError
from ..qr import QrError
from ..serial_enroll import SerialEnrollError
from . import boards, image, qr, serial

PROG = "meshlet-provision"
EPILOG = """\
examples:
  meshlet-provision boards                                  # the supported boards
  meshlet-provision qr 'meshlet://enroll?…' --png label.png --label pi-kitchen
  meshlet-provision image --board rpi-4b --base raspios.img.xz --out pi.img --enroll-code 'meshlet://enroll?…'
  meshlet-provision serial /dev/ttyUSB0 --enroll-code 'meshlet://enroll?…' --login pi --password-file pw
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Prepare boards to join a meshlet tailnet: images, QR labels, serial enrollment.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (boards, image, qr, serial):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except (BoardError, QrError, SerialEnrollError) as e:
        print("%s: %s" % (PROG, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
