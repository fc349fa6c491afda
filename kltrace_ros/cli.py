"""`kltrace` command line: one entry point for the ROS-free core.

Each sub-command lives next to the code it exposes; this module only wires them up.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kltrace", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from kltrace_ros import commands

    commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as err:  # user errors: one clear line, no traceback
        print(f"kltrace {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
