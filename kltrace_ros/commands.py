"""Sub-commands of `kltrace` (argument parsing only; the work is done in the core)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("version", help="print the package version")
    p.set_defaults(func=_version)


def _version(args) -> int:
    from kltrace_ros import __version__

    print(__version__)
    return 0
