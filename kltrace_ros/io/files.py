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
def complete_or_absent(path: Path, replace: bool = True, folder: bool = False):
    """Yield a temporary path to write ``path`` through; move it to ``path`` on success, delete it on error.

    ``replace``: an existing ``path`` is replaced; otherwise it is an error (FileExistsError).
    ``folder``: ``path`` is a folder (several outputs, or a rosbag2 whose writer names its files after the
    folder): the temporary path has ``path``'s own name inside a ``<name>.partial`` staging folder and does
    not exist yet; the caller creates it."""
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} exists: choose a new output path")
    if path.is_dir() and not folder:
        raise IsADirectoryError(f"{path} is a directory: give a file name for the output")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial") if folder else None
    tmp = staging / path.name if folder else partial_path(path)
    discard(staging or tmp)                        # left by an interrupted run
    if staging is not None:
        staging.mkdir()
    try:
        yield tmp
    except BaseException:
        discard(staging or tmp)
        raise
    if folder:
        discard(path)                              # os.replace cannot replace a non-empty folder
    os.replace(tmp, path)
    if staging is not None:
        staging.rmdir()


def write_json(path: Path, obj) -> None:
    """Valid JSON always (``allow_nan=False``: callers turn non-finite numbers into null first)."""
    with complete_or_absent(path) as tmp:
        tmp.write_text(json.dumps(obj, allow_nan=False))
