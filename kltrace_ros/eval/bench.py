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
from kltrace_ros.models.lras.predictor import count_tokens
from kltrace_ros.tracing.engine import default_scales
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
