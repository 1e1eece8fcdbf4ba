"""`meshlet-provision`: flashable images, enrollment QR codes and serial-console enrollment.

The subcommands arrive with issue 8; until then this entry point says so.
"""

import sys


def main(argv: "list[str] | None" = None) -> int:
    print("meshlet-provision: no subcommands yet (images, qr and serial arrive with issue 8)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
