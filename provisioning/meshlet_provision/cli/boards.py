"""`meshlet-provision boards`: the supported boards, as a table, JSON or boards/README.md's Markdown."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import boards


def register(sub: Any) -> None:
    p = sub.add_parser(
        "boards",
        help="list the supported boards",
        description="List the board profiles (boards/<id>/profile.toml).",
        epilog="examples:\n  meshlet-provision boards\n  meshlet-provision boards --json | jq '.[].id'\n"
        "  meshlet-provision boards --write-readme   # after editing a profile\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print every profile as a JSON list")
    out.add_argument("--markdown", action="store_true", help="print the support table (boards/README.md's)")
    out.add_argument("--write-readme", action="store_true", help="regenerate the table in boards/README.md")
    p.add_argument("board", nargs="?", help="show one board only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.write_readme:
        print("wrote %s" % boards.write_readme())
        return 0
    found = [boards.load_board(args.board)] if args.board else boards.all_boards()
    if args.json:
        data: Any = found[0].to_json() if args.board else [b.to_json() for b in found]
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.markdown:
        sys.stdout.write(boards.markdown_table(found))
    else:
        width = max(len(b.id) for b in found)
        for b in found:
            print("%-*s  %-5s  %-7s  %s  (QEMU: %s)" % (
                width, b.id, b.arch, _ram(b.ram_mb), b.name, b.tested_in_qemu,
            ))  # fmt: skip
    return 0


def _ram(mb: int) -> str:
    return "%d GB" % (mb // 1024) if mb % 1024 == 0 else "%d MB" % mb
