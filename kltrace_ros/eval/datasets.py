"""Two-frame ground-truth pairs (the ../shared/data/flow-gt layout) and TAP-Vid style queries.

A folder holds ``pairs.json`` (a list of {"id", ...}) and one sub-folder per pair with
``frame1.png``, ``frame2.png``, ``flow.flo`` (Middlebury; |value| > 1e9 = unknown) and an
optional ``occ.png`` (255 = occluded in frame 2).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kltrace_ros.io.images import read_rgb

FLO_MAGIC = 202021.25


def read_flo(path: Path) -> np.ndarray:
    """(H,W,2) float32 flow; unknown pixels become NaN."""
    with open(path, "rb") as f:
        magic = np.frombuffer(f.read(4), np.float32)
        if magic.size != 1 or magic[0] != FLO_MAGIC:
            raise ValueError(f"{path} is not a Middlebury .flo file (bad magic)")
        w, h = np.frombuffer(f.read(8), np.int32)
        data = np.frombuffer(f.read(), np.float32)
    if data.size != w * h * 2:
        raise ValueError(f"{path} is truncated: {data.size} values for {w}x{h}x2")
    flow = data.reshape(h, w, 2).copy()
    flow[np.abs(flow) > 1e9] = np.nan
    return flow


def write_flo(path: Path, flow: np.ndarray) -> None:
    """Middlebury .flo of an (H,W,2) flow; NaN (unknown) is written as 1e10."""
    h, w = flow.shape[:2]
    with open(path, "wb") as f:
        np.array([FLO_MAGIC], np.float32).tofile(f)
        np.array([w, h], np.int32).tofile(f)
        np.nan_to_num(flow.astype(np.float32), nan=1e10).tofile(f)


@dataclass
class Pair:
    id: str
    frame1: np.ndarray
    frame2: np.ndarray
    flow: np.ndarray              # (H,W,2), NaN = unknown
    occ: np.ndarray | None        # (H,W) bool, True = occluded in frame 2
    info: dict


def load_pairs(root: Path) -> list[Pair]:
    root = Path(root)
    index = root / "pairs.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: point `kltrace eval` at a folder in the flow-gt layout")
    out = []
    for entry in json.loads(index.read_text()):
        d = root / entry["id"]
        occ = read_rgb(d / "occ.png")[..., 0] > 127 if (d / "occ.png").is_file() else None
        out.append(Pair(entry["id"], read_rgb(d / "frame1.png"), read_rgb(d / "frame2.png"), read_flo(d / "flow.flo"),
                        occ, entry))
    return out


def make_queries(pair: Pair, n: int = 256, seed: int = 0, margin: int = 0):
    """Query pixels where GT is valid; targets = query + flow; visible unless occluded or out of frame."""
    h, w = pair.flow.shape[:2]
    valid = ~np.isnan(pair.flow).any(-1)
    if margin:
        valid[:margin], valid[-margin:], valid[:, :margin], valid[:, -margin:] = False, False, False, False
    ys, xs = np.nonzero(valid)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(xs), size=min(n, len(xs)), replace=False)
    q = np.stack([xs[pick], ys[pick]], -1).astype(np.float64)
    t = q + pair.flow[ys[pick], xs[pick]]
    vis = (t[:, 0] >= 0) & (t[:, 0] <= w - 1) & (t[:, 1] >= 0) & (t[:, 1] <= h - 1)
    if pair.occ is not None:
        vis &= ~pair.occ[ys[pick], xs[pick]]
    return q, t, vis
