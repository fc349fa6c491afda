"""TAP-Vid two-frame metrics in the 256x256-normalised frame."""
from __future__ import annotations

import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)


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
