"""One short GPU check (run on a lent CUDA machine; never part of the tests).

    python tools/device_check.py > device_check.json

Checks the CUDA/bf16 path (LRAS in bf16 with autocast, LPQ in fp32; cached KL maps equal
naive ones within bf16 tolerance) and measures: transformer tokens/s and peak memory at 1B and
7B sizes (random weights), and tracing points/s of the embedded model on CUDA.
"""
import json
import sys

import torch

from kltrace_ros.eval.bench import bench_lras, bench_tracing

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
print(json.dumps(out, indent=1))
