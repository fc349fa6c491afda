"""Dataset reader, TAP-Vid metrics, baselines and the `kltrace eval` command on a folder we write."""
import json
import subprocess
import sys

import numpy as np
import pytest

from kltrace_ros.eval.baselines import dis, lucas_kanade, zero_motion
from kltrace_ros.eval.datasets import load_pairs, make_queries, read_flo, write_flo
from kltrace_ros.eval.metrics import by_motion, scaled_errors, tapvid_metrics

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")


def make_folder(root, d=(3.0, -2.0)):
    img = cv2.resize(skdata.astronaut(), (256, 192), interpolation=cv2.INTER_AREA)
    m = np.float32([[1, 0, d[0]], [0, 1, d[1]]])
    f2 = cv2.warpAffine(img, m, (256, 192), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    pdir = root / "shift"
    pdir.mkdir(parents=True)
    cv2.imwrite(str(pdir / "frame1.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(pdir / "frame2.png"), cv2.cvtColor(f2, cv2.COLOR_RGB2BGR))
    flow = np.zeros((192, 256, 2), np.float32) + np.float32(d)
    flow[:10] = 1e10  # unknown rows
    write_flo(pdir / "flow.flo", flow)
    (root / "pairs.json").write_text(json.dumps([{"id": "shift", "kind": "synthetic"}]))
    return img, f2


def test_flo_reader_and_queries(tmp_path):
    make_folder(tmp_path)
    flow = read_flo(tmp_path / "shift" / "flow.flo")
    assert flow.shape == (192, 256, 2) and np.isnan(flow[:10]).all() and np.allclose(flow[10:], [3, -2])
    (pair,) = load_pairs(tmp_path)
    q, t, vis = make_queries(pair, 50, seed=1)
    assert len(q) == 50 and (q[:, 1] >= 10).all() and np.allclose(t - q, [3, -2])
    assert vis.sum() == ((q[:, 0] + 3 <= 255) & (q[:, 1] - 2 >= 0)).sum()
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"nope" + b"\0" * 8)
    with pytest.raises(ValueError, match="bad magic"):
        read_flo(bad)


def test_tapvid_metrics_by_hand():
    gt = np.array([[0, 0], [10, 10], [20, 20], [30, 30]], float)
    gv = np.array([True, True, True, False])
    pred = gt + [[0.5, 0], [3, 0], [20, 0], [0, 0]]
    pv = np.array([True, True, False, True])
    m = tapvid_metrics(pred, pv, gt, gv, (256, 256))
    # within thresholds 1,2,4,8,16 among visible: point0 all, point1 from 4, point2 none
    assert m["delta_avg"] == pytest.approx(100 * np.mean([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3]))
    assert m["OA"] == pytest.approx(50.0)
    assert m["EPE"] == pytest.approx((0.5 + 3 + 20) / 3)
    # thr 1: TP=1 (p0), FP = p1 (too far) + p3 (occluded) = 2, FN = p1 + p2 = 2
    jac1 = 1 / 5
    jac4 = 2 / (2 + 1 + 1)  # TP p0,p1; FP p3; FN p2
    assert m["AJ"] == pytest.approx(100 * np.mean([jac1, jac1, jac4, jac4, jac4]))
    # scaling to 256x256: the same pixel error in a 512-wide image is half
    assert tapvid_metrics(pred, pv, gt, gv, (256, 512))["EPE"] < m["EPE"]


def test_metrics_by_motion_bin_by_hand():
    q = np.array([[0, 0], [0, 0], [0, 0], [0, 0], [0, 0]], float)
    gt = np.array([[2, 0], [10, 0], [30, 0], [100, 0], [5, 0]], float)       # motions 2, 10, 30, 100, (hidden)
    gv = np.array([True, True, True, True, False])
    pred = gt + [[0.5, 0], [3, 0], [20, 0], [0, 0], [0, 0]]
    err, motion = scaled_errors(pred, gt, q, gv, (256, 256))
    assert np.allclose(err, [0.5, 3, 20, 0]) and np.allclose(motion, [2, 10, 30, 100])
    b = by_motion(err, motion)
    assert list(b) == ["0-4", "4-16", "16-64", ">64"]
    assert b["0-4"] == {"delta_avg": 100.0, "EPE": 0.5, "n": 1}
    assert b["4-16"]["delta_avg"] == pytest.approx(60.0) and b["4-16"]["EPE"] == 3.0   # within 4, 8, 16 of 5
    assert b["16-64"]["delta_avg"] == 0.0 and b[">64"]["EPE"] == 0.0
    err2, motion2 = scaled_errors(pred, gt, q, gv, (512, 512))            # px at 256: a 512 image halves them
    b2 = by_motion(err2, motion2)
    assert np.allclose(motion2, motion / 2) and b2["4-16"]["n"] == 2 and b2[">64"]["n"] == 0


def test_baselines_follow_a_translation(tmp_path):
    f1, f2 = make_folder(tmp_path)
    q = np.array([[100.0, 100.0], [150.0, 80.0], [60.0, 140.0]])
    for fn in (lucas_kanade, dis):
        p, v = fn(f1, f2, q)
        assert np.abs(p - q - [3, -2]).max() < 0.5, fn.__name__
    p, v = zero_motion(f1, f2, q)
    assert np.array_equal(p, q) and v.all()


def test_eval_command_writes_results_and_pictures(tmp_path):
    make_folder(tmp_path / "gt")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "eval", str(tmp_path / "gt"), "--methods",
                           "kl,zero,lk", "--queries", "16", "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert set(res["overall"]) == {"kl", "zero", "lk"}
    assert res["overall"]["lk"]["EPE"] < res["overall"]["zero"]["EPE"]
    # KL-tracing with the embedded model follows the (3, -2) px shift: far better than not moving
    assert res["overall"]["kl"]["EPE"] < 0.5 * res["overall"]["zero"]["EPE"], res["overall"]
    assert res["overall"]["kl"]["delta_avg"] > res["overall"]["zero"]["delta_avg"] + 20, res["overall"]
    assert "| kl |" in proc.stdout and "motion 4-16 px" in proc.stdout
    per = res["by_motion"]["kl"]                        # one shift, (3, -2.7) px at 256: every point in one bin
    assert sum(v["n"] for v in per.values()) == sum(r["kl"]["n_visible"] for r in res["pairs"].values()) > 0
    (moving,) = [b for b, v in per.items() if v["n"]]
    assert moving == "4-16" and per[moving]["EPE"] < res["by_motion"]["zero"][moving]["EPE"]
    for png in ("summary.png", "pairs.png"):
        assert (out / png).stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "eval", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "pairs.json" in bad.stderr and "Traceback" not in bad.stderr


def test_dev_set_loads(shared_data):
    pairs = load_pairs(shared_data / "flow-gt")
    assert len(pairs) >= 5
    for p in pairs:
        q, t, vis = make_queries(p, 8)
        assert len(q) == 8 and p.frame1.shape == p.frame2.shape


def test_occlusion_calibration_data_and_threshold():
    from kltrace_ros.eval.calibrate import best_threshold, occlusion_pairs

    (f1, f2, q, t, vis), = list(occlusion_pairs(1, n_queries=30, seed=3))
    assert f1.shape == f2.shape == (240, 320, 3) and len(q) == 30
    assert 0 < (~vis).sum() <= 12 and vis.sum() >= 18
    conf = np.array([0.1, 0.2, 0.9, 1.5, 0.3])
    thr, acc = best_threshold(conf, np.array([False, False, True, True, True]))
    assert thr == pytest.approx(0.3) and acc == 1.0
    # a rare-occlusion prior prefers calling an ambiguous point visible
    conf2 = np.array([0.2, 0.3, 0.35, 1.0, 1.2])
    vis2 = np.array([True, False, False, True, True])
    assert best_threshold(conf2, vis2)[0] == pytest.approx(1.0)  # 4/5 right (0.0 gives 3/5)
    assert best_threshold(conf2, vis2, prior=0.05)[0] == 0.0
