"""Tracing engine on the analytic predictor: tracer, KL, peaks, sub-pixel recovery, out-of-view points."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from kltrace_ros.models.analytic import AnalyticShiftPredictor
from kltrace_ros.tracing.engine import Engine, TraceConfig
from kltrace_ros.tracing.ops import add_tracer, kl_map, refine_peak

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")


def translated_pair(d, size=(320, 240)):
    img = cv2.resize(skdata.astronaut(), size, interpolation=cv2.INTER_AREA)
    m = np.float32([[1, 0, d[0]], [0, 1, d[1]]])
    return img, cv2.warpAffine(img, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_tracer_is_a_clipped_white_gaussian_at_subpixel_position():
    base = torch.full((1, 3, 16, 16), 0.5)
    out = add_tracer(base, torch.tensor([[8.0, 6.0]]), sigma=2.0)     # between pixels 7 and 8 in x, 5 and 6 in y
    assert float(out.max()) == 1.0 and float(out.min()) >= 0.5          # clipped to the valid range
    assert torch.allclose(out[0, :, 5, 7], out[0, :, 5, 8]) and torch.allclose(out[0, :, 5, 7], out[0, :, 6, 8])
    far = add_tracer(torch.zeros(1, 3, 16, 16), torch.tensor([[8.0, 6.0]]), sigma=2.0)
    expected = np.exp(-(3.5 ** 2 + 0.5 ** 2) / 8)                       # pixel (x=11, y=6): centre (11.5, 6.5)
    assert far[0, 0, 6, 11].item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(far[0, 0], far[0, 2])                            # white: the same on every channel


def test_kl_map_is_zero_for_equal_and_positive_for_different_distributions():
    lp = torch.randn(2, 5, 7).log_softmax(-1)
    assert torch.allclose(kl_map(lp, lp), torch.zeros(2, 5), atol=1e-6)
    other = lp.clone()
    other[:, 3] = torch.randn(2, 7).log_softmax(-1)
    d = kl_map(lp, other)
    assert (d[:, 3] > 0).all() and torch.allclose(d[:, [0, 1, 2, 4]], torch.zeros(2, 4), atol=1e-6)
    p, q = lp[0, 3].exp(), other[0, 3].exp()
    assert d[0, 3].item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-4)
    # bf16 inputs are accumulated in fp32
    assert kl_map(lp.bfloat16(), other.bfloat16()).dtype == torch.float32


def test_refine_peak_subpatch():
    d = torch.zeros(1, 8, 8)
    d[0, 3, 4] = 4.0
    pos, val = refine_peak(d)
    assert pos[0].tolist() == [4.5, 3.5] and val.item() == 4.0
    d[0, 3, 5] = 4.0  # an equal neighbour to the right: the peak moves half a patch right
    pos, _ = refine_peak(d)
    assert pos[0, 0].item() == pytest.approx(5.0) and pos[0, 1].item() == pytest.approx(3.5)


@pytest.mark.parametrize("method", ["kl", "rgb"])
def test_engine_recovers_known_subpixel_translation(method):
    d = np.array([3.3, -2.6])
    f1, f2 = translated_pair(d)
    q = np.random.default_rng(0).uniform([40, 40], [280, 200], (16, 2))
    res = Engine(AnalyticShiftPredictor(), TraceConfig(method=method, masks=2, scales=2, first_crop=128)).track(f1, f2, q)
    err = np.linalg.norm(res.points - (q + d), axis=1)
    zero = np.linalg.norm(d)
    assert np.median(err) < 0.75 and err.max() < 2.0, err        # a patch is 4 window px = 2.5 image px here
    assert err.mean() < 0.25 * zero
    assert res.visible.all()


def test_points_that_leave_the_view_are_flagged():
    d = np.array([14.0, 0.0])
    f1, f2 = translated_pair(d)
    inside = np.array([[100.0, 100.0], [150.0, 120.0]])
    leaving = np.array([[312.0, 100.0], [315.0, 150.0]])             # x + 14 > 319
    res = Engine(AnalyticShiftPredictor(), TraceConfig(masks=2, scales=2)).track(f1, f2, np.vstack([inside, leaving]))
    assert res.visible.tolist() == [True, True, False, False]


def test_occlusion_threshold_flags_weak_peaks():
    d = np.array([2.0, 1.0])
    f1, f2 = translated_pair(d)
    q = np.array([[100.0, 100.0], [200.0, 150.0]])
    eng = Engine(AnalyticShiftPredictor(), TraceConfig(masks=1, scales=1))
    conf = eng.track(f1, f2, q).confidence
    eng.cfg.occlusion_threshold = float(conf.min()) + 1e-3
    vis = eng.track(f1, f2, q).visible
    assert vis.tolist() == (conf >= conf.min() + 1e-3).tolist() and not vis.all()


def test_no_queries_and_bad_images():
    f1, f2 = translated_pair((1, 1))
    res = Engine(AnalyticShiftPredictor()).track(f1, f2, np.zeros((0, 2)))
    assert res.points.shape == (0, 2)
    with pytest.raises(ValueError, match="expected an \\(H,W,3\\) RGB image"):
        Engine(AnalyticShiftPredictor()).track(f1[..., 0], f2, [[1, 1]])
    with pytest.raises(ValueError, match="method must be"):
        Engine(AnalyticShiftPredictor(), TraceConfig(method="sift"))
    for bad in ({"occlusion_threshold": float("inf")}, {"occlusion_threshold": float("nan")},
                {"fb_threshold": -1.0}, {"masks": 0}, {"scales": 1000}, {"masks": 2.5}, {"prior_skip": -1},
                {"reach": -5.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TraceConfig(**bad)


def test_motion_prior_reaches_beyond_the_search_and_a_wrong_prior_is_corrected():
    """The embedded model: a 97 px motion is beyond its reach from the query, found from a prior 5-7 px off."""
    cv2 = pytest.importorskip("cv2")
    from skimage import data

    from kltrace_ros.tracking.builder import Options, load_engine

    img = cv2.resize(data.astronaut(), (448, 448), interpolation=cv2.INTER_AREA)

    def view(dx, dy):
        m = np.float32([[1, 0, dx - 96], [0, 1, dy - 96]])
        return cv2.warpAffine(img, m, (256, 256), borderMode=cv2.BORDER_REFLECT)

    engine = load_engine(Options())
    q = np.random.default_rng(0).uniform(60, 196, (24, 2))
    f1, f2 = view(0, 0), view(80, 55)
    truth = q + [80, 55]
    err = {}
    for name, prior in (("none", None), ("off", truth + [5, -5]), ("other way", truth + [-7, 7])):
        err[name] = np.linalg.norm(engine.track(f1, f2, q, prior=prior).points - truth, axis=1)
    assert np.median(err["none"]) > 10, err                    # out of reach without a prior
    for name in ("off", "other way"):                          # the search corrects the prior's error
        assert np.median(err[name]) < 1.5 and (err[name] < 2).mean() >= 0.75, (name, err[name])
    # a prior far off (beyond the search from it) on a motion within reach from the query: searched again from
    # the query
    f2, truth = view(30, 15), q + [30, 15]
    err = np.linalg.norm(engine.track(f1, f2, q, prior=truth + [70, -50]).points - truth, axis=1)
    assert np.median(err) < 1.5 and (err < 2).mean() >= 0.75, err
    with pytest.raises(ValueError, match="prior must be finite"):
        engine.track(f1, f2, q, prior=truth[:3])
    # a prior far off on a motion beyond reach from the query: found when searched again from ``retry_from`` (where
    # a tracker saw the point last), not from the query
    f2, truth = view(80, 55), q + [80, 55]
    for again, ok in ((None, False), (truth + [4, -4], True)):
        err = np.linalg.norm(engine.track(f1, f2, q, prior=truth + [70, -50], retry_from=again).points - truth, axis=1)
        assert (np.median(err) < 1.5) == ok, (again is None, err)
    with pytest.raises(ValueError, match="retry_from must be finite"):
        engine.track(f1, f2, q, prior=truth, retry_from=truth[:3])


def test_appearance_match_tells_an_occluder_from_the_point():
    """The visibility cue of ``min_appearance``: a patch found again (moved up to 2 px) scores near 1, another
    photo's texture low, a flat patch passes (cannot tell)."""
    cv2 = pytest.importorskip("cv2")
    import torch
    from skimage import data

    from kltrace_ros.tracing.ops import appearance_match

    def t(img):
        return torch.from_numpy(cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None] / 255.0

    a, other = t(data.astronaut()), t(data.chelsea())
    flat = torch.full_like(a, 0.5)
    p = torch.tensor(np.random.default_rng(0).uniform(40, 216, (32, 2)), dtype=torch.float32)
    assert appearance_match(a, a, p, p + torch.tensor([1.5, -2.0])).min() > 0.95
    assert appearance_match(a, other, p, p).median() < 0.5
    assert (appearance_match(flat, other, p, p) == 1).all()


def test_points_of_several_frames_are_traced_in_one_call_as_one_call_per_frame():
    """``source``: queries on different first images (tracks' anchors) traced in one call land where one call per
    image puts them (each on its own image's motion: the wrong image would put them 3 px off), and so does the
    appearance test; a ``source`` that names no image is refused with what it must be."""
    base, f2 = translated_pair((5, 4))
    f1b = translated_pair((3, 2))[1]
    engine = Engine(AnalyticShiftPredictor())
    q = np.random.default_rng(1).uniform(60, 200, (12, 2))
    apart = [engine.track(base, f2, q[:6]), engine.track(f1b, f2, q[6:])]
    both = engine.track([base, f1b], f2, q, source=[0] * 6 + [1] * 6)
    assert np.allclose(both.points, np.vstack([r.points for r in apart]), atol=1e-4)
    assert np.array_equal(both.visible, np.concatenate([r.visible for r in apart]))
    truth = q + np.repeat([[5, 4], [2, 2]], 6, axis=0)
    assert np.median(np.linalg.norm(both.points - truth, axis=1)) < 1.0
    like = engine.appearance([base, f1b], q, f2, truth, source=[0] * 6 + [1] * 6)
    assert np.allclose(like, np.concatenate([engine.appearance(base, q[:6], f2, truth[:6]),
                                             engine.appearance(f1b, q[6:], f2, truth[6:])]), atol=1e-5)
    for bad in ([0] * 11, [0] * 6 + [2] * 6, [0.5] * 12):
        with pytest.raises(ValueError, match="source must name"):
            engine.track([base, f1b], f2, q, source=bad)
    with pytest.raises(ValueError, match="one size"):
        engine.track([base, base[:100]], f2, q, source=[0] * 12)


def test_the_backward_check_of_a_search_from_a_prior_skips_the_coarse_scales_and_is_held_closer():
    """A search from a prior skips the coarse scale; its backward trace starts at the same (finer) crop, not at the
    coarse one whose window mixes near and far motions, and must land within fb_prior_ratio x fb_threshold of the
    query; a search without a prior goes back from the first crop, held to fb_threshold."""
    from kltrace_ros.tracking.builder import Options, load_engine

    engine = load_engine(Options())
    f1, f2 = translated_pair((3, 2))
    q = np.random.default_rng(1).uniform([80, 70], [240, 170], (6, 2))
    cfg = engine.schedule(engine.cfg)
    assert cfg.fb_threshold * cfg.fb_prior_ratio < 8 < cfg.fb_threshold
    calls, back = [], {"shift": None}
    real = engine._trace

    def spy(img_a, img_b, qw, c, cancel, start=None, ia=None, ib=None, **kw):
        out = real(img_a, img_b, qw, c, cancel, start, ia, ib, **kw)
        calls.append((c.first_crop, c.scales))
        if len(calls) % 2 == 0 and back["shift"] is not None:   # the backward trace lands that far from the query
            out = (start + torch.tensor([back["shift"], 0.0]), *out[1:])
        return out

    engine._trace = spy
    fine = cfg.first_crop * cfg.shrink ** cfg.prior_skip
    engine.track(f1, f2, q)
    assert calls == [(cfg.first_crop, cfg.scales), (cfg.first_crop, 1)]
    calls.clear()
    engine.track(f1, f2, q, prior=q + [3, 2])
    assert calls[:2] == [(pytest.approx(fine), cfg.scales - cfg.prior_skip), (pytest.approx(fine), 1)]
    img1, img2 = engine._prepare(f1), engine._prepare(f2)
    qw, start = engine._working(q, f1.shape), engine._working(q + [3, 2], f2.shape)
    seen = {}
    for shift, skip in ((0.0, False), (0.0, True), (8.0, False), (8.0, True), (5.0, True)):
        back["shift"] = shift
        res = engine._search(img1, img2, None, qw, f2.shape[:2], cfg, None, start if skip else None, skip=skip)
        assert np.allclose(res.fb_error, shift)
        seen[shift, skip] = res.visible
    assert seen[0.0, False].sum() >= 4 and seen[0.0, True].sum() >= 4
    assert (seen[8.0, False] == seen[0.0, False]).all()           # 8 px back: within fb_threshold
    assert not seen[8.0, True].any()                              # but not within the prior search's
    assert (seen[5.0, True] == seen[0.0, True]).all()


def test_a_search_from_a_prior_searches_the_centre_of_its_first_window_as_refinement_scales_do():
    """A search from a prior skips the coarse scale (the prior is within the next scale's reach), so its first scale
    is a refinement: it searches (and a ``window_maps`` predictor computes) only the central ``zoom_search`` of its
    window. A search without a prior searches its whole first window, and so does every backward check."""
    from kltrace_ros.tracing.ops import central_region
    from kltrace_ros.tracking.builder import Options, load_engine

    engine = load_engine(Options())
    f1, f2 = translated_pair((3, 2))
    q = np.random.default_rng(1).uniform([80, 70], [240, 170], (6, 2))
    g = engine.p.window // engine.p.patch
    centre = central_region(g, engine.cfg.zoom_search)
    windows = []
    real = engine.p.kl_maps

    def spy(*args, window=None, **kw):
        windows.append("centre" if window is not None and torch.equal(window, centre) else window)
        return real(*args, window=window, **kw)

    engine.p.kl_maps = spy
    engine.track(f1, f2, q)
    # no prior: the whole first window, the central half at the middle scale (the last is whole for its sharpness
    # test); the backward check's one scale whole
    assert windows == [None, "centre", None, None]
    windows.clear()
    res = engine.track(f1, f2, q, prior=q + [3, 2])
    assert res.visible.all()                   # (no second search from the query)
    assert windows == ["centre", None, None]   # from the prior: its first scale searches the centre only


def test_the_polish_takes_an_answer_to_sub_pixel_and_keeps_the_kl_answer_where_it_is_not_safe(monkeypatch):
    """``polish.lk_polish``: started up to 1.5 px off on a photo under a sub-pixel translation, it lands within a tenth
    of a pixel. Where it is not safe the KL answer stands, unchanged: a polish that would move the point farther
    than ``max_move``, a flat patch (LK has no gradient), a way back that misses the query by more than ``fb``; and a
    frame larger than ``MAX_SIDE`` is polished on a shrunk copy, and frames of two sizes at frame 2's, with the answers
    in frame 2's own pixels."""
    from kltrace_ros.tracing import polish

    d = np.array([3.3, -2.6])
    f1, f2 = translated_pair(d)
    g1, g2 = polish.gray(f1), polish.gray(f2)
    rng = np.random.default_rng(0)
    q = rng.uniform([40, 40], [280, 200], (16, 2))
    start = q + d + rng.uniform(-1.5, 1.5, (16, 2))
    to_working = (np.array([256 / 320, 256 / 240]),) * 2
    out, taken = polish.lk_polish(g1, g2, q, start, 21, 2, 16.0, 1.0, to_working)
    err = np.linalg.norm(out - (q + d), axis=1)
    assert taken.all() and np.median(err) < 0.1 and err.max() < 0.6, err
    off = q + d + [3.0, 0.0]                                      # 2.4 working px from the truth
    out, taken = polish.lk_polish(g1, g2, q, off, 21, 2, 1.0, 1.0, to_working)
    assert not taken.any() and np.array_equal(out, off)
    flat = np.full_like(g1, 128)
    out, taken = polish.lk_polish(flat, flat, q, start, 21, 2, 16.0, 1.0, to_working)
    assert not taken.any() and np.array_equal(out, start)
    noisy = np.clip(g2 + rng.normal(0, 12, g2.shape), 0, 255).astype(np.uint8)   # its way back is not exact
    out, taken = polish.lk_polish(g1, noisy, q, start, 21, 2, 16.0, 1.0, to_working)
    assert taken.mean() > 0.8
    out, taken = polish.lk_polish(g1, noisy, q, start, 21, 2, 16.0, 1e-3, to_working)
    assert not taken.any() and np.array_equal(out, start)
    noise = rng.integers(0, 256, g1.shape, dtype=np.uint8)       # frame 2 unrelated to frame 1
    out, taken = polish.lk_polish(g1, noise, q, start, 21, 2, 16.0, 1.0, to_working)
    assert taken.mean() < 0.25 and np.array_equal(out[~taken], start[~taken])
    big2 = cv2.resize(g2, (400, 300), interpolation=cv2.INTER_LINEAR)   # frames of two sizes: answers in frame 2's px
    out, taken = polish.lk_polish(g1, big2, q, (start + 0.5) * 1.25 - 0.5, 21, 2, 16.0, 1.0,
                                  (to_working[0], to_working[0] / 1.25))
    err = np.linalg.norm(out - ((q + d + 0.5) * 1.25 - 0.5), axis=1)
    assert taken.mean() > 0.7 and np.median(err[taken]) < 0.3, (taken, err)
    monkeypatch.setattr(polish, "MAX_SIDE", 160)                  # polished at half size, answered at full
    out, taken = polish.lk_polish(g1, g2, q, start, 21, 2, 16.0, 1.0, to_working)
    err = np.linalg.norm(out - (q + d), axis=1)
    assert taken.mean() > 0.7 and np.median(err[taken]) < 0.3, (taken, err)


def test_the_engine_polishes_every_answer_unless_told_not_to():
    """``refine='lk'`` (the default) polishes the KL answers (closer to the truth than ``refine='none'``, which keeps
    them as they are); in a call with several first images each query is polished against its own image; a
    setting outside the choices is refused with what it must be."""
    d = np.array([3.3, -2.6])
    f1, f2 = translated_pair(d)
    q = np.random.default_rng(0).uniform([40, 40], [280, 200], (16, 2))
    cfg = TraceConfig(masks=2, scales=2, first_crop=128)
    engine = Engine(AnalyticShiftPredictor(), cfg)
    assert engine.cfg.refine == "lk"
    kl = engine.track(f1, f2, q, replace(cfg, refine="none"))
    lk = engine.track(f1, f2, q)
    assert kl.polished is None and lk.polished.mean() > 0.8
    err_kl, err_lk = (np.linalg.norm(r.points - (q + d), axis=1) for r in (kl, lk))
    assert np.median(err_lk) < 0.1 < np.median(err_kl), (err_lk, err_kl)
    assert np.array_equal(lk.visible, kl.visible)                 # visibility stays the KL tests' verdict
    other = translated_pair((1.0, 1.0))[1]                        # frame 2 moved 2.3, 3.6 px from this one
    both = engine.track([other, f1], f2, q, source=[1] * 8 + [0] * 8)
    truth = np.vstack([q[:8] + d, q[8:] + d - [1.0, 1.0]])
    assert np.median(np.linalg.norm(both.points - truth, axis=1)[both.polished]) < 0.1
    for bad in ({"refine": "opencv"}, {"refine_window": 20}, {"refine_levels": -1}, {"refine_max": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TraceConfig(**bad)
