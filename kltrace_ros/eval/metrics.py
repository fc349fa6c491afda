"""TAP-Vid two-frame metrics in the 256x256-normalised frame."""
from __future__ import annotations

import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)
MOTION_BINS = ((0.0, 4.0), (4.0, 16.0), (16.0, 64.0), (64.0, float("inf")))   # ground-truth motion, px at 256


def scaled_errors(pred, gt, queries, gt_vis, size_hw) -> tuple[np.ndarray, np.ndarray]:
    """(error, ground-truth motion) in px at 256x256 of the visible points."""
    h, w = size_hw
    s = np.array([256.0 / w, 256.0 / h])
    gv = np.asarray(gt_vis, bool)
    pred, gt, q = (np.asarray(a, float)[gv] * s for a in (pred, gt, queries))
    return np.linalg.norm(pred - gt, axis=1), np.linalg.norm(gt - q, axis=1)


def by_motion(errors: np.ndarray, motions: np.ndarray) -> dict:
    """delta_avg (percent) and EPE (px at 256) of visible points pooled per bin of ground-truth motion."""
    out = {}
    for lo, hi in MOTION_BINS:
        sel = (motions >= lo) & (motions < hi)
        name = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">{lo:g}"
        e = errors[sel]
        out[name] = {"delta_avg": 100 * float(np.mean([(e < t).mean() for t in THRESHOLDS])) if len(e) else None,
                     "EPE": float(e.mean()) if len(e) else None, "n": int(sel.sum())}
    return out


def tapvid_metrics(pred, pred_vis, gt, gt_vis, size_hw) -> dict:
    """delta_avg, AJ, OA (percent) and AD/EPE (px at 256x256) for (N,2) points of an image of size (H, W)."""
    h, w = size_hw
    s = np.array([256.0 / w, 256.0 / h])
    pred, gt = np.asarray(pred) * s, np.asarray(gt) * s
    pv, gv = np.asarray(pred_vis, bool), np.asarray(gt_vis, bool)
    dist = np.linalg.norm(pred - gt, axis=1)
    deltas, jac = [], []
    for thr in THRESHOLDS:
        within = dist < thr
        deltas.append(within[gv].mean() if gv.any() else np.nan)
        tp = (gv & pv & within).sum()
        fp = (pv & ~(gv & within)).sum()
        fn = (gv & ~(pv & within)).sum()
        jac.append(tp / max(tp + fp + fn, 1))
    return {"delta_avg": 100 * float(np.nanmean(deltas)), "AJ": 100 * float(np.mean(jac)),
            "OA": 100 * float((pv == gv).mean()), "EPE": float(dist[gv].mean()) if gv.any() else float("nan"),
            "n": int(len(gt)), "n_visible": int(gv.sum())}
