"""Sub-commands of `kltrace` (argument parsing only; the work is done in the core)."""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("version", help="print the package version")
    p.set_defaults(func=_version)

    p = sub.add_parser("train", help="train the small default model (CellCode tokenizer + MotionLRAS) on CPU")
    p.add_argument("--out", type=Path, default=Path("runs/default"), help="output folder (checkpoints, log, plot)")
    p.add_argument("--minutes", type=float, default=60.0, help="time budget (ignored with --steps)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--ckpt-minutes", type=float, default=3.0, help="checkpoint period")
    p.add_argument("--no-debian", action="store_true",
                   help="train on scikit-image's images only (no apt-get download of opencv-doc/python3-imageio)")
    p.set_defaults(func=_train)


def _version(args) -> int:
    from kltrace_ros import __version__

    print(__version__)
    return 0


def _train(args) -> int:
    from kltrace_ros.lras.train import train

    train(args.out, minutes=args.minutes, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
          resume=args.resume, ckpt_minutes=args.ckpt_minutes, threads=args.threads, debian=not args.no_debian)
    return 0
