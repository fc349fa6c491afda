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


STAGING_MARK = ".kltrace-partial"      # inside a staging folder: this command made it, so it may delete it


@contextmanager
def complete_or_absent(path: Path, replace: bool = True, folder: bool = False):
    """Yield a temporary path to write ``path`` through; move it to ``path`` on success, delete it on error.

    ``replace``: an existing file ``path`` is replaced; otherwise it is an error (FileExistsError).
    ``folder``: ``path`` is a new folder (several outputs, or a rosbag2 whose writer names its files after the
    folder; an existing ``path`` is always an error): the temporary path has ``path``'s own name inside a
    ``<name>.partial`` staging folder marked as ours, and does not exist yet (the caller creates it). A
    staging folder without the mark is never deleted."""
    path = Path(path)
    if path.exists() and (folder or not replace):
        raise FileExistsError(f"{path} exists: choose a new output path")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory: give a file name for the output")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial") if folder else None
    tmp = staging / path.name if folder else partial_path(path)
    if staging is not None and staging.exists() and not (staging / STAGING_MARK).is_file():
        raise FileExistsError(f"{staging} exists and was not made by kltrace: move it away")
    discard(staging or tmp)                        # left by an interrupted run
    if staging is not None:
        staging.mkdir()
        (staging / STAGING_MARK).touch()
    try:
        yield tmp
    except BaseException:
        discard(staging or tmp)
        raise
    os.replace(tmp, path)
    if staging is not None:
        discard(staging)


def write_json(path: Path, obj) -> None:
    """Valid JSON always (``allow_nan=False``: callers turn non-finite numbers into null first)."""
    with complete_or_absent(path) as tmp:
        tmp.write_text(json.dumps(obj, allow_nan=False))
