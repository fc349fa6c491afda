"""SVD and Cosmos-Predict2 at their real sizes with random weights on a lent CUDA machine (never part of the tests):
each is saved as a diffusers folder and loaded through the loader users go through, then one pair of 8 points is
traced in bf16 at default tracking settings (the backward check on). Building a real-size model takes minutes: run
this after tools/device_check.py, when device time is left.

    python tools/device_check_diffusion.py $OUT/device_check_diffusion.json
"""
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))

from test_diffusion import save_cosmos, save_svd  # noqa: E402

from kltrace_ros.tracking.builder import Options, load_engine  # noqa: E402

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "device_check_diffusion.json")
result: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"}
for family, save in (("svd", save_svd), ("cosmos", save_cosmos)):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            t0 = time.perf_counter()
            save(Path(tmp), real=True)
            built = time.perf_counter() - t0
            torch.cuda.reset_peak_memory_stats()
            engine = load_engine(Options(model=f"{family}:{tmp}?size=512&steps=20&samples=2", device="cuda"))
            rng = np.random.default_rng(0)
            f1 = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
            f2 = np.roll(f1, 8, axis=1)
            q = rng.uniform(50, 450, (8, 2))
            engine.track(f1, f2, q[:1])                               # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            engine.track([f1, f2], f2, q, source=np.arange(8) % 2)   # anchored tracking's call
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            result[f"{family}_real_size"] = {"build_s": round(built, 1), "pair_8_points_s": round(dt, 2),
                                             "points_per_s": round(8 / dt, 3),
                                             "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
        except Exception as err:  # noqa: BLE001 - report and go on: the other family still counts
            result[f"{family}_real_size"] = {"failed": f"{type(err).__name__}: {err}",
                                             "trace": traceback.format_exc()[-2000:]}
    OUT.write_text(json.dumps(result, indent=1))
    print(family, result[f"{family}_real_size"], flush=True)
