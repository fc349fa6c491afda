"""One short GPU check, run on a lent CUDA machine (never part of the tests); well under 8 minutes on one H100.

    python tools/device_check.py $OUT/device_check.json

Each step runs guarded and the JSON file is rewritten after every step (a failing step or a killed run keeps what
came before). Verdicts, printed as PASS/FAIL lines and stored under "verdicts":
- "cached equals naive": the LRAS kl_maps of the cached path equal full forward passes (fp32 on CUDA, every route
  the engine takes: shared windows, a window per point, a source per query, a target per point);
- "bf16 peaks equal fp32 peaks": the same random LRAS in bf16 under autocast and in fp32 has the same KL peaks.
Measured: the engine end to end with LRAS at the 7B layout and width (random weights, bf16) at default settings,
tokens per traced point against the naive procedure, seconds per pair and peak memory; the embedded model on CUDA
(pairs/s beside LK and DIS); transformer tokens/s at 1B and 7B. SVD and Cosmos at their real sizes are in
tools/device_check_diffusion.py (building them takes minutes of the device budget).
"""
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "device_check.json")
result: dict = {"verdicts": {}}


def save() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1, default=str))


def step(name: str, fn) -> None:
    t0 = time.perf_counter()
    try:
        result[name] = fn()
    except Exception as err:  # noqa: BLE001 - record and go on: the other steps still count
        result[name] = {"failed": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
    result.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
    save()
    print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)


def verdict(name: str, ok: bool, detail) -> dict:
    result["verdicts"][name] = "PASS" if ok else "FAIL"
    print(f"{'PASS' if ok else 'FAIL'}: {name} ({detail})", flush=True)
    return {"pass": ok, "detail": detail}


def environment():
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    return {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "memory_GiB": torch.cuda.get_device_properties(0).total_memory / 2**30}


def cached_equals_naive():
    from test_lras_tracing import route, tiny_predictor

    from kltrace_ros.tracing.ops import centre_block, reveal_mask

    pred = tiny_predictor()
    pred.lras.to("cuda")
    pred.lpq.to("cuda")
    pred.device = torch.device("cuda")
    worst = {}
    for name in ("shared", "zoom", "anchors", "backward"):
        gen = torch.Generator().manual_seed(0)
        src, traced, tgt = route(name, gen)
        masks = torch.stack([reveal_mask(8, 8, 0.2, gen, keep_hidden=centre_block(8, 1)) for _ in range(2)])
        fast, slow = pred.kl_maps(src, traced, tgt, masks), pred.kl_maps(src, traced, tgt, masks, cached=False)
        worst[name] = {"max_abs_diff": float((fast - slow).abs().max()), "max": float(slow.abs().max())}
    # the tests' criterion (fp32): 1e-5 absolute
    return verdict("cached equals naive", max(w["max_abs_diff"] for w in worst.values()) < 1e-5, worst)


def bf16_peaks():
    from kltrace_ros.eval.bench import random_lras
    from kltrace_ros.tracing.ops import add_tracer, reveal_mask

    gen = torch.Generator().manual_seed(0)
    full = random_lras("tiny", "cuda", image_size=128, bits=8, std=0.45)
    full.lras.float()
    half = random_lras("tiny", "cuda", image_size=128, bits=8, std=0.45)
    src = torch.rand(1, 3, 128, 128, generator=gen).expand(16, -1, -1, -1)
    tgt = torch.rand(1, 3, 128, 128, generator=gen).expand(16, -1, -1, -1)
    traced = add_tracer(src, torch.rand(16, 2, generator=gen) * 96 + 16, 2.0)
    masks = torch.stack([reveal_mask(16, 16, 0.1, gen) for _ in range(2)])
    a, b = full.kl_maps(src, traced, tgt, masks).mean(1), half.kl_maps(src, traced, tgt, masks).mean(1)
    same = int((a.argmax(1) == b.argmax(1)).sum())
    rel = float(((a - b).abs().amax(1) / a.amax(1)).max())
    return verdict("bf16 peaks equal fp32 peaks", same == 16, {"same peaks": f"{same}/16", "max diff / max": rel,
                                                                 "dtype": str(half.lras.lm_head.weight.dtype)})


def lras_7b_engine():
    from kltrace_ros.eval.bench import bench_lras_tracing

    return bench_lras_tracing("7b", 16, "cuda")


def embedded_cuda():
    from kltrace_ros.eval.bench import bench_tracing

    return bench_tracing(64, "cuda")


def transformer_speed():
    from kltrace_ros.eval.bench import bench_lras

    return {size: bench_lras(size, prefix=prefix, suffix=1500, batch=8, device="cuda")
            for size, prefix in (("1b", 4096), ("7b", 5632))}


if __name__ == "__main__":
    for name, fn in (("environment", environment), ("cached_equals_naive", cached_equals_naive),
                     ("bf16_peaks", bf16_peaks), ("lras_7b_engine_default_settings", lras_7b_engine),
                     ("embedded_model_cuda", embedded_cuda), ("transformer_tokens_per_s", transformer_speed)):
        step(name, fn)
        if name == "environment" and "failed" in result[name]:
            break
    print(json.dumps(result["verdicts"]))
