"""KL-tracing on an LRAS-backed predictor (tiny random LRAS + LPQ in the published layout): the cached path is exact
on every route the engine takes, bf16 keeps the peaks, memory is bounded and out-of-memory is retried."""
import numpy as np
import pytest
import torch

from kltrace_ros.eval.bench import random_lras
from kltrace_ros.models.lras.layout import Layout
from kltrace_ros.models.lras.network import LRAS
from kltrace_ros.models.lras.predictor import LRASPredictor
from kltrace_ros.models.lras.tokenizer import LPQ
from kltrace_ros.tracing.engine import Engine, TraceConfig
from kltrace_ros.tracing.ops import add_tracer, centre_block, kl_map, reveal_mask


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


Q = torch.tensor([[10.0, 12.0], [40.5, 30.0], [33.0, 50.0], [5.0, 60.0], [60.0, 3.0]])


def route(name: str, gen):
    """Sources, traced sources and targets (5 points, 64x64 windows) as the engine passes them on each route."""
    a, b, t1, t2 = (torch.rand(1, 3, 64, 64, generator=gen) for _ in range(4))
    n = len(Q)
    if name == "shared":        # whole-frame scale: one source window and one target window for every point
        src, tgt = a.expand(n, -1, -1, -1), t1.expand(n, -1, -1, -1)
    elif name == "zoom":        # zoom scales: a source and a target window per point
        src, tgt = torch.rand(n, 3, 64, 64, generator=gen), torch.rand(n, 3, 64, 64, generator=gen)
    elif name == "anchors":     # anchored tracking: each query's own first image (copies, not views), one target
        src, tgt = torch.cat([a, b, a, b, b]), t1.expand(n, -1, -1, -1)
    else:                       # the backward check of anchored tracking: one source, each point's anchor as target
        src, tgt = a.expand(n, -1, -1, -1), torch.cat([t1, t2, t1, t1, t2])
    return src, add_tracer(src, Q, 2.0), tgt


@pytest.mark.parametrize("name", ["shared", "zoom", "anchors", "backward"])
def test_cached_maps_equal_full_passes_on_every_route(name):
    gen = torch.Generator().manual_seed(0)
    pred = tiny_predictor()
    pred.group = 2        # several groups per source, each its own touched-last order and prefix
    src, traced, tgt = route(name, gen)
    masks = torch.stack([reveal_mask(8, 8, 0.2, gen, keep_hidden=centre_block(8, 1)) for _ in range(3)])
    fast = pred.kl_maps(src, traced, tgt, masks)
    run, naive = pred.tokens["run"], pred.tokens["naive"]
    slow = pred.kl_maps(src, traced, tgt, masks, cached=False)
    assert fast.shape == (5, 3, 64)
    assert slow.abs().max() > 1e-4 and (fast - slow).abs().max() < 1e-5
    for k, m in enumerate(masks):
        assert (fast[:, k, m.flatten()] == 0).all() and (fast[:, k, ~m.flatten()] > 0).all()
    assert run < naive   # fewer tokens than a full clean and traced pass per point and mask


def test_the_full_passes_are_the_kl_of_the_model_logits_in_that_order():
    """The reference itself: for a group whose tracer touches nothing, the order is the published one, and the map
    is the KL of ``log_probs`` (full passes, clean and traced) under the same mask."""
    gen = torch.Generator().manual_seed(3)
    pred = tiny_predictor()
    src, traced, tgt = route("zoom", gen)
    mask = reveal_mask(8, 8, 0.2, gen)
    maps = pred.kl_maps(src, traced, tgt, mask[None])[:, 0, ~mask.flatten()]
    untouched = pred.kl_maps(src, src, tgt, mask[None])
    assert untouched.abs().max() == 0          # no tracer, no difference
    same = LRASPredictor.kl_maps(pred, src[:1], src[:1].clone(), tgt[:1], mask[None], cached=False)
    assert same.abs().max() == 0
    # one tracer that touches every patch: nothing is shared and the order is the published permutation
    flat = src[:1] * 0 + 0.5
    bright = flat * 0 + 1.0
    ref = kl_map(pred.log_probs(flat, tgt[:1], mask), pred.log_probs(bright, tgt[:1], mask))
    got = pred.kl_maps(flat, bright, tgt[:1], mask[None])[:, 0, ~mask.flatten()]
    assert (ref - got).abs().max() < 1e-5 and ref.abs().max() > 1e-4
    assert maps.shape == (5, int((~mask).sum()))


def test_pointers_outside_the_search_window_are_never_computed_and_the_window_is_exact():
    gen = torch.Generator().manual_seed(1)
    pred = tiny_predictor()
    src, traced, tgt = route("zoom", gen)
    mask = reveal_mask(8, 8, 0.2, gen)[None]
    window = torch.zeros(8, 8, dtype=torch.bool)
    window[2:6, 2:6] = True
    fast = pred.kl_maps(src, traced, tgt, mask, window=window)
    windowed = pred.tokens["run"]
    naive = pred.kl_maps(src, traced, tgt, mask, cached=False, window=window)
    assert (fast - naive).abs().max() < 1e-5 and naive.abs().max() > 0
    assert (fast[:, :, ~window.flatten()] == 0).all()
    pred.tokens["run"] = 0
    pred.kl_maps(src, traced, tgt, mask)
    inside = int((window & ~mask[0]).sum())
    # per point: a clean and a traced row, each without the pointers outside the window
    assert windowed == pred.tokens["run"] - 2 * len(Q) * (int((~mask).sum()) - inside)


def test_equal_windows_of_one_anchor_image_run_once():
    gen = torch.Generator().manual_seed(2)
    pred = tiny_predictor()
    a, t = torch.rand(1, 3, 64, 64, generator=gen), torch.rand(1, 3, 64, 64, generator=gen)
    masks = reveal_mask(8, 8, 0.2, gen)[None]
    traced = add_tracer(a.expand(5, -1, -1, -1), Q, 2.0)
    shared = pred.kl_maps(a.expand(5, -1, -1, -1), traced, t.expand(5, -1, -1, -1), masks)
    tokens = pred.tokens["run"]
    pred.tokens["run"] = 0
    copies = pred.kl_maps(a.repeat(5, 1, 1, 1), traced, t.repeat(5, 1, 1, 1), masks)
    assert pred.tokens["run"] == tokens and torch.equal(shared, copies)


def test_engine_with_lras_at_default_settings_on_every_route():
    """Anchored tracking's call (a source image per query) with the backward check on, the default: it used to
    raise ``targets must be one shared frame or one per source``. The same image twice gives the one-image answer."""
    pred = tiny_predictor()
    rng = np.random.default_rng(0)
    f1 = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    f2 = np.roll(f1, 2, axis=1)
    q = np.array([[10.0, 10.0], [30.0, 20.0], [50.0, 40.0]])
    eng = Engine(pred, TraceConfig(first_crop=64))
    one = eng.track(f1, f2, q)
    two = eng.track([f1, f1], f2, q, source=[0, 1, 0])
    assert one.fb_error is not None and np.isfinite(one.points).all()
    assert np.abs(one.points - two.points).max() < 1e-4
    other = eng.track([f1, f2], f2, q, source=[0, 1, 0], prior=q + [2, 0], retry_from=q)
    assert other.points.shape == (3, 2) and np.isfinite(other.points).all()


def test_engine_reports_the_peak_of_the_lras_kl_map():
    """Whole-frame tracing on a tiny random LRAS: the engine's map is the predictor's map of the frames, and each
    reported point is that map's refined peak."""
    import torch.nn.functional as F

    from kltrace_ros.tracing.ops import refine_peak

    pred = tiny_predictor()
    f1 = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    f2 = np.roll(f1, 2, axis=1)
    q = np.array([[10.0, 10.0], [30.0, 20.0], [50.0, 40.0]])
    res = Engine(pred, TraceConfig(masks=1, scales=1, first_crop=64, keep_maps=True, fb_threshold=0)).track(f1, f2, q)
    prep = lambda f: F.interpolate(torch.from_numpy(f).float().permute(2, 0, 1)[None] / 255, size=(64, 64),  # noqa: E731
                                   mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    src, tgt = prep(f1), prep(f2)
    mask = reveal_mask(8, 8, pred.reveal, torch.Generator().manual_seed(0))
    qw = torch.tensor((q + 0.5) * [64 / 64, 64 / 48], dtype=torch.float32)
    traced = add_tracer(src.expand(3, -1, -1, -1), qw, pred.tracer_sigma)
    d = pred.kl_maps(src.expand(3, -1, -1, -1), traced, tgt.expand(3, -1, -1, -1), mask[None], cached=False)[:, 0]
    for i in range(3):   # (the random model's KL values are ~1e-5)
        assert np.abs(res.maps[i][0] - d[i].view(8, 8).numpy()).max() < 1e-6
    pos, _ = refine_peak(d.view(3, 8, 8))
    expected = (pos.numpy() * 8) * [64 / 64, 48 / 64] - 0.5
    # the 3x3 centroid of near-equal values moves with float noise of the cached path; the peak patch does not
    assert np.abs(res.points - expected).max() < 0.5, (res.points, expected)
    assert np.linalg.norm(res.points - q, axis=1).min() > 5   # the peaks are not at the queries


def test_bf16_weights_keep_the_peaks_of_fp32():
    """bf16 weights under autocast (as the published model runs) against the same weights in fp32, on a random model
    whose tracer signal (KL peaks about 0.1) stands above bf16's resolution: the residual stream, the head and the KL
    stay fp32, so the maps agree within 10% of their maximum and every peak is the same patch. (A random model with
    KL near 1e-4 is below what bf16 matmuls resolve: no precision after the matmuls can bring that back.)"""
    gen = torch.Generator().manual_seed(0)
    full = random_lras("tiny", image_size=128, bits=8, std=0.45)
    half = random_lras("tiny", image_size=128, bits=8, std=0.45)
    half.lras.to(torch.bfloat16)
    src = torch.rand(1, 3, 128, 128, generator=gen).expand(6, -1, -1, -1)
    tgt = torch.rand(1, 3, 128, 128, generator=gen).expand(6, -1, -1, -1)
    q = torch.rand(6, 2, generator=gen) * 96 + 16
    traced = add_tracer(src, q, 2.0)
    masks = torch.stack([reveal_mask(16, 16, 0.1, gen) for _ in range(2)])
    a = full.kl_maps(src, traced, tgt, masks).mean(1)
    b = half.kl_maps(src, traced, tgt, masks).mean(1)
    assert b.dtype == torch.float32 and a.amax(1).min() > 0.01
    assert ((a - b).abs().amax(1) / a.amax(1)).max() < 0.1
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_the_head_runs_in_fp32_with_bf16_weights():
    """Logits of a bf16 model are the fp32 product of its (bf16-valued) head weights: not rounded to bf16 (a bf16
    logit near 10 is off by up to 0.03, more than a tracer's effect on a code's logit)."""
    lras = random_lras("tiny", image_size=64, bits=6, std=0.5).lras.to(torch.bfloat16)
    tok = torch.randint(0, 64, (2, 40))
    pos = torch.arange(40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = lras(tok, pos, logits_for=slice(30, None), head=False)
        logits = lras(tok, pos, logits_for=slice(30, None))
    assert hidden.dtype == logits.dtype == torch.float32
    exact = hidden.double() @ lras.lm_head.weight.double().T
    assert (logits.double() - exact).abs().max() < 1e-4 * exact.abs().max()


def test_out_of_memory_halves_the_batch_and_then_names_the_fix(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    pred = tiny_predictor()
    src, traced, tgt = route("shared", gen)
    masks = reveal_mask(8, 8, 0.2, gen)[None]
    ref = pred.kl_maps(src, traced, tgt, masks)
    extend = pred.lras.extend
    calls = []

    def small_device(cache, tokens, *a, **k):
        calls.append(tokens.shape[0])
        if tokens.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return extend(cache, tokens, *a, **k)

    monkeypatch.setattr(pred.lras, "extend", small_device)
    pred.extend_batch = 8
    with pytest.warns(UserWarning, match="out of memory"):
        got = pred.kl_maps(src, traced, tgt, masks)
    assert (got - ref).abs().max() < 1e-6 and calls[:2] == [6, 3] and max(calls[2:]) <= 2 and pred.extend_batch <= 2

    def no_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(pred.lras, "extend", no_memory)
    pred.extend_batch = 4
    with pytest.raises(MemoryError, match="one sequence per model call"), pytest.warns(UserWarning):
        pred.kl_maps(src, traced, tgt, masks)


def test_memory_plan_counts_activations_and_sizes_the_batch(tmp_path, monkeypatch):
    """At the 7B layout the fp32 logits of one row's pointer block alone are 249 MB: the plan counts them, the batch
    follows the free memory, and a device without room for one row is refused at load with the numbers."""
    with torch.device("meta"):
        lras = LRAS({"n_layer": 32, "n_head": 32, "n_embd": 4096, "vocab_size": 67584, "block_size": 10240})
    lras.to(torch.bfloat16)
    lpq = LPQ(LPQ.default_arch(channels=16, bits=16, widths=(16, 8, 4), blocks=1))
    pred = LRASPredictor(lras, lpq)
    plan = pred.memory_plan()
    assert plan["per_row"] > 922 * 67584 * 4 and plan["one_row"] > plan["per_row"] + 67584 * 4096 * 4
    monkeypatch.setattr(LRASPredictor, "_free_bytes", lambda self: 40 * 2**30)
    big = pred._batch(6552, 922, 5000)
    monkeypatch.setattr(LRASPredictor, "_free_bytes", lambda self: 12 * 2**30)
    assert 1 <= pred._batch(6552, 922, 5000) < big <= 64
    small = tiny_predictor()
    small.lras.save_checkpoint(tmp_path / "rgb_predictor.pt")
    small.lpq.save_checkpoint(tmp_path / "rgb_quantizer.pt")
    monkeypatch.setattr(LRASPredictor, "_free_bytes", lambda self: 2**20)
    with pytest.raises(MemoryError, match="GiB are free"):
        LRASPredictor.from_checkpoints(tmp_path / "rgb_predictor.pt", tmp_path / "rgb_quantizer.pt")


def test_device_setting_is_checked():
    from kltrace_ros.models.registry import resolve_device

    said = []
    assert resolve_device("auto", explain=lambda why, fallback: said.append(why)).type in ("cpu", "cuda")
    assert said and "device auto" in said[0]
    assert resolve_device("cpu").type == "cpu"
    for bad in ("gpu", "cuda:x", "cpu:0", "tpu"):
        with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="not available"):
            assert resolve_device("cuda:0").type == "cpu"


def test_predict_rgb():
    pred = tiny_predictor()
    rgb = pred.predict_rgb(torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64), reveal_mask(8, 8, 0.2))
    assert rgb.shape == (2, 3, 64, 64)
