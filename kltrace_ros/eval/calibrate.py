"""Calibrate the occlusion threshold of a model on synthetic occlusions (never on the dev set).

Pairs are made from the training images' licence-clean source (scikit-image's bundled photos):
frame 2 is frame 1 moved by a small sub-pixel translation with a disc cut from another photo
pasted over it, moving on its own. Queries outside the disc in frame 1 are visible unless the
disc covers their target in frame 2 (or the target leaves the frame). The threshold on the
peak score that maximises visibility accuracy is written into the model file's ``cfg``.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from kltrace_ros.io.images import skimage_photos
from kltrace_ros.models.checkpoint import load_checkpoint, save_checkpoint
from kltrace_ros.tracking.builder import Options, load_engine


def occlusion_pairs(n_pairs: int = 16, n_queries: int = 48, seed: int = 0, size=(320, 240)):
    rng = np.random.default_rng(seed)
    photos = [cv2.resize(im, size, interpolation=cv2.INTER_AREA) for im in skimage_photos()]
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(n_pairs):
        f1 = photos[rng.integers(len(photos))]
        d = rng.uniform(-5, 5, 2)
        f2 = cv2.warpAffine(f1, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
        other = photos[rng.integers(len(photos))]
        r = rng.uniform(25, 45)
        c1 = rng.uniform([r, r], [w - r, h - r])
        c2 = c1 + rng.uniform(-12, 12, 2)
        disc1 = (xx - c1[0]) ** 2 + (yy - c1[1]) ** 2 < r * r
        disc2 = (xx - c2[0]) ** 2 + (yy - c2[1]) ** 2 < r * r
        moved = cv2.warpAffine(other, np.float32([[1, 0, c2[0] - c1[0]], [0, 1, c2[1] - c1[1]]]), size)
        f1 = f1.copy()
        f1[disc1] = other[disc1]
        f2 = f2.copy()
        f2[disc2] = moved[disc2]
        q, n_occ, tries = [], 0, 0
        while len(q) < n_queries and tries < 100_000:  # about a third under the disc in frame 2
            tries += 1
            p = rng.uniform([8, 8], [w - 8, h - 8])
            under = np.hypot(*(p + d - c2)) < r - 2
            if np.hypot(*(p - c1)) > r + 3 and (under or len(q) - n_occ < 2 * n_queries // 3):
                if under and n_occ >= n_queries // 3:
                    continue
                q.append(p)
                n_occ += under
        q = np.array(q)
        t = q + d
        inside = (t[:, 0] >= 0) & (t[:, 0] <= w - 1) & (t[:, 1] >= 0) & (t[:, 1] <= h - 1)
        vis = inside & (np.hypot(t[:, 0] - c2[0], t[:, 1] - c2[1]) > r)
        yield f1, f2, q, t, vis


def best_threshold(conf: np.ndarray, vis: np.ndarray, prior: float | None = None) -> tuple[float, float]:
    """(threshold, accuracy) maximising the accuracy of ``conf >= threshold`` as visibility.

    ``prior``: reweight the classes as if this fraction of points were occluded (the synthetic
    set over-represents occlusion; between consecutive real frames few points are occluded).
    """
    w = np.ones(len(vis))
    if prior is not None and 0 < vis.mean() < 1:
        w = np.where(vis, (1 - prior) / vis.mean(), prior / (1 - vis.mean()))
    cands = np.concatenate([[0.0], np.sort(conf[conf > 0])])  # 0.0 = only out-of-view points are occluded
    accs = [(w * ((conf >= c) == vis)).sum() / w.sum() for c in cands]
    i = int(np.argmax(accs))
    return float(cands[i]), float(accs[i])


def calibrate(model_path: Path, n_pairs: int = 16, methods=("kl", "rgb"), prior: float = 0.05) -> dict:
    engine = load_engine(Options(model=model_path, occlusion_threshold=0.0))
    pairs = list(occlusion_pairs(n_pairs))
    out = {}
    for m in methods:
        cfg = replace(engine.cfg, method=m)
        confs, viss = [], []
        for f1, f2, q, t, vis in tqdm(pairs, desc=f"calibrate {m}", unit="pair"):
            r = engine.track(f1, f2, q, cfg)
            inside = (r.points[:, 0] >= -0.5) & (r.points[:, 0] <= f2.shape[1] - 0.5)
            confs.append(np.where(inside, r.confidence, -1.0))
            viss.append(vis)
        conf, vis = np.concatenate(confs), np.concatenate(viss)
        thr, acc = best_threshold(conf, vis, prior)
        out[m] = {"threshold": thr, "accuracy_at_prior": acc, "accuracy_all_visible_at_prior": 1 - prior,
                  "raw_accuracy": float(((conf >= thr) == vis).mean()), "raw_all_visible": float(vis.mean()),
                  "occluded_fraction": float(1 - vis.mean()), "prior": prior}
    cfg, state = load_checkpoint(model_path)
    cfg["occlusion_threshold"] = {m: r["threshold"] for m, r in out.items()}
    save_checkpoint(model_path, cfg, state)
    return out
