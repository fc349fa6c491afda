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
from kltrace_ros.models.lras.predictor import LRASPredictor
from kltrace_ros.models.lras.tokenizer import LPQ
from kltrace_ros.tracing.engine import Engine, TraceConfig, default_scales
from kltrace_ros.tracking.builder import Options, load_engine

from .baselines import BASELINES

SIZES = {  # name: (n_layer, n_head, n_embd, vocab_size, block_size)
    "tiny": (2, 2, 64, 65536 + 2 * 1024, 10240),   # the 7B vocabulary and layout at 2 layers x 64
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


def random_lras(size: str = "tiny", device="cpu", image_size: int = 256, seed: int = 0, std: float | None = None,
                bits: int | None = None) -> LRASPredictor:
    """An LRAS predictor in the published layout (5-token patches of 2x2 codes, 8-px patches, pointer and position
    ranges from the vocabulary) with random weights of ``size`` (bf16 on CUDA, as the published model runs): the
    real sizes for ``1b``/``7b`` with a full LPQ, a 2-layer 64-wide transformer with the 7B vocabulary and a narrow
    LPQ for ``tiny``. ``bits``: a smaller code vocabulary (tests). ``std``: weights drawn N(0, std) (a random init
    whose tracer signal stands out of float noise)."""
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n_layer, n_head, n_embd, vocab, block = SIZES[size]
    grid = image_size // 8
    if bits is None:
        bits = int(np.log2(vocab - 2 * grid * grid))
    else:
        vocab = 2 ** bits + 2 * grid * grid
    gen = torch.manual_seed(seed)
    with torch.device(device):
        lpq = LPQ(LPQ.default_arch(bits=bits) if size in ("1b", "7b") else
                  LPQ.default_arch(channels=16, bits=bits, widths=(16, 8, 4), blocks=1)).eval()
        lay = Layout(n_codes=2 ** bits, grid=grid, patch=2)
        lras = LRAS({"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "vocab_size": vocab,
                     "block_size": max(block, 2 * lay.tokens_per_patch * lay.n_patches)}).eval()
    for prm in lpq.quantizer.project_in.parameters():   # codes that differ between nearby cells
        prm.data.copy_(torch.randn(prm.shape, generator=gen))
    if std is not None:   # drawn on the CPU: the same weights on every device
        for prm in lras.parameters():
            prm.data.copy_(torch.randn(prm.shape, generator=gen) * std)
    return LRASPredictor(lras.to(dtype), lpq, device, image_size=image_size)


def bench_lras_tracing(size="tiny", points=64, device="cpu", masks: int | None = None) -> dict:
    """Tokens per traced point and seconds per pair of the LRAS path through the engine at default settings (all
    scales, masks, the backward check), on the published layout with a random model of ``size``: one 320x240 pair
    traced from one image (``shared``) and from four anchor images (``anchored``, per-query sources as anchored
    tracking runs it). ``naive`` is what the paper's procedure (a full clean and a full traced pass per point, mask
    and scale) runs for the same maps."""
    pred = random_lras(size, device)
    # a random model's points fail the appearance test: off, as where a real model finds its points
    eng = Engine(pred, TraceConfig(masks=masks, min_appearance=0.0))
    img = cv2.resize(skimage_photo("astronaut.png"), (320, 240), interpolation=cv2.INTER_AREA)
    f2 = np.roll(img, 6, axis=1)
    anchors = [img, np.roll(img, 2, axis=0), np.roll(img, 3, axis=1), np.roll(img, -2, axis=0)]
    q = np.random.default_rng(0).uniform([20, 20], [300, 220], (points, 2))
    device = pred.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {"size": size, "params_M": sum(p.numel() for p in pred.lras.parameters()) / 1e6, "device": str(device),
           "dtype": str(pred.lras.lm_head.weight.dtype).replace("torch.", ""), "machine": machine(),
           "points": points, "settings": {"masks": eng.cfg.masks or pred.masks, "scales": default_scales(pred),
                                          "fb_check": eng.cfg.fb_threshold > 0}}
    eng.track(img, f2, q[:2])   # warm-up
    for name, run in (("shared", lambda: eng.track(img, f2, q)),
                      ("anchored", lambda: eng.track(anchors, f2, q, source=np.arange(points) % len(anchors)))):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        pred.tokens = {"naive": 0, "run": 0}
        sync()
        t0 = time.perf_counter()
        run()
        sync()
        dt = time.perf_counter() - t0
        out[name] = {"seconds_per_pair": dt, "points_per_s": points / dt,
                     "tokens_per_point": pred.tokens["run"] / points,
                     "naive_tokens_per_point": pred.tokens["naive"] / points,
                     "fewer_than_naive": pred.tokens["naive"] / max(pred.tokens["run"], 1),
                     "peak_memory_MB": _peak_mb(device)}
    return out


def bench_tracing(points=64, device="cpu", model=None, masks=None, scales=None, repeats=5,
                  frames=((320, 240), (640, 480))) -> dict:
    """Pairs/s and points/s of KL-tracing at default settings, end to end (uint8 frames in, points out), and of
    OpenCV LK and DIS on the same frames and points, so the ratios come from one run; per frame size of
    ``frames`` ((W, H), ...). Times are the median of ``repeats`` runs (LK and DIS: of 20 x repeats), after a
    warm-up run."""
    eng = load_engine(Options(model=model, device=device, masks=masks, scales=scales))
    photo = skimage_photo("astronaut.png")
    shift = np.array([3.5, -2.0])
    out = {"model": eng.p.name, "device": device, "machine": machine(), "threads": torch.get_num_threads(),
           "points": points, "settings": {"masks": eng.cfg.masks or eng.p.masks,
                                          "scales": eng.cfg.scales or default_scales(eng.p),
                                          "fb_check": eng.cfg.fb_threshold > 0}}
    for w, h in frames:
        img = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
        f2 = cv2.warpAffine(img, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (w, h),
                            borderMode=cv2.BORDER_REFLECT)
        q = np.random.default_rng(0).uniform([w / 16, h / 12], [w - w / 16, h - h / 12], (points, 2))
        methods = {"kl": lambda: eng.track(img, f2, q).points, "lk": lambda: BASELINES["lk"](img, f2, q)[0],
                   "dis": lambda: BASELINES["dis"](img, f2, q)[0]}
        res = {}
        for name, run in methods.items():
            run()   # warm-up
            times = []
            for _ in range(repeats if name == "kl" else 20 * repeats):
                t0 = time.perf_counter()
                pts = run()
                times.append(time.perf_counter() - t0)
            dt = float(np.median(times))
            res[name] = {"seconds_per_pair": dt, "pairs_per_s": 1 / dt, "points_per_s": points / dt,
                         "median_error_px": float(np.median(np.linalg.norm(pts - (q + shift), axis=1)))}
        res["kl_slower_than"] = {b: res["kl"]["seconds_per_pair"] / res[b]["seconds_per_pair"] for b in ("lk", "dis")}
        out[f"{w}x{h}"] = res
    return out
