"""One short GPU check (run on a lent CUDA machine; never part of the tests).

    python tools/device_check.py > device_check.json

Checks the CUDA/bf16 path (LRAS in bf16 with autocast, LPQ in fp32; cached KL maps equal
naive ones within bf16 tolerance) and measures: transformer tokens/s and peak memory at 1B and
7B sizes (random weights), traced points/s and tokens per point of the LRAS path at the 7B layout and width
(whole pointer block, and cut to an 8x8-patch search window), tracing points/s of the embedded model on CUDA, and SVD / Cosmos-Predict2
at their real sizes with random weights (points/s, peak memory; bf16).
"""
import json
import sys

import torch

from kltrace_ros.eval.bench import bench_lras, bench_lras_tracing, bench_tracing

if not torch.cuda.is_available():
    sys.exit("no CUDA device")
out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
sys.path.insert(0, "test")
from test_lras_tracing import tiny_predictor  # noqa: E402

from kltrace_ros.tracing.ops import add_tracer, reveal_mask  # noqa: E402

pred = tiny_predictor()
pred.lras.to("cuda", torch.bfloat16)
pred.lpq.to("cuda")
pred.device = torch.device("cuda")
clean, target = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
traced = add_tracer(clean.expand(4, -1, -1, -1), torch.tensor([[10.0, 12.0], [40.0, 30.0], [33.0, 50.0], [5.0, 60.0]]), 2.0)
mask = reveal_mask(8, 8, 0.2)
a = pred.traced_kl(clean, traced, target, mask, cached=True)
b = pred.traced_kl(clean, traced, target, mask, cached=False)
out["bf16_cached_vs_naive_kl_maxdiff"] = float((a - b).abs().max())
for size, prefix in (("1b", 4096), ("7b", 5632)):
    torch.cuda.reset_peak_memory_stats()
    out[f"lras_{size}"] = bench_lras(size, prefix=prefix, suffix=1500, batch=8, device="cuda")
out["tracing_cuda"] = bench_tracing(64, "cuda")
# the LRAS tracing path at the 7B layout and width (random weights, bf16): traced points/s, tokens per point
for window in (None, 8):
    try:
        out[f"lras_7b_tracing_window_{window}"] = bench_lras_tracing("7b", 64, "cuda", window=window)
    except Exception as err:  # noqa: BLE001 - report and go on
        out[f"lras_7b_tracing_window_{window}"] = f"failed: {type(err).__name__}: {err}"

# SVD and Cosmos-Predict2 at their real sizes with random weights (no checkpoint needed): saved as diffusers
# folders and loaded through the same loader users go through, then one pair of 8 points traced in bf16.
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from test_diffusion import save_cosmos, save_svd  # noqa: E402
from kltrace_ros.tracking.builder import Options, load_engine  # noqa: E402

for family, save, real in (("svd", save_svd, True), ("cosmos", save_cosmos, True)):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            t0 = time.perf_counter()
            save(Path(tmp), real=real)
            built = time.perf_counter() - t0
            torch.cuda.reset_peak_memory_stats()
            engine = load_engine(Options(model=f"{family}:{tmp}?size=512&steps=20&samples=2", device="cuda",
                                         fb_threshold=0.0))
            rng = np.random.default_rng(0)
            f1 = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
            f2 = np.roll(f1, 8, axis=1)
            q = rng.uniform(50, 450, (8, 2))
            engine.track(f1, f2, q[:1])                               # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            engine.track(f1, f2, q)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            out[f"{family}_real_size"] = {"build_s": round(built, 1), "pair_8_points_s": round(dt, 2),
                                          "points_per_s": round(8 / dt, 3),
                                          "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
        except Exception as err:  # noqa: BLE001 - report and go on: the other measurements still count
            out[f"{family}_real_size"] = f"failed: {type(err).__name__}: {err}"
print(json.dumps(out, indent=1))
