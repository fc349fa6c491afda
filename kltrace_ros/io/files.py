"""Outputs that are either complete or absent: written under a temporary name, renamed when done."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: Path) -> Path:
    """``dir/name.partial.ext`` for ``dir/name.ext`` (the extension kept: writers pick formats by it)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def discard(path: Path) -> None:
    """Remove a file or folder if it exists."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


@contextmanager
def complete_or_absent(path: Path, replace: bool = True):
    """Yield a temporary path to write ``path`` through; rename it to ``path`` on success, delete it on error.

    ``replace``: an existing ``path`` is replaced (files only); otherwise it is an error (FileExistsError)."""
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} exists: choose a new output path")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory: give a file name for the output")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    discard(tmp)                                   # left by an interrupted run
    try:
        yield tmp
    except BaseException:
        discard(tmp)
        raise
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    """Valid JSON always (``allow_nan=False``: callers turn non-finite numbers into null first)."""
    with complete_or_absent(path) as tmp:
        tmp.write_text(json.dumps(obj, allow_nan=False))
