"""`kltrace make-suite`: the large-motion suite is deterministic, its ground truth is exact, and it covers the
motions, resolutions, aspect ratios and occlusions it promises."""
import filecmp
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytest.importorskip("skimage")
from kltrace_ros.eval.datasets import load_pairs, make_queries  # noqa: E402
from kltrace_ros.eval.suite import make_suite  # noqa: E402


def same_tree(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)[1:] != ([], []):
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


def test_suite_is_deterministic_exact_and_covers_large_motion(tmp_path):
    a = make_suite(tmp_path / "a", pairs=10, seed=3)
    proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "make-suite", str(tmp_path / "b"), "--pairs", "10",
                           "--seed", "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert same_tree(a, tmp_path / "b")                               # byte-identical, CLI or not
    assert not same_tree(a, make_suite(tmp_path / "c", pairs=10, seed=4))
    pairs = load_pairs(a)
    motions, sizes, occluded = [], set(), 0
    for p in pairs:
        h, w = p.flow.shape[:2]
        sizes.add((w, h))
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        mx, my = xs + p.flow[..., 0], ys + p.flow[..., 1]
        ok = (mx >= 1) & (mx <= w - 2) & (my >= 1) & (my <= h - 2) & ~p.occ
        warped = cv2.remap(p.frame2, mx, my, cv2.INTER_LINEAR).astype(float)
        err = np.abs(warped - p.frame1)[ok].mean()                     # frame 2 pulled back by the flow
        zero = np.abs(p.frame2.astype(float) - p.frame1)[ok].mean()    # what no motion would give
        assert err < 5 and err < 0.2 * zero, (p.id, err, zero)
        q, t, vis = make_queries(p, 256, 0)
        motions.append(np.linalg.norm((t - q)[vis] * [256 / w, 256 / h], axis=1))
        occluded += int(p.occ.any())
    m = np.concatenate(motions)
    assert len(sizes) == 5 and any(w < h for w, h in sizes)            # resolutions and aspect ratios, portrait too
    assert (m < 4).any() and ((m >= 16) & (m < 64)).mean() > 0.3 and (m >= 48).any()
    assert occluded >= 8                                               # an independently moving occluder
