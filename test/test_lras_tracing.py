"""KL-tracing on an LRAS-backed predictor (tiny random LRAS + LPQ): shared-prefix caching is exact."""
import numpy as np
import torch

from kltrace_ros.models.lras.layout import Layout
from kltrace_ros.models.lras.network import LRAS
from kltrace_ros.models.lras.predictor import LRASPredictor, count_tokens
from kltrace_ros.models.lras.tokenizer import LPQ
from kltrace_ros.tracing.engine import Engine, TraceConfig
from kltrace_ros.tracing.ops import add_tracer, kl_map, reveal_mask


def tiny_predictor(image_size=64, seed=0):
    torch.manual_seed(seed)
    lpq = LPQ(LPQ.default_arch(channels=16, bits=6, widths=(16, 8, 4), blocks=1)).eval()
    for p in lpq.quantizer.project_in.parameters():
        p.data.normal_(0, 1.0)
    lay = Layout(n_codes=64, grid=image_size // 8, patch=2)
    lras = LRAS({"n_layer": 2, "n_head": 2, "n_embd": 32, "vocab_size": lay.vocab_needed,
                 "block_size": 2 * 5 * lay.n_patches}).eval()
    for p in lras.parameters():
        p.data.normal_(0, 0.3)
    return LRASPredictor(lras, lpq, image_size=image_size, reveal=0.2, extend_batch=3)


def test_cached_equals_naive_fp32():
    pred = tiny_predictor()
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 3, 64, 64, generator=g)
    target = torch.rand(1, 3, 64, 64, generator=g)
    traced = add_tracer(clean.expand(5, -1, -1, -1), torch.tensor([[10.0, 12.0], [40.5, 30.0], [33.0, 50.0],
                                                                   [5.0, 60.0], [60.0, 3.0]]), 2.0)
    mask = reveal_mask(8, 8, 0.2, g)
    c1, t1 = pred.traced_log_probs(clean, traced, target, mask, cached=True)
    c0, t0 = pred.traced_log_probs(clean, traced, target, mask, cached=False)
    assert c1.shape == (1, int((~mask).sum()), 64 + 128) and t1.shape[0] == 5
    assert (c1 - c0).abs().max() < 1e-5 and (t1 - t0).abs().max() < 1e-5
    assert (kl_map(c1, t1) - kl_map(c0, t0)).abs().max() < 1e-5
    pred.group = 2  # groups of variants, each with its own prefix: still the naive answer per group
    assert (pred.traced_kl(clean, traced, target, mask) - pred.traced_kl(clean, traced, target, mask, cached=False)
            ).abs().max() < 1e-5
    # the tracer touches only a few frame-0 patches, so the cached path runs far fewer tokens
    assert pred.tokens["cached"] < 0.6 * pred.tokens["naive"]


def test_engine_reports_the_peak_of_the_lras_kl_map():
    """Whole-frame tracing on a tiny random LRAS: the engine's map is the naive KL map of the
    predictor (full passes, same token order), and each reported point is that map's refined peak."""
    import torch.nn.functional as F

    from kltrace_ros.tracing.ops import refine_peak

    pred = tiny_predictor()
    f1 = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    f2 = np.roll(f1, 2, axis=1)
    q = np.array([[10.0, 10.0], [30.0, 20.0], [50.0, 40.0]])
    res = Engine(pred, TraceConfig(masks=1, scales=1, first_crop=64, keep_maps=True, fb_threshold=0)).track(f1, f2, q)
    assert res.points.shape == (3, 2) and np.isfinite(res.points).all()
    # the same computation by hand: whole frames at 64x64, one mask from the engine's seed
    prep = lambda f: F.interpolate(torch.from_numpy(f).float().permute(2, 0, 1)[None] / 255, size=(64, 64),  # noqa: E731
                                   mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    src, tgt = prep(f1), prep(f2)
    mask = reveal_mask(8, 8, pred.reveal, torch.Generator().manual_seed(0))
    qw = torch.tensor((q + 0.5) * [64 / 64, 64 / 48], dtype=torch.float32)
    traced = add_tracer(src.expand(3, -1, -1, -1), qw, pred.tracer_sigma)
    d = torch.zeros(3, 64)
    d[:, ~mask.flatten()] = pred.traced_kl(src, traced, tgt, mask, cached=False)   # one full pass per source
    for i in range(3):
        assert np.abs(res.maps[i][0] - d[i].view(8, 8).numpy()).max() < 1e-5
    pos, _ = refine_peak(d.view(3, 8, 8))
    expected = (pos.numpy() * 8) * [64 / 64, 48 / 64] - 0.5
    # the random model's KL values are ~1e-5, so the cached path's float noise (1e-6) moves the centroid a little
    assert np.abs(res.points - expected).max() < 0.5, (res.points, expected)
    assert np.linalg.norm(res.points - q, axis=1).min() > 5   # the peaks are not at the queries


def test_predict_rgb_and_token_counts():
    pred = tiny_predictor()
    rgb = pred.predict_rgb(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), reveal_mask(8, 8, 0.2))
    assert rgb.shape == (1, 3, 64, 64)
    # the published 7B layout: 1024 patches, 10% revealed
    tc = count_tokens(Layout(), reveal=0.1, points=64)
    naive, cached = tc.per_point(64)
    assert naive == 2 * (5120 + 5 * 102 + 922)
    assert cached < naive / 5


def test_pointers_outside_the_search_window_are_never_computed_and_the_window_is_exact():
    pred = tiny_predictor()
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(1, 3, 64, 64, generator=g)
    target = torch.rand(1, 3, 64, 64, generator=g)
    traced = add_tracer(clean.expand(4, -1, -1, -1), torch.tensor([[20.0, 20.0], [28.5, 30.0], [36.0, 26.0],
                                                                   [30.0, 40.0]]), 2.0)
    mask = reveal_mask(8, 8, 0.2, g)
    window = torch.zeros(8, 8, dtype=torch.bool)
    window[2:6, 2:6] = True
    inside = int((window & ~mask).sum())
    pred.tokens = {"naive": 0, "cached": 0}
    fast = pred.traced_kl(clean, traced, target, mask, cached=True, window=window)
    naive = pred.traced_kl(clean, traced, target, mask, cached=False, window=window)
    assert fast.shape == naive.shape == (4, inside)
    assert (fast - naive).abs().max() < 1e-5 and naive.abs().max() > 0
    # the truncated pointer block: fewer tokens than the cached pass over every hidden patch
    pred.tokens["cached"] = 0
    pred.traced_kl(clean, traced, target, mask, cached=True, window=window)
    windowed = pred.tokens["cached"]
    pred.tokens["cached"] = 0
    pred.traced_kl(clean, traced, target, mask, cached=True)
    assert windowed == pred.tokens["cached"] - (len(traced) + 1) * (int((~mask).sum()) - inside)   # +1: clean
    # published 7B layout: a 64-patch window (+-32 px at 256) takes the exact savings past 10x
    naive_pp, cached_pp = count_tokens(Layout(), reveal=0.1, points=64, group=16, window=64).per_point(64)
    assert naive_pp / cached_pp > 10
