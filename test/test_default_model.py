"""The shipped small model: loads, predicts, follows a synthetic translation; `kltrace train` runs and resumes."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from kltrace_ros.models.checkpoint import load_checkpoint
from kltrace_ros.tracing.engine import Engine, TraceConfig
from kltrace_ros.models.motion.predictor import MotionPredictor
from kltrace_ros.models.registry import default_model_path, load_predictor

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")


def test_shipped_checkpoint_loads_and_predicts():
    path = default_model_path()
    assert path.is_file() and path.stat().st_size < 20 * 2**20
    cfg, _ = load_checkpoint(path)
    assert cfg["model_class"] == "MotionLRAS"
    pred = load_predictor()
    assert isinstance(pred, MotionPredictor)
    w = pred.window
    src = torch.rand(3, 3, w, w)
    mask = torch.zeros(w // pred.patch, w // pred.patch, dtype=torch.bool)
    mask[::3, ::3] = True
    lp = pred.log_probs(src, src[:1], mask)
    assert lp.shape == (3, int((~mask).sum()), cfg["n_codes"])
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3, int((~mask).sum())), atol=1e-4)
    # with the whole target revealed except a few cells, a copy of the source is predicted well
    full = torch.ones_like(mask)
    full[4:6, 4:6] = False
    codes = pred.model.tokenizer.encode(src[:1])
    acc = (pred.log_probs(src[:1], src[:1], full).argmax(-1) == codes.flatten(1)[:, ~full.flatten()]).float().mean()
    assert acc > 0.5


def test_kl_tracing_follows_a_translation_better_than_zero_motion():
    img = cv2.resize(skdata.chelsea(), (320, 240), interpolation=cv2.INTER_AREA)
    d = np.array([4.5, -3.0])
    f2 = cv2.warpAffine(img, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), (320, 240), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT)
    q = np.random.default_rng(0).uniform([48, 48], [272, 192], (24, 2))
    res = Engine(load_predictor(), TraceConfig(seed=0)).track(img, f2, q)
    err = np.linalg.norm(res.points - (q + d), axis=1)
    zero = np.linalg.norm(d)
    assert np.median(err) < 0.5 * zero, err
    assert err.mean() < 0.7 * zero, err


def test_track_pair_cli_contract(tmp_path):
    img = cv2.resize(skdata.astronaut(), (200, 150), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "b.png"), np.roll(img, 2, axis=1))
    (tmp_path / "q.json").write_text(json.dumps([[50, 60], [120.5, 80.25], [10, 10]]))
    cmd = [sys.executable, "-m", "kltrace_ros.cli", "track-pair", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
           str(tmp_path / "q.json"), str(tmp_path / "out.json"), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert set(out) == {"points", "visible", "reason"} and out["reason"] == [None, None, None]   # all inside frame 1
    assert len(out["points"]) == 3 and all(len(p) == 2 and all(isinstance(v, float) for v in p) for p in out["points"])
    assert all(isinstance(v, bool) for v in out["visible"]) and len(out["visible"]) == 3
    for p, q in zip(out["points"], [[50, 60], [120.5, 80.25], [10, 10]]):   # frame 2 = frame 1 moved 2 px right
        assert np.hypot(p[0] - q[0] - 2, p[1] - q[1]) < 1.0, out["points"]
    (tmp_path / "bad.json").write_text("[[1, 2, 3]]")
    bad = subprocess.run(cmd[:6] + [str(tmp_path / "bad.json"), str(tmp_path / "o2.json")], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "list of [x, y] pairs" in bad.stderr
    missing = subprocess.run(cmd[:4] + [str(tmp_path / "nope.png")] + cmd[5:7] + [str(tmp_path / "o3.json")], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "nope.png" in missing.stderr


def test_train_runs_from_scratch_and_resumes(tmp_path):
    base = [sys.executable, "-m", "kltrace_ros.cli", "train", "--out", str(tmp_path / "run"), "--batch", "4",
            "--codes", "32", "--log-every", "2", "--no-debian", "--threads", "1"]
    first = subprocess.run(base + ["--steps", "4"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["cfg"]["n_codes"] == 32
    second = subprocess.run(base + ["--steps", "2", "--resume", "--export", str(tmp_path / "shipped.pt")],
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    ckpt = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["pairs"] == 24
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert isinstance(load_predictor(tmp_path / "shipped.pt"), MotionPredictor)


def test_gross_failures_are_not_reported_visible():
    """A 110x60 px jump at 320x240 (109 px at 256, beyond the model's reach) makes tracing fail: the
    forward-backward check must flag the failures, and keep small-motion points visible."""
    img = cv2.resize(skdata.chelsea(), (320, 240), interpolation=cv2.INTER_AREA)
    q = np.random.default_rng(1).uniform([60, 50], [260, 190], (24, 2))
    eng = Engine(load_predictor(), TraceConfig())
    for d, kind in (((2.5, -1.5), "small"), ((110.0, 60.0), "large")):
        f2 = cv2.warpAffine(img, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), (320, 240), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
        res = eng.track(img, f2, q)
        err = np.linalg.norm(res.points - (q + d), axis=1)
        if kind == "small":
            assert res.visible.mean() >= 0.85 and np.median(err[res.visible]) < 1.0, (res.visible, err)
        else:
            wrong = err > 16
            assert wrong.sum() >= 12, err                                   # the jump is beyond the model's reach
            assert res.visible[wrong].mean() <= 0.25, (res.visible[wrong], res.fb_error[wrong])


def test_default_schedule_reaches_a_quarter_of_the_frame():
    """Camera motions of 62-64 px at the 256 working resolution (a quarter of the frame width) are found by the
    default coarse-to-fine schedule with no prior (first scale 192 px, cells of 12 px); the former schedule that
    started at a 64 px crop finds none of them."""
    img = cv2.resize(skdata.chelsea(), (320, 240), interpolation=cv2.INTER_AREA)
    q = np.random.default_rng(1).uniform([30, 30], [240, 180], (24, 2))
    pred = load_predictor()
    for d in ((56.0, 40.0), (-56.0, 40.0), (75.0, 0.0)):
        f2 = cv2.warpAffine(img, np.float32([[1, 0, d[0]], [0, 1, d[1]]]), (320, 240), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
        found = {}
        for name, cfg in (("default", TraceConfig()),
                          ("64 px first crop", TraceConfig(first_crop=64, shrink=0.5, scales=2, masks=4, reach=0))):
            res = Engine(pred, cfg).track(img, f2, q)
            err = np.linalg.norm(res.points - (q + d), axis=1)
            found[name] = (err < 3).mean()
            if name == "default":   # its misses are flagged
                assert not (res.visible & (err > 16)).any(), (d, err, res.visible)
        assert found["default"] >= 0.8 and found["64 px first crop"] <= 0.1, (d, found)


def _windows_with_tracers(pred, n=16, seed=0):
    """Source windows of a photo, their tracer variants (tracer at the centre) and shifted target windows."""
    from kltrace_ros.tracing.ops import add_tracer

    eng = Engine(pred)
    img = cv2.resize(skdata.astronaut(), (320, 240), interpolation=cv2.INTER_AREA)
    f2 = cv2.warpAffine(img, np.float32([[1, 0, 3.5], [0, 1, -2.0]]), (320, 240), borderMode=cv2.BORDER_REFLECT)
    q = torch.tensor(np.random.default_rng(seed).uniform(40, 216, (n, 2)), dtype=torch.float32)
    src = eng._windows(eng._prepare(img), q, pred.first_crop)
    tgt = eng._windows(eng._prepare(f2), q, pred.first_crop)
    traced = add_tracer(src, torch.full((n, 2), pred.window / 2), pred.tracer_sigma)
    return src, traced, tgt


def test_kl_maps_of_all_masks_at_once_equal_one_model_pass_per_mask():
    from kltrace_ros.tracing.ops import kl_map, reveal_mask

    pred = load_predictor()
    src, traced, tgt = _windows_with_tracers(pred)
    g = pred.window // pred.patch
    masks = torch.stack([reveal_mask(g, g, pred.reveal, torch.Generator().manual_seed(i)) for i in range(3)])
    naive = torch.zeros(len(src), 3, g * g)
    for j, mask in enumerate(masks):
        naive[:, j, ~mask.flatten()] = kl_map(pred.log_probs(src, tgt, mask), pred.log_probs(traced, tgt, mask))
    exact = pred.kl_maps(src, traced, tgt, masks, unchanged=0)
    assert torch.allclose(exact, naive, atol=1e-5, rtol=1e-4), (exact - naive).abs().max()
    # the default skips cells the tracer leaves (nearly) untouched: most of them, with the same peaks
    fast = pred.kl_maps(src, traced, tgt, masks)
    assert (fast > 0).sum() < 0.5 * (naive > 0).sum()
    assert torch.equal(fast.sum(1).argmax(-1), naive.sum(1).argmax(-1))
    assert ((fast - naive).abs().amax((1, 2)) < 0.05 * naive.amax((1, 2))).all()


def _batches_of_the_match(pred, monkeypatch):
    """Record the source batch of every model pass (``warped_inputs``) of ``pred``."""
    seen, model = [], pred.model
    inner = model.warped_inputs

    def spy(src, tgt, rev, cells=None):
        seen.append(src.shape[0])
        return inner(src, tgt, rev, cells)
    monkeypatch.setattr(model, "warped_inputs", spy)
    return seen


def test_a_window_shared_by_every_point_runs_its_clean_pass_once(monkeypatch):
    """A whole-frame window (one anchor image) shared by all points: the clean pass runs once, and the maps
    equal those of the same window copied per point (exact)."""
    from kltrace_ros.tracing.ops import add_tracer, reveal_mask

    pred = load_predictor()
    src, _, tgt = _windows_with_tracers(pred, n=1)
    n, g = 16, pred.window // pred.patch   # (a multiple of 8: no padding)
    traced = add_tracer(src.expand(n, -1, -1, -1), torch.rand(n, 2, generator=torch.Generator().manual_seed(0))
                        * (pred.window - 16) + 8, pred.tracer_sigma)
    masks = torch.stack([reveal_mask(g, g, pred.reveal, torch.Generator().manual_seed(i)) for i in range(3)])
    seen = _batches_of_the_match(pred, monkeypatch)
    shared = pred.kl_maps(src.expand(n, -1, -1, -1), traced, tgt.expand(n, -1, -1, -1), masks, unchanged=0)
    assert seen == [1, n]                    # one clean pass, one traced pass per point
    seen.clear()
    copies = pred.kl_maps(src.repeat(n, 1, 1, 1), traced, tgt.repeat(n, 1, 1, 1), masks, unchanged=0)
    assert seen == [1, n]                    # equal windows are found by content too
    assert torch.equal(shared, copies) and shared.amax() > 0
    # two anchor images (anchored tracking): one clean pass per image, the maps of each point as alone
    two = torch.cat([src, src.flip(-1)])
    which = torch.arange(n) % 2
    seen.clear()
    mixed = pred.kl_maps(two[which], add_tracer(two[which], torch.full((n, 2), 32.0), pred.tracer_sigma),
                         tgt.expand(n, -1, -1, -1), masks, unchanged=0)
    assert seen == [2, n]
    alone = pred.kl_maps(two[1:], add_tracer(two[1:], torch.full((1, 2), 32.0), pred.tracer_sigma), tgt, masks,
                         unchanged=0)
    assert torch.allclose(mixed[1], alone[0], atol=1e-5, rtol=1e-4) and alone.amax() > 1e-4


def test_maps_of_the_searched_cells_only_are_exact(monkeypatch):
    """``window=``: the cells outside the searched region are not computed (0) and those inside are exactly the
    full map's; the engine then finds the same tracks at its zoom scales."""
    from kltrace_ros.tracing.ops import central_region, centre_block, reveal_mask

    pred = load_predictor()
    src, traced, tgt = _windows_with_tracers(pred)
    g = pred.window // pred.patch
    masks = torch.stack([reveal_mask(g, g, pred.reveal, torch.Generator().manual_seed(i),
                                     keep_hidden=centre_block(g, 1)) for i in range(3)])
    region = central_region(g, 0.5).flatten()
    full = pred.kl_maps(src, traced, tgt, masks, unchanged=0)
    seen = _batches_of_the_match(pred, monkeypatch)
    part = pred.kl_maps(src, traced, tgt, masks, unchanged=0, window=region.view(g, g))
    assert torch.equal(part[:, :, region], full[:, :, region]) and full[:, :, region].amax() > 0
    assert not part[:, :, ~region].any() and full[:, :, ~region].any()
    assert len(seen) == 2   # the clean and the traced pass of the 16 distinct windows


def test_votes_of_masks_shared_by_the_batch_equal_per_sample_votes():
    pred = load_predictor()
    m = pred.model
    g = m.grid
    src = torch.randint(0, m.cfg["n_codes"], (4, g, g))
    tgt = torch.randint(0, m.cfg["n_codes"], (4, g, g))
    rev = torch.rand(1, 3, g * g) < 0.3
    rev[0, 2, :5] = True   # masks with different numbers of revealed cells
    attn = m.attention(src, tgt)
    with torch.no_grad():
        shared = m.vote_offsets(attn, rev)
        per_sample = m.vote_offsets(attn, rev.expand(4, -1, -1))
    assert torch.allclose(shared, per_sample, atol=1e-5)
    assert shared.abs().amax() > 0.5   # the cells do move


def test_engine_gives_the_same_tracks_with_and_without_the_batched_kl_maps():
    pred = load_predictor()
    pred.unchanged = 0.0

    class PerMask:   # the same model without kl_maps: the engine's generic one-mask-at-a-time path
        def __init__(self, p):
            self.p = p

        def __getattr__(self, name):
            if name == "kl_maps":
                raise AttributeError(name)
            return getattr(self.p, name)

    img = cv2.resize(skdata.chelsea(), (320, 240), interpolation=cv2.INTER_AREA)
    f2 = cv2.warpAffine(img, np.float32([[1, 0, 6.0], [0, 1, 2.5]]), (320, 240), borderMode=cv2.BORDER_REFLECT)
    q = np.random.default_rng(1).uniform([48, 48], [272, 192], (12, 2))
    cfg = TraceConfig(seed=3)
    a = Engine(pred, cfg).track(img, f2, q)
    b = Engine(PerMask(pred), cfg).track(img, f2, q)
    assert np.abs(a.points - b.points).max() < 1e-3
    assert np.array_equal(a.visible, b.visible)
    assert np.allclose(a.confidence, b.confidence, rtol=1e-4)


def test_points_an_occluder_covers_are_flagged():
    """Synthetic occlusions (a disc of another photo pasted over a moving photo; a third of the queries end up
    under it): the default visibility tests flag most covered points and keep most visible ones; without the
    appearance test (KL peak sharpness and the forward-backward check alone) most covered points pass."""
    from dataclasses import replace

    from kltrace_ros.eval.calibrate import occlusion_pairs

    eng = Engine(load_predictor(), TraceConfig())
    flagged, kept = {}, {}
    for name, cfg in (("default", eng.cfg), ("no appearance test", replace(eng.cfg, min_appearance=0.0))):
        vis, got = [], []
        for f1, f2, q, _, v in occlusion_pairs(4, 48, seed=3):
            vis.append(v)
            got.append(eng.track(f1, f2, q, cfg).visible)
        vis, got = np.concatenate(vis), np.concatenate(got)
        flagged[name], kept[name] = (~got[~vis]).mean(), got[vis].mean()
    assert flagged["default"] >= 0.5 and kept["default"] >= 0.85, (flagged, kept)
    assert flagged["no appearance test"] <= 0.35, flagged
