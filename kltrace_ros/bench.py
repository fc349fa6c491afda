"""`kltrace bench lras|tracing` and `kltrace fetch-lras`: measured speed, memory, and the published files."""
from __future__ import annotations

import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {  # name: (n_layer, n_head, n_embd, vocab_size, block_size)
    "tiny": (2, 4, 128, 2048 + 2 * 1024, 10240),
    "small": (6, 8, 512, 65536 + 2 * 1024, 10240),
    "1b": (36, 20, 1280, 111616, 22536),
    "7b": (32, 32, 4096, 67584, 10240),
}

BASE_URL = "https://storage.googleapis.com/lras_3d/lras_3d/models/checkpoints"
PUBLISHED = {
    "rgb_predictor.pt": ("rgb_predictor/rgb_predictor.pt", "LRAS 7B RGB predictor (about 14 GB in bf16)"),
    "rgb_quantizer.pt": ("rgb_quantizer/rgb_quantizer.pt", "LPQ RGB quantizer"),
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
    from kltrace_ros.lras.model import LRAS

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


def bench_tracing(points=64, device="cpu", model=None, masks=None, scales=None, repeats=2) -> dict:
    import cv2
    from skimage import data

    from kltrace_ros.lras.sequence import Layout
    from kltrace_ros.tracing.engine import Engine, TraceConfig
    from kltrace_ros.tracing.lras_predictor import count_tokens
    from kltrace_ros.tracing.predictor import load_predictor

    pred = load_predictor(model, torch.device(device))
    img = cv2.resize(data.astronaut(), (320, 240), interpolation=cv2.INTER_AREA)
    f2 = cv2.warpAffine(img, np.float32([[1, 0, 3.5], [0, 1, -2.0]]), (320, 240), borderMode=cv2.BORDER_REFLECT)
    q = np.random.default_rng(0).uniform([20, 20], [300, 220], (points, 2))
    eng = Engine(pred, TraceConfig(masks=masks, scales=scales))
    eng.track(img, f2, q[:4])
    t0 = time.perf_counter()
    for _ in range(repeats):
        res = eng.track(img, f2, q)
    dt = (time.perf_counter() - t0) / repeats
    err = np.linalg.norm(res.points - (q + [3.5, -2.0]), axis=1)
    tc = count_tokens(Layout(), reveal=0.1, points=points, group=16)
    naive, cached = tc.per_point(points)
    return {"model": pred.name, "device": device, "machine": machine(), "points": points,
            "points_per_s": points / dt, "seconds_per_pair": dt, "median_error_px": float(np.median(err)),
            "lras7b_tokens_per_point_naive": naive, "lras7b_tokens_per_point_cached": cached,
            "lras7b_token_reduction": naive / cached}


def fetch_lras(dest: Path) -> int:
    """Print what to download and where from; verify files already placed in ``dest``."""
    from kltrace_ros.lras.checkpoint import CheckpointError, load_checkpoint
    from kltrace_ros.lras.lpq import LPQ, _arch_from_state
    from kltrace_ros.lras.model import LRAS

    dest = Path(dest)
    print("kltrace never downloads at run time. Download these files yourself (research use; the")
    print("checkpoints carry no stated licence) and place them in", dest)
    for name, (rel, what) in PUBLISHED.items():
        print(f"  {what}:\n    {BASE_URL}/{rel}\n    -> {dest / name}")
    status = 0
    for name in PUBLISHED:
        path = dest / name
        if not path.exists():
            print(f"[missing] {path}")
            status = 1
            continue
        try:
            cfg, state = load_checkpoint(path)
            gb = path.stat().st_size / 2**30
            if "quantizer" in name:
                arch = _arch_from_state(state)
                with torch.device("meta"):
                    LPQ(arch, cfg)
                print(f"[ok] {path}: {gb:.2f} GB, LPQ with {arch['bits']}-bit codes, {len(state)} tensors")
            else:
                with torch.device("meta"):
                    model = LRAS(cfg)
                expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
                bad = [k for k in expected if k not in state or tuple(state[k].shape) != expected[k]]
                if bad or len(state) != len(expected):
                    raise CheckpointError(f"{path}: {len(bad)} keys missing or mis-shaped (first: {bad[:3]})")
                print(f"[ok] {path}: {gb:.2f} GB, {cfg['n_layer']} layers x {cfg['n_embd']}, {cfg['n_head']} heads, "
                      f"vocab {cfg['vocab_size']}, block {cfg['block_size']}")
        except (CheckpointError, ValueError) as err:
            print(f"[bad] {err}")
            status = 1
    if status == 0:
        print(f"use: kltrace track-pair A.png B.png q.json out.json --model {dest / 'rgb_predictor.pt'} "
              f"--quantizer {dest / 'rgb_quantizer.pt'} --device cuda")
    return status
