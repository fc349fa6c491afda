"""`kltrace bench lras|tracing`: measured speed and memory (the machine is part of every result)."""
from __future__ import annotations

import platform
import resource
import time

import cv2
import numpy as np
import torch

from kltrace_ros.io.images import skimage_photo
from kltrace_ros.models.lras.layout import Layout
from kltrace_ros.models.lras.network import LRAS
from kltrace_ros.models.lras.predictor import LRASPredictor, count_tokens
from kltrace_ros.models.lras.tokenizer import LPQ
from kltrace_ros.tracing.engine import default_scales
from kltrace_ros.tracing.ops import add_tracer, reveal_mask
from kltrace_ros.tracking.builder import Options, load_engine

from .baselines import BASELINES

SIZES = {  # name: (n_layer, n_head, n_embd, vocab_size, block_size)
    "tiny": (2, 4, 128, 2048 + 2 * 1024, 10240),
    "small": (6, 8, 512, 65536 + 2 * 1024, 10240),
    "1b": (36, 20, 1280, 111616, 22536),
    "7b": (32, 32, 4096, 67584, 10240),
}


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def _peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_lras(size="tiny", prefix=1024, suffix=256, batch=8, device="cpu", repeats=3) -> dict:
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_layer, n_head, n_embd, vocab, block = SIZES[size]
    cfg = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "vocab_size": vocab, "block_size": block}
    with torch.device(device):
        model = LRAS(cfg).to(dtype).eval()
    tok = torch.randint(0, vocab, (1, prefix + suffix), device=device)
    pos = torch.randperm(block, device=device)[: prefix + suffix]
    sfx = torch.randint(0, vocab, (batch, suffix), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        cache = model.prefill(tok[:, :prefix], pos[:prefix])
        model.extend(cache, sfx, pos[prefix:], logits_for=slice(-1, None))
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            cache = model.prefill(tok[:, :prefix], pos[:prefix])
        sync()
        t_pre = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            model.extend(cache, sfx, pos[prefix:], logits_for=slice(-suffix // 4, None))
        sync()
        t_ext = (time.perf_counter() - t0) / repeats
    return {"size": size, "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "machine": machine(),
            "prefill_tokens_per_s": prefix / t_pre, "extend_tokens_per_s": batch * suffix / t_ext,
            "peak_memory_MB": _peak_mb(device)}


def bench_lras_tracing(size="tiny", points=16, device="cpu", window: int | None = None, group: int = 16) -> dict:
    """Traced points/s of the LRAS path on the published layout (256x256 frame, 1024 patches, 10% revealed) with
    a random model of ``size`` (bf16 on CUDA) and a random full-size LPQ: one scale, one mask, ``points``
    tracers in groups of ``group`` (shared prefix), the pointer block cut to a ``window`` x ``window`` patch
    search window around the first point when given. Tokens are counted as they run."""
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_layer, n_head, n_embd, vocab, block = SIZES[size]
    n_codes = vocab - 2 * 1024
    bits = int(np.log2(n_codes))
    with torch.device(device):
        lpq = LPQ(LPQ.default_arch(bits=bits) if size != "tiny" else
                  LPQ.default_arch(channels=16, bits=bits, widths=(16, 8, 4), blocks=1)).eval()
        lras = LRAS({"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "vocab_size": vocab,
                     "block_size": block}).to(dtype).eval()
    pred = LRASPredictor(lras, lpq, device, image_size=256, reveal=0.1, group=group)
    g = torch.Generator().manual_seed(0)
    clean, target = torch.rand(1, 3, 256, 256, generator=g), torch.rand(1, 3, 256, 256, generator=g)
    q = torch.rand(points, 2, generator=g) * 192 + 32
    traced = add_tracer(clean.expand(points, -1, -1, -1), q, pred.tracer_sigma)
    mask = reveal_mask(32, 32, pred.reveal, g)
    win = None
    if window:
        c = (q[0] / 8).long().clamp(window // 2, 32 - window // 2)
        win = torch.zeros(32, 32, dtype=torch.bool)
        win[c[1] - window // 2:c[1] - window // 2 + window, c[0] - window // 2:c[0] - window // 2 + window] = True
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pred.traced_kl(clean, traced[:2], target, mask, window=win)   # warm-up
    pred.tokens = {"naive": 0, "cached": 0}
    sync()
    t0 = time.perf_counter()
    pred.traced_kl(clean, traced, target, mask, window=win)
    sync()
    dt = time.perf_counter() - t0
    naive = count_tokens(pred.layout, pred.reveal, points).naive
    return {"size": size, "params_M": sum(p.numel() for p in lras.parameters()) / 1e6, "device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "machine": machine(), "points": points, "window": window,
            "seconds": dt, "points_per_s": points / dt, "tokens_per_point": pred.tokens["cached"] / points,
            "token_reduction_vs_naive": naive / max(pred.tokens["cached"], 1), "peak_memory_MB": _peak_mb(device)}


def bench_tracing(points=64, device="cpu", model=None, masks=None, scales=None, repeats=5) -> dict:
    """Pairs/s and points/s of KL-tracing at default settings, end to end (uint8 frames in, points out), and of
    OpenCV LK and DIS on the same 320x240 frames and points, so the ratios come from one run. Times are the
    median of ``repeats`` runs (LK and DIS: of 20 x repeats), after a warm-up run."""
    eng = load_engine(Options(model=model, device=device, masks=masks, scales=scales))
    img = cv2.resize(skimage_photo("astronaut.png"), (320, 240), interpolation=cv2.INTER_AREA)
    shift = np.array([3.5, -2.0])
    f2 = cv2.warpAffine(img, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (320, 240),
                        borderMode=cv2.BORDER_REFLECT)
    q = np.random.default_rng(0).uniform([20, 20], [300, 220], (points, 2))
    methods = {"kl": lambda: eng.track(img, f2, q).points, "lk": lambda: BASELINES["lk"](img, f2, q)[0],
               "dis": lambda: BASELINES["dis"](img, f2, q)[0]}
    out = {"model": eng.p.name, "device": device, "machine": machine(), "frame": "320x240", "points": points,
           "settings": {"masks": eng.cfg.masks or eng.p.masks, "scales": eng.cfg.scales or default_scales(eng.p),
                        "fb_check": eng.cfg.fb_threshold > 0}}
    for name, run in methods.items():
        run()   # warm-up
        times = []
        for _ in range(repeats if name == "kl" else 20 * repeats):
            t0 = time.perf_counter()
            pts = run()
            times.append(time.perf_counter() - t0)
        dt = float(np.median(times))
        out[name] = {"seconds_per_pair": dt, "pairs_per_s": 1 / dt, "points_per_s": points / dt,
                     "median_error_px": float(np.median(np.linalg.norm(pts - (q + shift), axis=1)))}
    out["kl_slower_than"] = {b: out["kl"]["seconds_per_pair"] / out[b]["seconds_per_pair"] for b in ("lk", "dis")}
    tc = count_tokens(Layout(), reveal=0.1, points=points, group=16)
    naive, cached = tc.per_point(points)
    out.update({"lras7b_tokens_per_point_naive": naive, "lras7b_tokens_per_point_cached": cached,
                "lras7b_token_reduction": naive / cached})
    return out
