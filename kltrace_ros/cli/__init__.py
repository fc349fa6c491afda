"""`kltrace` command line: one entry point for the ROS-free core (``commands`` wires each
sub-command to the code it exposes)."""
from __future__ import annotations

import argparse
import sys

from .commands import register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kltrace", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, IsADirectoryError, ValueError) as err:  # user errors: one clear line
        print(f"kltrace {args.command}: error: {err}", file=sys.stderr)
        return 2
